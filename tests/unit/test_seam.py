"""The seam between a history replay and live delivery, driven deterministically in one process:
triggers are delivered live *while* the history is being read, some of them also in it.

A real Hub, MemoryCluster and Connection (with a recording transport); the channel layer is
bypassed by calling ``Hub.dispatch`` at the exact moments that make the seam hard.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from channels.layers import InMemoryChannelLayer

from broker.cluster import MemoryCluster
from broker.codecs.jsoncodec import JsonCodec
from broker.connection import Connection
from broker.history import HistoryPolicy
from broker.hub import Hub
from broker.identity import identity_from_api
from broker.session import Session, Subscribe

ROOM = {"target": "chat", "customer": "1"}
POLICY = HistoryPolicy.from_setting([{"room": {"target": "chat", "customer": "*"},
                                      "size": 100, "ttl": 60}])


class Recorder:
    name = "test"
    remote_addr = None

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.gate: asyncio.Event | None = None  # when set and cleared: writes wait (a slow socket)
        self.pending: str | bytes | None = None

    def write_now(self, frame: str | bytes) -> bool:
        if self.gate is not None and not self.gate.is_set():
            self.pending = frame
            return False
        self.frames.append(frame if isinstance(frame, str) else frame.decode())
        return True

    async def writable(self) -> None:
        assert self.gate is not None and self.pending is not None
        await self.gate.wait()
        frame, self.pending = self.pending, None
        self.frames.append(frame if isinstance(frame, str) else frame.decode())

    async def close(self, code: int, reason: str) -> None:
        pass


async def make_connection() -> tuple[Hub, Connection, Recorder]:
    layer = InMemoryChannelLayer()
    hub = Hub(layer, MemoryCluster("p1"))
    await hub.start()  # the receive loop confirms group joins (Hub._join_group)
    transport = Recorder()
    conn = Connection(transport, JsonCodec(rich=True))
    conn.identity = identity_from_api({"login_id": "bob",
                                       "allowed_rooms": [{"target": "chat", "customer": "*"}]})
    conn.session = Session(conn.identity, max_subscriptions=10, public_status=False,
                           history=POLICY)
    await hub.attach(conn)
    conn.hub = hub
    return hub, conn, transport


async def record(hub: Hub, data: int) -> dict:
    """What Router.publish does for a recorded trigger: append, then the routed message."""
    from rooms import parse_room

    room = parse_room(ROOM)
    trigger_id = uuid.uuid4().hex
    offsets = await hub.cluster.history_append([(room.key, POLICY.rules[0])], trigger_id,
                                               json.dumps(data), 3600)
    return {"type": "cb.trigger", "id": trigger_id, "rooms": [room.key],
            "data": json.dumps(data), "offsets": offsets}


async def test_replay_then_live_without_gap_or_duplicate():
    hub, conn, transport = await make_connection()
    old = [await record(hub, n) for n in range(4)]  # 0..3, before the client comes back
    since = old[0]["offsets"][next(iter(old[0]["offsets"]))]  # the client has trigger 0
    real_read = hub.cluster.history_read
    late: list[dict] = []

    async def read_while_delivering(room_key, *, since, limit):
        hub.dispatch(old[3])  # recorded before the read, its PUBLISH arrives now: a duplicate
        fresh = await record(hub, 4)  # recorded and delivered during the read: in both
        hub.dispatch(fresh)
        page = await real_read(room_key, since=since, limit=limit)
        late.append(await record(hub, 5))  # recorded after the read: live only
        hub.dispatch(late[0])
        return page

    hub.cluster.history_read = read_while_delivering  # type: ignore[method-assign]
    await conn.receive(Subscribe("s", ROOM, since=since))
    hub.cluster.history_read = real_read  # type: ignore[method-assign]
    hub.dispatch(await record(hub, 6))  # afterwards: straight through
    await conn.flush()

    frames = [json.loads(f) for f in transport.frames]
    assert frames[0] == {"code": "success", "requestId": "s", "offset": since + 4,
                         "recovered": True}
    deliveries = frames[1:]
    assert [f["data"] for f in deliveries] == [1, 2, 3, 4, 5, 6]
    assert [f["offset"] for f in deliveries] == list(range(since + 1, since + 7))
    # the position a resume would replay after: the last offset written
    sub = conn.session.subscriptions['"s"']
    assert sub.offset == since + 6 and sub.buffer is None


async def test_positions_move_only_when_written():
    hub, conn, transport = await make_connection()
    await conn.receive(Subscribe("s", ROOM))
    await conn.flush()
    sub = conn.session.subscriptions['"s"']
    assert sub.offset == 0  # the room's top when it subscribed (nothing recorded yet)
    message = await record(hub, 1)
    transport.gate = asyncio.Event()  # the socket takes nothing for now
    hub.dispatch(message)
    await asyncio.sleep(0.01)
    assert sub.offset == 0  # queued, not written
    transport.gate.set()
    await conn.flush()
    assert sub.offset == next(iter(message["offsets"].values()))
    # a trigger that does not ask for history moves nothing
    hub.dispatch({"type": "cb.trigger", "id": "plain", "rooms": [next(iter(
        message["offsets"]))], "data": "0"})
    await conn.flush()
    assert sub.offset == next(iter(message["offsets"].values()))
    assert json.loads(transport.frames[-1]) == {
        "type": "publish", "requestId": "s", "data": 0, "room": ROOM, "id": "plain"}
