"""Regex watches matched off the event loop (issue 11 #1): when the matching falls more than
MAX_WATCH_BACKLOG direct messages behind, the watchers' copies are dropped, and each watcher
is told by its close as slow (4008; STOMP: ERROR ``slow``), like any consumer that falls that far
behind. Found in review: the copies were counted and logged, but nobody was told.

A real Hub on the in-memory layer and a real Connection; the one matcher thread is held busy
by a job of the test (an Event it waits on), so the backlog grows deterministically.
"""

from __future__ import annotations

import asyncio
import threading

from channels.layers import InMemoryChannelLayer

from broker import errors
from broker.codecs.stomp import StompCodec, WatchPattern
from broker.connection import Connection
from broker.fanout.hub import MAX_WATCH_BACKLOG, Hub
from broker.fanout.running import fanout_settings
from broker.identity import client_room, identity_from_api
from broker.stores import Stores
from broker.subscription import Subscription


class Recorder:
    name = "test"
    remote_addr = None

    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    def write_now(self, frame: str | bytes) -> bool:
        return True

    async def writable(self) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def direct(n: int) -> dict:
    room = client_room("api", "agent", "bob")
    return {"type": "cb.direct", "id": f"m{n}", "room": room.key, "to": "/agent/bob",
            "from": "/agent/alice", "message": "{}", "data": "1", "text": None}


async def test_watchers_are_told_when_matching_falls_behind() -> None:
    hub = Hub(InMemoryChannelLayer(), Stores.memory("p1"), fanout_settings())
    await hub.start()
    transport = Recorder()
    conn = Connection(transport, StompCodec())
    conn.session.authenticating()
    conn.session.open(identity_from_api({"login_id": "carol", "profile": "super_agent",
                                         "allowed_rooms": []}))
    await hub.attach(conn)
    conn.hub = hub
    room = client_room("api", "agent", "*")
    sub = Subscription("w", '"w"', room, owner=conn, pattern=WatchPattern("/agent/bo.*"))
    await hub.subscribe(sub)
    busy, release = threading.Event(), threading.Event()

    def hold_the_matcher() -> None:
        busy.set()
        release.wait(30)

    hub._matcher.submit(hold_the_matcher)
    try:
        assert await asyncio.to_thread(busy.wait, 10)
        for n in range(MAX_WATCH_BACKLOG):
            hub.dispatch(direct(n))
        assert not conn.closing  # behind, but within the bound: nothing dropped yet
        hub.dispatch(direct(MAX_WATCH_BACKLOG))
        assert conn.closing
        for _ in range(100):
            if transport.closed is not None:
                break
            await asyncio.sleep(0.01)
        assert transport.closed == (errors.CLOSE_SLOW, errors.SLOW)
    finally:
        release.set()
        await hub.stop()
