"""Presence over real broker processes on one Redis (issue 14).

A login with two tabs is one member: ``join`` on its first connection anywhere, ``leave`` on its
last, whichever processes hold them; a process killed with SIGKILL makes its members leave
within BROKER_REGISTRY_TTL. Queries (``presence``, ``presence_stats``) see the cluster, follow
the permission to subscribe, and are refused where presence is off. "Nothing else arrived" is
shown by a marker: a later, different event must be the very next frame.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.parse
from typing import Any

import pytest

from tests.harness import AuthAPI, recv_json, send_json, ws_open

pytestmark = pytest.mark.timeout(60)

RICH = ["combroker.v1"]
ROOM = {"target": "chat", "customer": "7"}
SECRET = {"target": "secret"}
QUIET_ROOM = {"target": "quiet"}
TTL = 3.0


def user(api: AuthAPI, token: str, login: str | None, rooms: list[Any]) -> str:
    api.allow(token=token, body={"login_id": login, "profile": "agent", "allowed_rooms": rooms})
    return token


async def connect(broker: Any, token: str) -> Any:
    ws, welcome = await ws_open(broker.ws_url, token=token, subprotocols=RICH)
    assert welcome["type"] == "welcome", welcome
    return ws


async def ask(ws: Any, request: dict[str, Any], rid: str) -> dict[str, Any]:
    await send_json(ws, {**request, "requestId": rid})
    return await recv_json(ws)


async def subscribe(ws: Any, room: dict[str, Any], rid: str, presence: bool = False) -> None:
    reply = await ask(ws, {"type": "subscribe", "room": room, "presence": presence}, rid)
    assert reply == {"code": "success", "requestId": rid}, reply


def event(kind: str, login: str, rid: str = "watch", room: dict[str, Any] = ROOM) -> dict:
    return {"type": kind, "requestId": rid, "room": room,
            "member": {"login": login, "profile": "agent"}}


@pytest.fixture
def cluster(broker_factory, redis_server, auth_api, unique):
    def start(n: int = 2, **env: Any) -> list[Any]:
        env.setdefault("BROKER_KEY_PREFIX", f"t-{unique}")
        return [broker_factory(auth_api=auth_api, redis=redis_server, **env) for _ in range(n)]
    return start


async def test_two_tabs_are_one_member_across_processes(cluster, auth_api):
    p1, p2 = cluster()
    watcher = await connect(p1, user(auth_api, "tw", "watcher", [ROOM]))
    await subscribe(watcher, ROOM, "watch", presence=True)
    assert await recv_json(watcher) == event("join", "watcher")  # its own join
    tab1 = await connect(p1, user(auth_api, "tb", "bob", [ROOM]))
    tab2 = await connect(p2, "tb")
    await subscribe(tab1, ROOM, "s")
    assert await recv_json(watcher) == event("join", "bob")
    await subscribe(tab2, ROOM, "s")
    reply = await ask(watcher, {"type": "presence", "room": ROOM}, "q1")
    assert reply == {"type": "presence", "requestId": "q1", "room": ROOM, "anonymous": 0,
                     "members": [{"login": "bob", "profile": "agent", "connections": 2},
                                 {"login": "watcher", "profile": "agent", "connections": 1}]}
    assert await ask(watcher, {"type": "presence_stats", "room": ROOM}, "q2") == {
        "type": "presence_stats", "requestId": "q2", "room": ROOM, "members": 2,
        "connections": 3}
    await tab1.close()  # bob is still there on p2
    carol = await connect(p2, user(auth_api, "tc", "carol", [ROOM]))
    await subscribe(carol, ROOM, "s")
    assert await recv_json(watcher) == event("join", "carol")  # and no leave of bob before it
    await tab2.close()
    assert await recv_json(watcher) == event("leave", "bob")
    reply = await ask(watcher, {"type": "presence", "room": ROOM}, "q3")
    assert [m["login"] for m in reply["members"]] == ["carol", "watcher"], reply
    # unsubscribing leaves too; anonymous connections are counted, never announced
    anon = await connect(p1, user(auth_api, "ta", None, [ROOM]))
    await subscribe(anon, ROOM, "s")
    assert await ask(carol, {"type": "unsubscribe"}, "s") == {"code": "success",
                                                               "requestId": "s"}
    assert await recv_json(watcher) == event("leave", "carol")
    reply = await ask(watcher, {"type": "presence", "room": ROOM}, "q4")
    assert (reply["anonymous"], [m["login"] for m in reply["members"]]) == (1, ["watcher"])
    for ws in (watcher, carol, anon):
        await ws.close()


async def test_presence_follows_subscribe_permission_and_settings(cluster, auth_api):
    (p1,) = cluster(1, BROKER_PRESENCE_OFF='[{"target": "quiet"}]')
    ws = await connect(p1, user(auth_api, "tw", "w", [ROOM, QUIET_ROOM]))
    assert await ask(ws, {"type": "presence", "room": SECRET}, "a") == {
        "type": "error", "code": "error", "message": "room-not-found", "requestId": "a"}
    for request in ({"type": "presence", "room": QUIET_ROOM},
                    {"type": "subscribe", "room": QUIET_ROOM, "presence": True}):
        assert await ask(ws, request, "b") == {
            "type": "error", "code": "error", "message": "presence-not-enabled",
            "requestId": "b"}
    reply = await ask(ws, {"type": "subscribe", "room": ROOM, "presence": "yes"}, "c")
    assert reply["message"] == "invalid-message", reply
    # a room with presence off is still subscribed to, just not counted
    await subscribe(ws, QUIET_ROOM, "d")
    await subscribe(ws, ROOM, "e")
    assert (await ask(ws, {"type": "presence", "room": ROOM}, "f"))["members"] == [
        {"login": "w", "profile": "agent", "connections": 1}]
    # the admin console sees any room's presence, though it may subscribe to none
    auth_api.allow(token="troot", body={"login_id": "root", "profile": "admin"})
    root = await connect(p1, "troot")
    assert await ask(root, {"type": "admin", "action": "presence", "room": ROOM}, "g") == {
        "code": "success", "type": "admin", "action": "presence", "room": ROOM,
        "requestId": "g", "members": [{"login": "w", "profile": "agent", "connections": 1}]}
    assert (await ask(root, {"type": "admin", "action": "presence", "room": QUIET_ROOM},
                      "h"))["message"] == "presence-not-enabled"
    # ... and finds the rooms with a subscription itself, a bounded page at a time
    assert await ask(root, {"type": "admin", "action": "rooms"}, "i") == {
        "code": "success", "type": "admin", "action": "rooms", "requestId": "i",
        "more": False, "rooms": [ROOM, QUIET_ROOM]}
    assert (await ask(root, {"type": "admin", "action": "rooms", "limit": 1}, "j"))["more"]
    assert (await ask(root, {"type": "admin", "action": "rooms", "limit": 0},
                      "k"))["message"] == "invalid-message"
    await ws.close()
    await root.close()


async def test_sigkill_makes_the_members_of_the_dead_process_leave(cluster, auth_api):
    p1, p2 = cluster(BROKER_REGISTRY_TTL=str(TTL))
    watcher = await connect(p1, user(auth_api, "tw", "watcher", [ROOM]))
    await subscribe(watcher, ROOM, "watch", presence=True)
    assert await recv_json(watcher) == event("join", "watcher")
    victims = [await connect(p2, user(auth_api, f"t{n}", n, [ROOM])) for n in ("bob", "dan")]
    for ws in victims:
        await subscribe(ws, ROOM, "s")
    joined = {(await recv_json(watcher))["member"]["login"] for _ in victims}
    assert joined == {"bob", "dan"}
    p2.kill()  # SIGKILL
    killed_at = time.monotonic()
    # within the TTL (plus the margin the registry's own ghost test allows)
    left = [await recv_json(watcher, timeout=TTL + 2.0) for _ in victims]
    print(f"leave {time.monotonic() - killed_at:.2f}s after SIGKILL (TTL {TTL})")
    assert sorted(e["member"]["login"] for e in left) == ["bob", "dan"], left
    assert all(e["type"] == "leave" for e in left), left
    reply = await ask(watcher, {"type": "presence", "room": ROOM}, "q")
    assert [m["login"] for m in reply["members"]] == ["watcher"], reply
    await watcher.close()
    for ws in victims:
        await asyncio.shield(ws.close())


async def test_a_stalled_process_leaves_then_joins_again(cluster, auth_api):
    """SIGSTOP past the TTL: the stalled process is swept like a dead one (its member
    leaves); once it runs again it writes its whole state back (its member joins again)
    rather than staying gone while its connection is open."""
    p1, p2 = cluster(BROKER_REGISTRY_TTL=str(TTL))
    watcher = await connect(p1, user(auth_api, "tw", "watcher", [ROOM]))
    await subscribe(watcher, ROOM, "watch", presence=True)
    assert await recv_json(watcher) == event("join", "watcher")
    bob = await connect(p2, user(auth_api, "tb", "bob", [ROOM]))
    await subscribe(bob, ROOM, "s")
    assert await recv_json(watcher) == event("join", "bob")
    os.killpg(p2.proc.pid, signal.SIGSTOP)
    try:
        assert await recv_json(watcher, timeout=TTL + 2.0) == event("leave", "bob")
    finally:
        os.killpg(p2.proc.pid, signal.SIGCONT)
    assert await recv_json(watcher, timeout=TTL + 2.0) == event("join", "bob")
    reply = await ask(watcher, {"type": "presence", "room": ROOM}, "q")
    assert [m["login"] for m in reply["members"]] == ["bob", "watcher"], reply
    for ws in (watcher, bob):
        await ws.close()


async def test_a_resumed_subscription_still_hears_joins_and_leaves(cluster, auth_api):
    p1, p2 = cluster()
    ws, welcome = await ws_open(p1.ws_url, token=user(auth_api, "tw", "watcher", [ROOM]),
                                subprotocols=RICH)
    await subscribe(ws, ROOM, "watch", presence=True)
    assert await recv_json(ws) == event("join", "watcher")
    await ws.close()
    resume = urllib.parse.urlencode({"resume": welcome["resume_token"]})
    ws, welcome = await ws_open(f"{p2.ws_url}?{resume}", token="tw", subprotocols=RICH)
    assert welcome["resumed"] is True, welcome
    assert [s["requestId"] for s in welcome["subscriptions"]] == ["watch"]
    assert await recv_json(ws) == event("join", "watcher")  # back in the room, told so
    bob = await connect(p1, user(auth_api, "tb", "bob", [ROOM]))
    await subscribe(bob, ROOM, "s")
    assert await recv_json(ws) == event("join", "bob")
    await bob.close()
    assert await recv_json(ws) == event("leave", "bob")
    await ws.close()
