"""Profiles, direct messages, duplicate logins and admin actions over real broker processes.

PROTOCOL §2.2 (static keys), §2.3 (profiles), §3.2 (send/publish/admin), §6 (admin actions).
Most tests run two broker processes (uvicorn) on one private Redis, each test under its own
BROKER_KEY_PREFIX so registries never mix; the last ones run the in-memory layer.
The request/reply matrix itself is pinned without I/O in tests/unit/test_profiles.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.harness import (
    AuthAPI, close_code, expect_nothing, recv_json, send_json, ws_open,
)

pytestmark = pytest.mark.timeout(60)

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}
CHAT1 = {"target": "chat", "customer": "1"}
NEWS = {"target": "news"}
WATCH_AGENTS = {"client": "*", "profile": "agent"}
WATCH_SUPERS = {"client": "*", "profile": "super_agent"}
INFO_KEYS = {"id", "login_id", "profile", "realm", "transport", "remote_addr", "connected_at",
             "subscriptions"}
TTL = 2.0  # BROKER_REGISTRY_TTL for the crash test
QUIET = 0.3  # how long "gets nothing" listens


def user(api: AuthAPI, token: str, login: str, profile: str, rooms=(), publish=()) -> str:
    api.allow(token=token, body={"login_id": login, "profile": profile,
                                 "allowed_rooms": list(rooms), "publish_rooms": list(publish)})
    return token


class Client:
    """One WebSocket connection; ``ask`` sends a request and returns the very next frame,
    which must be its reply (requestIds are unique per client)."""

    _ids = itertools.count(1)

    def __init__(self, ws: Any, welcome: dict[str, Any], rich: bool) -> None:
        self.ws, self.welcome, self.rich = ws, welcome, rich

    @property
    def id(self) -> str:
        return self.welcome["connection_id"]

    @property
    def dest(self) -> str:
        return self.welcome["destination"]

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        rid = f"q{next(self._ids)}"
        await send_json(self.ws, {**request, "requestId": rid})
        reply = await recv_json(self.ws)
        if self.rich:
            assert reply.pop("requestId", None) == rid, reply
        return reply

    async def recv(self, timeout: float = 5.0) -> Any:
        return await recv_json(self.ws, timeout)

    async def quiet(self) -> None:
        await expect_nothing(self.ws, QUIET)

    async def close(self) -> None:
        await self.ws.close()


async def connect(broker, token: str, *, rich: bool = True) -> Client:
    ws, first = await ws_open(broker.ws_url, token=token, subprotocols=RICH if rich else None)
    assert first["is_authorized"] is True, first
    return Client(ws, first, rich)


def error(code: str) -> dict[str, Any]:
    return {"type": "error", "code": "error", "message": code}


def message(sender: str | None, to: str, data: Any, mid: str) -> dict[str, Any]:
    return {"type": "message", "from": sender, "to": to, "data": data, "id": mid}


async def send_ok(sender: Client, to: str, data: Any) -> str:
    reply = await sender.ask({"type": "send", "to": to, "data": data})
    assert set(reply) == {"code", "id"} and reply["code"] == "success", reply
    return reply["id"]


@pytest.fixture
def cluster(broker_factory, redis_server, auth_api, unique):
    """``cluster(**env)`` -> two broker processes on one Redis, with a per-test key prefix."""
    def start(n: int = 2, **env: Any):
        env.setdefault("BROKER_KEY_PREFIX", f"t-{unique}")
        return [broker_factory(auth_api=auth_api, redis=redis_server, **env) for _ in range(n)]
    return start


async def quiet(*clients: Client) -> None:
    """None of ``clients`` receives anything (they listen at the same time)."""
    await asyncio.gather(*(c.quiet() for c in clients))


async def closing(*clients: Client) -> None:
    for c in clients:
        await c.close()


# ---------------------------------------------------------------- the matrix over WebSocket


async def test_profile_matrix_over_the_cluster(cluster, auth_api):
    p1, p2 = cluster()
    a = await connect(p1, user(auth_api, "ta", "a", "agent", [CHAT_ANY], [CHAT_ANY]))
    b = await connect(p2, user(auth_api, "tb", "b", "agent", [CHAT_ANY]))
    sue = await connect(p2, user(auth_api, "tsue", "sue", "super_agent"))
    svc = await connect(p1, user(auth_api, "tsvc", "billing", "service"))
    root = await connect(p2, user(auth_api, "troot", "root", "admin", [CHAT_ANY], [CHAT_ANY]))
    ht = await connect(p1, user(auth_api, "tht", "ht", "agent"), rich=False)
    try:
        assert [c.dest for c in (a, b, sue, svc, root)] == [
            "/agent/a", "/agent/b", "/super_agent/sue", "/service/billing", "/admin/root"]
        # send: every profile may send to a connected client on either process
        for i, sender in enumerate((a, sue, svc, root)):
            mid = await send_ok(sender, "/agent/b", {"n": i})
            assert await b.recv() == message(sender.dest, "/agent/b", {"n": i}, mid)
        mid = await send_ok(b, "/agent/a", "back")
        assert await a.recv() == message("/agent/b", "/agent/a", "back", mid)
        # ... and nobody may send to a client that no connection holds
        for sender in (a, b, sue, svc, root):
            for to in ("/agent/nobody", "/super_agent/b", "/admin/a"):
                assert await sender.ask({"type": "send", "to": to, "data": 1}) == \
                    error("destination-not-found"), (sender.dest, to)
        # High-templar dialect: the same requests, bare replies
        assert await ht.ask({"type": "send", "to": "/agent/b", "data": "ht"}) == {
            "code": "success"}
        frame = await b.recv()
        assert frame == message("/agent/ht", "/agent/b", "ht", frame["id"])
        assert await ht.ask({"type": "send", "to": "/agent/x", "data": 1}) == {
            "code": "error", "message": "destination-not-found"}
        assert await ht.ask({"type": "admin", "action": "stats"}) == {
            "code": "error", "message": "message-type-not-allowed"}

        # publish: inside publish_rooms, or anywhere for a service
        await b.ws.send('{"type":"subscribe","room":{"target":"news"},"requestId":"n"}')
        assert await b.recv() == error("room-not-found") | {"requestId": "n"}
        await send_json(b.ws, {"type": "subscribe", "room": CHAT1, "requestId": "s1"})
        assert await b.recv() == {"code": "success", "requestId": "s1"}
        for publisher in (a, svc, root):
            reply = await publisher.ask({"type": "publish", "rooms": [CHAT1],
                                         "data": publisher.dest})
            assert reply == {"code": "success", "id": reply["id"]}
            assert await b.recv() == {"type": "publish", "requestId": "s1",
                                      "data": publisher.dest, "room": CHAT1, "id": reply["id"]}
        for publisher, rooms in ((a, [NEWS]), (a, [CHAT1, NEWS]), (b, [CHAT1]), (sue, [CHAT1]),
                                 (root, [NEWS])):
            assert await publisher.ask({"type": "publish", "rooms": rooms, "data": 0}) == \
                error("room-not-allowed"), (publisher.dest, rooms)
        reply = await svc.ask({"type": "publish", "rooms": [NEWS], "data": "svc"})
        assert reply["code"] == "success"

        # subscribe: admin never; watch rooms by profile
        assert await root.ask({"type": "subscribe", "room": CHAT1}) == error(
            "profile-cannot-subscribe")
        assert await a.ask({"type": "subscribe", "room": WATCH_AGENTS}) == error("room-not-found")
        assert await sue.ask({"type": "subscribe", "room": WATCH_SUPERS}) == error(
            "room-not-found")
        assert await sue.ask({"type": "subscribe", "room": WATCH_AGENTS}) == {"code": "success"}
        assert await svc.ask({"type": "subscribe", "room": WATCH_SUPERS}) == {"code": "success"}

        # admin actions and status: admin only
        for c in (a, b, sue, svc):
            for req in ({"type": "admin", "action": "connections"},
                        {"type": "admin", "action": "kick", "login_id": "a"},
                        {"type": "admin", "action": "stats"}, {"type": "status"}):
                assert await c.ask(req) == error("message-type-not-allowed"), (c.dest, req)
        status = await root.ask({"type": "status"})
        assert status == {"type": "status", "open_connections": 6, "num_rooms": 3,
                          "online_since": status["online_since"]}
        listed = await root.ask({"type": "admin", "action": "connections"})
        assert sorted(c["login_id"] for c in listed["connections"]) == [
            "a", "b", "billing", "ht", "root", "sue"]
        await quiet(a, b, sue, svc, root, ht)
    finally:
        await closing(a, b, sue, svc, root, ht)


# ---------------------------------------------------------------- static keys over WebSocket


PROFILE_KEYS = {"agent": "k-agent", "super_agent": "k-super", "service": "k-service",
                "admin": "k-admin"}


def static_url(broker, app_key: str, login: str, profile_key: str) -> str:
    query = urllib.parse.urlencode({"app_key": app_key, "login_id": login,
                                    "profile_key": profile_key})
    return f"{broker.ws_url}?{query}"


async def test_static_key_login_over_websocket(broker_factory, auth_api):
    broker = broker_factory(auth_api=auth_api, BROKER_APP_KEY="app-secret",
                            BROKER_PROFILE_KEYS=PROFILE_KEYS)
    bob_ws, welcome = await ws_open(static_url(broker, "app-secret", "bob", "k-agent"),
                                    subprotocols=RICH)
    assert welcome == {"type": "welcome", "is_authorized": True, "is_authenticated": True,
                       "allowed_rooms": [], "connection_id": welcome["connection_id"],
                       "login_id": "bob", "profile": "agent", "destination": "/agent/bob",
                       "resume_token": welcome["resume_token"], "resume_ttl": 300}
    sue_ws, welcome = await ws_open(static_url(broker, "app-secret", "sue", "k-super"))
    assert welcome == {"is_authorized": True, "allowed_rooms": [WATCH_AGENTS]}
    try:
        # a static-key identity is a full client: it sends, receives and watches
        bob, sue = Client(bob_ws, {}, True), Client(sue_ws, {}, False)
        await send_json(sue_ws, {"type": "subscribe", "room": WATCH_AGENTS, "requestId": "w"})
        assert await sue.recv() == {"code": "success"}
        await send_json(sue_ws, {"type": "send", "to": "/agent/bob", "data": "hi"})
        got = await bob.recv()
        assert got == message("/super_agent/sue", "/agent/bob", "hi", got["id"])
        # sue watches agents, bob included: her copy and her reply come in either order
        frames = [await sue.recv(), await sue.recv()]
        assert sorted(frames, key=len) == [
            {"code": "success"}, {"type": "publish", "requestId": "w", "data": got}]

        for rich in (True, False):
            for app_key, profile_key, reason in (
                    ("wrong", "k-agent", "Invalid Application Secret Key."),
                    ("", "k-agent", "Invalid Application Secret Key."),
                    ("app-secret", "wrong", "Invalid Profile/Passcode."),
                    ("app-secret", "", "Invalid Profile/Passcode.")):
                ws, first = await ws_open(static_url(broker, app_key, "eve", profile_key),
                                          subprotocols=RICH if rich else None)
                if rich:
                    assert first == {"type": "refused", "is_authorized": False, "reason": reason}
                    assert await close_code(ws) == (4003, "")
                else:
                    assert first == {"is_authorized": False}
                    assert (await close_code(ws))[0] == 1000
        # static keys never consult the auth API
        assert auth_api.count == 0
    finally:
        await bob_ws.close()
        await sue_ws.close()



# ---------------------------------------------------------------- direct messages, two processes


async def test_direct_messages_and_watchers_across_processes(cluster, auth_api):
    p1, p2 = cluster()
    a = await connect(p1, user(auth_api, "ta", "a", "agent"))
    b_on_2 = await connect(p2, user(auth_api, "tb", "b", "agent"))
    b_on_1 = await connect(p1, "tb")
    c = await connect(p1, user(auth_api, "tc", "c", "agent"))
    sue = await connect(p2, user(auth_api, "tsue", "sue", "super_agent"))
    sam = await connect(p1, user(auth_api, "tsam", "sam", "super_agent"))
    svc = await connect(p2, user(auth_api, "tsvc", "billing", "service"))
    everyone = (a, b_on_2, b_on_1, c, sue, sam, svc)
    B_ROOM = {"client": "b", "profile": "agent"}
    try:
        for watcher, room, rid in ((sue, WATCH_AGENTS, "wa"), (svc, WATCH_SUPERS, "ws"),
                                   (sam, B_ROOM, "wb")):
            await send_json(watcher.ws, {"type": "subscribe", "room": room, "requestId": rid})
            assert await watcher.recv() == {"code": "success", "requestId": rid}

        # agent a (process 1) -> agent b: both of b's connections, on both processes
        data = {"text": "hello", "n": [1, 2.5, None, True], "ü": "ü"}
        mid = await send_ok(a, "/agent/b", data)
        expected = message("/agent/a", "/agent/b", data, mid)
        assert await b_on_2.recv() == expected
        assert await b_on_1.recv() == expected
        # watchers get the whole message as a publish frame, once: the super agent watching
        # every agent, and the one watching b's own room
        assert await sue.recv() == {"type": "publish", "requestId": "wa", "data": expected,
                                    "room": B_ROOM, "id": mid}
        assert await sam.recv() == {"type": "publish", "requestId": "wb", "data": expected,
                                    "room": B_ROOM, "id": mid}

        # agent a -> super agent sam (process 1): the service on process 2 watching super
        # agents gets the copy; the super agent watching agents does not
        mid = await send_ok(a, "/super_agent/sam", "ping sam")
        expected = message("/agent/a", "/super_agent/sam", "ping sam", mid)
        assert await sam.recv() == expected
        assert await svc.recv() == {"type": "publish", "requestId": "ws", "data": expected,
                                    "room": {"client": "sam", "profile": "super_agent"},
                                    "id": mid}

        # the service (process 2) -> agent c (process 1): sue on process 2 sees it
        mid = await send_ok(svc, "/agent/c", None)
        expected = message("/service/billing", "/agent/c", None, mid)
        assert await c.recv() == expected
        assert await sue.recv() == {"type": "publish", "requestId": "wa", "data": expected,
                                    "room": {"client": "c", "profile": "agent"}, "id": mid}

        # nobody got anything else: not the other agents, not the other watchers, no duplicates
        await quiet(*everyone)

        # one of b's connections leaves: the other still gets b's messages
        await b_on_2.close()
        mid = await send_ok(c, "/agent/b", 2)
        expected = message("/agent/c", "/agent/b", 2, mid)
        assert await b_on_1.recv() == expected
        assert (await sue.recv())["data"] == expected
        assert (await sam.recv())["data"] == expected
        await quiet(*(x for x in everyone if x is not b_on_2))
    finally:
        await closing(*everyone)


# ---------------------------------------------------------------- duplicate logins


@pytest.mark.parametrize("policy", ["allow", "replace", "reject"])
async def test_duplicate_login_policies_across_processes(cluster, auth_api, policy):
    p1, p2 = cluster(BROKER_DUPLICATE_LOGIN=policy)
    sender = await connect(p1, user(auth_api, "ts", "s", "service"))
    user(auth_api, "tdup", "dup", "agent")
    first = await connect(p1, "tdup")
    ws, second_welcome = await ws_open(p2.ws_url, token="tdup", subprotocols=RICH)
    second = Client(ws, second_welcome, True)
    try:
        if policy == "reject":
            assert second_welcome == {"type": "refused", "is_authorized": False,
                                      "reason": "duplicate-login"}
            assert await close_code(second.ws) == (4003, "")
            # the HT dialect is refused too
            ws, ht = await ws_open(p1.ws_url, token="tdup")
            assert ht == {"is_authorized": False}
            assert (await close_code(ws))[0] == 1000
            mid = await send_ok(sender, "/agent/dup", "still first")
            assert await first.recv() == message("/service/s", "/agent/dup", "still first", mid)
            # once the first connection is gone the login is free again
            await first.close()
            deadline = time.monotonic() + 3
            while True:
                ws, welcome = await ws_open(p2.ws_url, token="tdup", subprotocols=RICH)
                if welcome["is_authorized"] or time.monotonic() > deadline:
                    break
                await ws.close()
            third = Client(ws, welcome, True)
            assert welcome["type"] == "welcome" and welcome["destination"] == "/agent/dup"
            await third.close()
            return
        assert second_welcome["type"] == "welcome"
        assert second_welcome["destination"] == "/agent/dup"
        if policy == "replace":
            assert await close_code(first.ws) == (4009, "replaced")
            mid = await send_ok(sender, "/agent/dup", "to the new one")
            assert await second.recv() == message("/service/s", "/agent/dup", "to the new one",
                                                  mid)
            # and the replacement works the other way round, inside one process too
            third = await connect(p2, "tdup")
            assert await close_code(second.ws) == (4009, "replaced")
            mid = await send_ok(sender, "/agent/dup", 3)
            assert await third.recv() == message("/service/s", "/agent/dup", 3, mid)
            await third.quiet()
            await third.close()
        else:  # allow
            mid = await send_ok(sender, "/agent/dup", "to both")
            expected = message("/service/s", "/agent/dup", "to both", mid)
            assert await first.recv() == expected
            assert await second.recv() == expected
            await quiet(first, second)
    finally:
        await closing(sender, first, second)


# ---------------------------------------------------------------- admin actions


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


async def wait_for(check, timeout: float, what: str, interval: float = 0.1, until: Any = True):
    """Poll the coroutine function ``check`` until it returns ``until`` (default: True)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value == until:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def test_admin_connections_stats_and_kick_across_processes(cluster, auth_api):
    p1, p2 = cluster()
    before = time.time()
    a = await connect(p1, user(auth_api, "ta", "a", "agent", [CHAT_ANY]))
    b1 = await connect(p1, user(auth_api, "tb", "b", "agent"))
    b2 = await connect(p2, "tb", rich=False)
    root = await connect(p2, user(auth_api, "troot", "root", "admin"))
    ids = {"a": a.id, "root": root.id}
    try:
        listed = (await root.ask({"type": "admin", "action": "connections"}))
        assert set(listed) == {"code", "type", "action", "connections"}
        assert (listed["code"], listed["type"], listed["action"]) == (
            "success", "admin", "connections")
        conns = {c["id"]: c for c in listed["connections"]}
        assert len(conns) == 4
        for conn in conns.values():
            assert set(conn) == INFO_KEYS, conn
            assert conn["transport"] == "websocket" and conn["remote_addr"] == "127.0.0.1"
            assert before - 1 <= parse_time(conn["connected_at"]) <= time.time() + 1
            assert conn["subscriptions"] == 0
        assert {(c["login_id"], c["profile"]) for c in conns.values()} == {
            ("a", "agent"), ("b", "agent"), ("root", "admin")}
        assert conns[a.id]["login_id"] == "a" and conns[root.id]["profile"] == "admin"
        assert conns[b1.id]["login_id"] == "b"
        b2_id = next(i for i, c in conns.items() if c["login_id"] == "b" and i != b1.id)

        # subscription counts follow subscribes shortly (the registry's dirty-set upkeep)
        for rid, room in (("r1", CHAT1), ("r2", CHAT_ANY)):
            await send_json(a.ws, {"type": "subscribe", "room": room, "requestId": rid})
            assert await a.recv() == {"code": "success", "requestId": rid}

        subscribed_at = time.monotonic()

        async def a_count():
            listed = await root.ask({"type": "admin", "action": "connections"})
            return {c["id"]: c["subscriptions"] for c in listed["connections"]}[a.id] == 2
        await wait_for(a_count, 3.0, "subscription count update", interval=0.05)
        print(f"subscription count listed {time.monotonic() - subscribed_at:.2f}s after "
              f"subscribing")

        stats = await root.ask({"type": "admin", "action": "stats"})
        assert (stats["code"], stats["action"]) == ("success", "stats")
        assert set(stats["stats"]) == {"connections", "rooms", "triggers", "deliveries", "drops",
                                       "triggers_per_s", "deliveries_per_s", "drops_per_s"}
        assert (stats["stats"]["connections"], stats["stats"]["rooms"]) == (4, 2)
        assert len(stats["processes"]) == 2
        status = await root.ask({"type": "status"})
        assert (status["open_connections"], status["num_rooms"]) == (4, 2)

        # kick by login: b's connections on both processes close with 4010
        kicked = await root.ask({"type": "admin", "action": "kick", "login_id": "b"})
        assert kicked["code"] == "success" and kicked["action"] == "kick"
        assert sorted(kicked["kicked"]) == sorted([b1.id, b2_id])
        assert await close_code(b1.ws) == (4010, "kicked")
        assert await close_code(b2.ws) == (4010, "kicked")

        # kick by connection id
        kicked = await root.ask({"type": "admin", "action": "kick", "connection_id": a.id})
        assert kicked["kicked"] == [a.id]
        assert await close_code(a.ws) == (4010, "kicked")

        async def only_root():
            listed = await root.ask({"type": "admin", "action": "connections"})
            return [c["id"] for c in listed["connections"]] == [ids["root"]]
        await wait_for(only_root, 3.0, "kicked connections leaving the registry")
        assert await root.ask({"type": "send", "to": "/agent/b", "data": 1}) == error(
            "destination-not-found")

        # bad kicks
        assert await root.ask({"type": "admin", "action": "kick", "login_id": "b"}) == error(
            "connection-not-found")
        reply = await root.ask({"type": "admin", "action": "kick"})
        assert (reply["code"], reply["message"]) == ("error", "invalid-message")
        reply = await root.ask({"type": "admin", "action": "reboot"})
        assert (reply["code"], reply["message"]) == ("error", "unknown-action")
        await root.quiet()
    finally:
        await closing(a, b1, b2, root)


# ---------------------------------------------------------------- a crashed process


async def test_killed_process_leaves_no_ghosts(cluster, auth_api):
    p1, p2 = cluster(BROKER_REGISTRY_TTL=TTL)
    a = await connect(p1, user(auth_api, "ta", "a", "agent"))
    root = await connect(p1, user(auth_api, "troot", "root", "admin"))
    b = await connect(p2, user(auth_api, "tb", "b", "agent"))
    sue = await connect(p2, user(auth_api, "tsue", "sue", "super_agent"))
    try:
        listed = await root.ask({"type": "admin", "action": "connections"})
        assert sorted(c["login_id"] for c in listed["connections"]) == ["a", "b", "root", "sue"]
        await send_ok(a, "/agent/b", "before")

        p2.kill()
        killed_at = time.monotonic()

        async def gone():
            listed = await root.ask({"type": "admin", "action": "connections"})
            logins = sorted(c["login_id"] for c in listed["connections"])
            reply = await a.ask({"type": "send", "to": "/agent/b", "data": "after"})
            status = await root.ask({"type": "status"})
            return (logins == ["a", "root"] and reply == error("destination-not-found")
                    and status["open_connections"] == 2)
        await wait_for(gone, TTL + 2.0, "ghost removal")
        elapsed = time.monotonic() - killed_at
        print(f"ghosts gone {elapsed:.2f}s after SIGKILL (BROKER_REGISTRY_TTL={TTL})")
        # the survivors still work
        mid = await send_ok(root, "/agent/a", "still here")
        assert await a.recv() == message("/admin/root", "/agent/a", "still here", mid)
    finally:
        await closing(a, root, b, sue)


async def test_live_clients_stay_reachable_with_a_sub_second_ttl(cluster, auth_api):
    """The registry's liveness is measured in Redis TIME with microseconds: a process that
    heartbeats on time is never taken for dead, even when the TTL is under one second."""
    p1, p2 = cluster(BROKER_REGISTRY_TTL=0.5)
    a = await connect(p1, user(auth_api, "ta", "a", "agent"))
    b = await connect(p2, user(auth_api, "tb", "b", "agent"))
    try:
        failed, sent, started = [], 0, time.monotonic()
        while time.monotonic() - started < 2.0:
            reply = await a.ask({"type": "send", "to": "/agent/b", "data": sent})
            if reply.get("code") == "success":
                assert await b.recv() == message("/agent/a", "/agent/b", sent, reply["id"])
            else:
                failed.append(reply)
            sent += 1
            await asyncio.sleep(0.01)
        assert failed == [] and sent > 20
        p2.kill()
        killed_at = time.monotonic()

        async def gone():
            reply = await a.ask({"type": "send", "to": "/agent/b", "data": "after"})
            return reply == error("destination-not-found")
        await wait_for(gone, 0.5 + 1.5, "ghost removal", interval=0.05)
        print(f"ghosts gone {time.monotonic() - killed_at:.2f}s after SIGKILL "
              f"(BROKER_REGISTRY_TTL=0.5)")
    finally:
        await closing(a, b)


# ---------------------------------------------------------------- the in-memory layer


async def test_in_memory_layer_one_process(broker_factory, auth_api):
    broker = broker_factory(auth_api=auth_api, BROKER_DUPLICATE_LOGIN="replace")
    a = await connect(broker, user(auth_api, "ta", "a", "agent"))
    b = await connect(broker, user(auth_api, "tb", "b", "agent"))
    sue = await connect(broker, user(auth_api, "tsue", "sue", "super_agent"))
    root = await connect(broker, user(auth_api, "troot", "root", "admin"))
    b_again = None
    try:
        await send_json(sue.ws, {"type": "subscribe", "room": WATCH_AGENTS, "requestId": "w"})
        assert await sue.recv() == {"code": "success", "requestId": "w"}
        mid = await send_ok(a, "/agent/b", {"k": 1})
        expected = message("/agent/a", "/agent/b", {"k": 1}, mid)
        assert await b.recv() == expected
        assert await sue.recv() == {"type": "publish", "requestId": "w", "data": expected,
                                    "room": {"client": "b", "profile": "agent"}, "id": mid}
        assert await a.ask({"type": "send", "to": "/agent/zed", "data": 1}) == error(
            "destination-not-found")
        await a.quiet()

        want = {a.id: ("a", 0), b.id: ("b", 0), sue.id: ("sue", 1), root.id: ("root", 0)}

        async def listed():
            reply = await root.ask({"type": "admin", "action": "connections"})
            return {c["id"]: (c["login_id"], c["subscriptions"]) for c in reply["connections"]}
        assert await wait_for(listed, 3.0, "connections listing", until=want) == want
        assert {k: (await root.ask({"type": "admin", "action": "stats"}))["stats"][k]
                for k in ("connections", "rooms")} == {"connections": 4, "rooms": 1}

        b_again = await connect(broker, "tb")
        assert await close_code(b.ws) == (4009, "replaced")
        mid = await send_ok(a, "/agent/b", 2)
        assert await b_again.recv() == message("/agent/a", "/agent/b", 2, mid)

        kicked = await root.ask({"type": "admin", "action": "kick", "login_id": "a"})
        assert kicked["kicked"] == [a.id]
        assert await close_code(a.ws) == (4010, "kicked")

        # the close frame goes out before the connection leaves the registry (as above)
        async def a_gone():
            listed = await root.ask({"type": "admin", "action": "connections"})
            return a.id not in [c["id"] for c in listed["connections"]]
        await wait_for(a_gone, 3.0, "the kicked connection leaving the registry")
        assert await root.ask({"type": "send", "to": "/agent/a", "data": 1}) == error(
            "destination-not-found")
    finally:
        await closing(a, b, sue, root, *([b_again] if b_again else []))


async def test_in_memory_layer_rejects_a_duplicate_login(broker_factory, auth_api):
    broker = broker_factory(auth_api=auth_api, BROKER_DUPLICATE_LOGIN="reject")
    first = await connect(broker, user(auth_api, "ta", "a", "agent"))
    try:
        ws, refused = await ws_open(broker.ws_url, token="ta", subprotocols=RICH)
        assert refused == {"type": "refused", "is_authorized": False, "reason": "duplicate-login"}
        assert await close_code(ws) == (4003, "")
        assert await first.ask({"type": "ping"}) == {"type": "pong"}
    finally:
        await first.close()
