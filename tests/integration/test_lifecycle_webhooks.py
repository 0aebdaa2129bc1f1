"""Lifecycle events from real broker processes to a real webhook receiver (issue 14).

- SIGKILL of the process that holds a login's only connection: ``offline`` and ``left`` reach
  the receiver within BROKER_REGISTRY_TTL (sent by the surviving process), signed.
- The receiver down for a while and the broker restarted meanwhile: every event is delivered
  in the end, once per id, in order, each request correctly signed.
- A forged or replayed request fails the documented check (``broker.signature.verify``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from broker.signature import BadSignature, StaleSignature, sign, verify
from tests.harness import AuthAPI, free_port, recv_json, send_json, ws_open
from tests.integration.test_webhooks import Receiver, until

pytestmark = pytest.mark.timeout(90)

RICH = ["combroker.v1"]
ROOM = {"target": "chat", "customer": "7"}
OTHER = {"target": "news"}  # not a lifecycle room: its joins reach no webhook
SECRET = "whsec_lifecycle"
TTL = 3.0


def user(api: AuthAPI, token: str, login: str) -> str:
    api.allow(token=token, body={"login_id": login, "profile": "agent",
                                 "allowed_rooms": [ROOM, OTHER]})
    return token


async def connect_and_subscribe(broker: Any, token: str, *rooms: dict[str, Any]) -> Any:
    ws, welcome = await ws_open(broker.ws_url, token=token, subprotocols=RICH)
    assert welcome["type"] == "welcome", welcome
    for i, room in enumerate(rooms):
        await send_json(ws, {"type": "subscribe", "room": room, "requestId": i})
        assert await recv_json(ws) == {"code": "success", "requestId": i}
    return ws


def events(receiver: Receiver) -> list[dict[str, Any]]:
    """Every event the receiver acknowledged, each request's signature checked."""
    out = []
    for request in receiver.acked():
        verify(request.body, request.headers["X-Combroker-Timestamp"],
               request.headers["X-Combroker-Signature"], SECRET)
        out.extend(json.loads(request.body)["events"])
    return out


def summary(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["login"]) for e in evs]


@pytest.fixture
def cluster(broker_factory, redis_server, auth_api, unique):
    def start(n: int, url: str, **env: Any) -> list[Any]:
        env.setdefault("BROKER_KEY_PREFIX", f"t-{unique}")
        return [broker_factory(auth_api=auth_api, redis=redis_server, BROKER_WEBHOOK_URL=url,
                               BROKER_WEBHOOK_SECRET=SECRET, BROKER_WEBHOOK_RETRY_MAX="0.5",
                               BROKER_LIFECYCLE_ROOMS=json.dumps([ROOM]), **env)
                for _ in range(n)]
    return start


async def test_sigkill_sends_offline_and_left_within_the_ttl(cluster, auth_api):
    receiver = Receiver().start()
    try:
        p1, p2 = cluster(2, receiver.url, BROKER_REGISTRY_TTL=str(TTL))
        watcher = await connect_and_subscribe(p1, user(auth_api, "tw", "watcher"))
        bob = await connect_and_subscribe(p2, user(auth_api, "tb", "bob"), ROOM, OTHER)
        await until(lambda: len(events(receiver)) == 3, 10, "online, online, joined")
        assert sorted(summary(events(receiver))) == [
            ("joined", "bob"), ("online", "bob"), ("online", "watcher")]
        p2.kill()  # SIGKILL: bob's only connection, and its process, are gone
        killed_at = time.monotonic()
        await until(lambda: len(events(receiver)) == 5, TTL + 2.0, "offline and left")
        print(f"offline {time.monotonic() - killed_at:.2f}s after SIGKILL (TTL {TTL})")
        got = events(receiver)
        assert sorted(summary(got[3:])) == [("left", "bob"), ("offline", "bob")]
        left = next(e for e in got if e["type"] == "left")
        assert left["room"] == ROOM and left["profile"] == "agent"
        assert len({e["id"] for e in got}) == 5
        await watcher.close()
    finally:
        receiver.stop()


async def test_receiver_down_and_broker_restarted_still_delivers_everything(cluster,
                                                                             auth_api):
    port = free_port()  # nothing listens there yet: the backend is down
    receiver = Receiver(port)
    (broker,) = cluster(1, receiver.url)
    try:
        alice = await connect_and_subscribe(broker, user(auth_api, "ta", "alice"), ROOM)
        await alice.close()  # online, joined, left, offline: queued in Redis
        broker.restart()  # SIGTERM and start again, the backend still down
        carol = await connect_and_subscribe(broker, user(auth_api, "tc", "carol"), ROOM)
        receiver.answer(503, 503)  # back, but failing twice first
        receiver.start()
        await until(lambda: len(events(receiver)) == 6, 30, "every event")
        await carol.close()
        await until(lambda: len(events(receiver)) == 8, 30, "carol's last events")
        got = events(receiver)
        assert summary(got) == [("online", "alice"), ("joined", "alice"),
                                ("left", "alice"), ("offline", "alice"),
                                ("online", "carol"), ("joined", "carol"),
                                ("left", "carol"), ("offline", "carol")]
        assert len({e["id"] for e in got}) == 8
        assert [r.status for r in receiver.requests[:2]] == [503, 503]

        # the documented check: a forged body, a wrong secret, a replay, all refused
        request = receiver.acked()[0]
        ts, sig = (request.headers["X-Combroker-Timestamp"],
                   request.headers["X-Combroker-Signature"])
        forged = request.body.replace(b"alice", b"mallory")
        with pytest.raises(BadSignature):
            verify(forged, ts, sig, SECRET)
        with pytest.raises(BadSignature):
            verify(request.body, ts, sign(request.body, "guessed", int(ts)), SECRET)
        with pytest.raises(StaleSignature):  # the same request, replayed 10 minutes later
            verify(request.body, ts, sig, SECRET, now=int(ts) + 600)
    finally:
        receiver.stop()
