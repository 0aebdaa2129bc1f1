"""The server API (issue 14): ``POST /api/<operation>`` with the trigger token, each operation
against two real broker processes on one real Redis with clients on both, and a real auth API
stub whose answers change between a connect and a re-check; ``exclude`` on /trigger.

Negative assertions ("nothing else arrived") send a marker after what must not arrive (a
broadcast, which reaches every connection) and check that the marker is the next frame.
"""

from __future__ import annotations

import asyncio
import json
import itertools
from typing import Any

import httpx
import pytest

from tests.harness import AuthAPI, atrigger, close_code, recv_json, send_json, ws_open

pytestmark = pytest.mark.timeout(90)

RICH = ["combroker.v1"]
TOKEN = "test-token"
CHAT1 = {"target": "chat", "customer": "1"}
CHAT2 = {"target": "chat", "customer": "2"}
CHAT_ANY = {"target": "chat", "customer": "*"}
NEWS = {"target": "news"}
HISTORY = [{"room": CHAT_ANY, "size": 100, "ttl": 60}]
OPERATIONS = ("publish_to_users", "broadcast", "disconnect", "unsubscribe", "recheck",
              "history", "connections", "presence", "presence_stats")
_marks = itertools.count(1)


def user(api: AuthAPI, token: str, login: str, rooms: list[dict] = ()) -> str:
    api.allow(token=token, body={"login_id": login, "profile": "agent",
                                 "allowed_rooms": list(rooms)})
    return token


class Client:
    def __init__(self, ws: Any, welcome: dict[str, Any], rich: bool) -> None:
        self.ws, self.welcome, self.rich = ws, welcome, rich

    @property
    def id(self) -> str:
        return self.welcome["connection_id"]

    async def subscribe(self, rid: str, room: dict) -> None:
        await send_json(self.ws, {"type": "subscribe", "room": room, "requestId": rid})
        reply = await recv_json(self.ws)
        assert reply["code"] == "success", reply

    async def recv(self) -> Any:
        return await recv_json(self.ws)


async def connect(broker, token: str, rich: bool = True) -> Client:
    ws, first = await ws_open(broker.ws_url, token=token, subprotocols=RICH if rich else None)
    assert first["is_authorized"] is True, first
    return Client(ws, first, rich)


async def call(broker, operation: str, body: Any = None, token: str | None = TOKEN,
               **kw: Any) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(trust_env=False) as c:
        return await c.post(f"{broker.base_url}{kw.pop('prefix', '')}/api/{operation}",
                            json=body, headers=headers, timeout=10, **kw)


async def ok(broker, operation: str, body: Any = None, **kw: Any) -> dict[str, Any]:
    r = await call(broker, operation, body, **kw)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer.pop("ok") is True, answer
    return answer


async def then_only_marker(broker, *clients: Client) -> None:
    """Nothing but a marker arrives next at any of ``clients``: a broadcast sent now."""
    mark = {"mark": next(_marks)}
    sent = await ok(broker, "broadcast", {"data": mark})
    for c in clients:
        assert await c.recv() == {"type": "broadcast", "data": mark, "id": sent["id"]}


@pytest.fixture
def cluster(broker_factory, redis_server, auth_api, unique):
    def start(**env: Any):
        env.setdefault("BROKER_KEY_PREFIX", f"api-{unique}")
        env.setdefault("BROKER_HISTORY", HISTORY)
        return [broker_factory(auth_api=auth_api, redis=redis_server, **env) for _ in range(2)]
    return start


async def wait_listed(broker, n: int, login: str | None = None) -> list[dict[str, Any]]:
    """The registry lists ``n`` connections (of ``login``): registrations are group-committed."""
    for _ in range(100):
        listed = (await ok(broker, "connections", {} if login is None else {"login": login})
                  )["connections"]
        if len(listed) == n:
            return listed
        await asyncio.sleep(0.05)
    raise AssertionError(f"registry lists {listed!r}, not {n} connections")


# ---------------------------------------------------------------- the HTTP contract


async def test_every_operation_needs_the_trigger_token(broker):
    for operation in OPERATIONS:
        for token in (None, "wrong-token"):
            r = await call(broker, operation, {"data": 1}, token=token)
            assert r.status_code == 401, (operation, token, r.text)
            assert r.json() == {"error": "missing or wrong trigger token"}
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{broker.base_url}/api/connections",
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 405


async def test_bad_input_gets_named_400s(broker):
    cases = [
        ("broadcast", b"[1", "invalid-body"),
        ("broadcast", [1], "invalid-body"),
        ("broadcast", {}, "missing-field"),
        ("publish_to_users", {"data": 1}, "missing-field"),
        ("publish_to_users", {"logins": [], "data": 1}, "invalid-logins"),
        ("publish_to_users", {"logins": "bob", "data": 1}, "invalid-logins"),
        ("publish_to_users", {"logins": ["a/b"], "data": 1}, "invalid-login"),
        ("disconnect", {}, "no-target"),
        ("disconnect", {"login": "bob", "reason": "x" * 101}, "invalid-reason"),
        ("disconnect", {"login": "bob", "reason": "line\nbreak"}, "invalid-reason"),
        ("disconnect", {"connection_id": 7}, "invalid-connection-id"),
        ("unsubscribe", {"login": "bob"}, "missing-field"),
        ("unsubscribe", {"login": "bob", "rooms": [NEWS, 5]}, "invalid-room"),
        ("unsubscribe", {"login": "bob", "rooms": []}, "invalid-rooms"),
        ("recheck", {"login": ""}, "invalid-login"),
        ("history", {"room": NEWS}, "history-not-enabled"),
        ("history", {"room": 5}, "invalid-room"),
        ("connections", {"login": 5}, "invalid-login"),
    ]
    for operation, body, code in cases:
        if isinstance(body, bytes):
            async with httpx.AsyncClient(trust_env=False) as c:
                r = await c.post(f"{broker.base_url}/api/{operation}", content=body,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        else:
            r = await call(broker, operation, body)
        assert r.status_code == 400, (operation, body, r.text)
        answer = r.json()
        assert answer["error"] == code and answer["detail"], (operation, body, answer)
    # an operation the API does not have is not a route of it
    assert (await call(broker, "reboot", {})).status_code == 404


async def test_redis_down_is_503(broker_factory, auth_api, fresh_redis):
    broker = broker_factory(auth_api=auth_api, redis=fresh_redis)
    assert (await call(broker, "connections")).status_code == 200
    fresh_redis.stop()
    for operation, body in (("connections", {}), ("broadcast", {"data": 1}),
                            ("recheck", {"login": "bob"})):
        r = await call(broker, operation, body)
        assert r.status_code == 503, (operation, r.text)
        assert r.json()["error"] == "unavailable"


# ---------------------------------------------------------------- each operation, two processes


async def test_publish_to_users_and_broadcast_reach_every_connection_on_both(cluster, auth_api):
    p1, p2 = cluster()
    bob1 = await connect(p1, user(auth_api, "tb", "bob"))
    bob2 = await connect(p2, "tb", rich=False)  # High-templar dialect
    amy = await connect(p2, user(auth_api, "ta", "amy"))
    carl = await connect(p1, user(auth_api, "tc", "carl"))
    await wait_listed(p1, 4)

    sent = await ok(p1, "publish_to_users", {"logins": ["bob", "carl", "bob"],
                                             "data": {"hi": 1}})
    assert sent["logins"] == 2
    for c, to in ((bob1, "/agent/bob"), (bob2, "/agent/bob"), (carl, "/agent/carl")):
        assert await c.recv() == {"type": "message", "from": None, "to": to,
                                  "data": {"hi": 1}, "id": sent["id"]}
    await then_only_marker(p2, amy, bob1, bob2, carl)  # amy got nothing; no one got two

    sent = await ok(p2, "broadcast", {"data": "to all"})
    for c in (bob1, bob2, amy, carl):
        assert await c.recv() == {"type": "broadcast", "data": "to all", "id": sent["id"]}


async def test_disconnect_by_login_and_by_connection(cluster, auth_api):
    p1, p2 = cluster()
    bob1 = await connect(p1, user(auth_api, "tb", "bob"))
    bob2 = await connect(p2, "tb")
    amy = await connect(p2, user(auth_api, "ta", "amy"))
    await wait_listed(p1, 3)

    answer = await ok(p1, "disconnect", {"login": "bob", "reason": "logged out"})
    assert sorted(answer["connections"]) == sorted([bob1.id, bob2.id])
    assert await close_code(bob1.ws) == (4010, "logged out")
    assert await close_code(bob2.ws) == (4010, "logged out")

    answer = await ok(p1, "disconnect", {"connection_id": amy.id})
    assert answer["connections"] == [amy.id]
    assert await close_code(amy.ws) == (4010, "kicked")


async def test_unsubscribe_drops_exactly_the_named_rooms_on_every_process(cluster, auth_api):
    p1, p2 = cluster()
    user(auth_api, "tb", "bob", [CHAT_ANY, NEWS])
    bob1, bob2 = await connect(p1, "tb"), await connect(p2, "tb")
    amy = await connect(p2, user(auth_api, "ta", "amy", [CHAT_ANY]))
    for rid, room in (("c1", CHAT1), ("any", CHAT_ANY), ("news", NEWS)):
        await bob1.subscribe(rid, room)
    await bob2.subscribe("c1", CHAT1)
    await amy.subscribe("c1", CHAT1)
    await wait_listed(p1, 2, "bob")

    answer = await ok(p2, "unsubscribe", {"login": "bob", "rooms": [CHAT1, NEWS]})
    assert sorted(answer["connections"]) == sorted([bob1.id, bob2.id])
    told = [await bob1.recv(), await bob1.recv()]
    assert sorted(told, key=lambda f: f["requestId"]) == [
        {"type": "unsubscribed", "requestId": "c1", "room": CHAT1, "reason": "server"},
        {"type": "unsubscribed", "requestId": "news", "room": NEWS, "reason": "server"}]
    assert await bob2.recv() == {"type": "unsubscribed", "requestId": "c1", "room": CHAT1,
                                 "reason": "server"}

    r = await atrigger(p1.base_url, TOKEN, [CHAT1, NEWS], "after")
    assert r.status_code == 202, r.text
    tid = r.json()["id"]
    publish = {"type": "publish", "data": "after", "room": CHAT1, "id": tid}
    assert await bob1.recv() == {**publish, "requestId": "any"}  # the wildcard stays
    assert await amy.recv() == {**publish, "requestId": "c1"}  # another login is untouched
    await then_only_marker(p1, bob1, bob2, amy)
    # the dropped ids are free again: the client may subscribe anew
    await bob1.subscribe("c1", CHAT1)


async def test_recheck_drops_exactly_what_the_auth_api_no_longer_allows(cluster, auth_api):
    p1, p2 = cluster()
    user(auth_api, "tb", "bob", [CHAT_ANY, NEWS])
    bob1, bob2 = await connect(p1, "tb"), await connect(p2, "tb", rich=False)
    amy = await connect(p1, user(auth_api, "ta", "amy", [CHAT_ANY]))
    await bob1.subscribe("c1", CHAT1)
    await bob1.subscribe("news", NEWS)
    await bob2.subscribe("c2", CHAT2)
    await bob2.subscribe("news", NEWS)
    await amy.subscribe("c1", CHAT1)
    bobs = sorted(c["id"] for c in await wait_listed(p1, 2, "bob"))  # (High-templar: no id)

    # the backend changes bob's permissions: chat 2 and news only
    user(auth_api, "tb", "bob", [CHAT2, NEWS])
    asked = auth_api.count
    answer = await ok(p1, "recheck", {"login": "bob"})
    assert sorted(answer["connections"]) == bobs
    assert await bob1.recv() == {"type": "unsubscribed", "requestId": "c1", "room": CHAT1,
                                 "reason": "recheck"}
    await auth_api.await_requests(asked + 2)  # each connection asked again (amy did not)

    r = await atrigger(p2.base_url, TOKEN, [CHAT1, CHAT2, NEWS], "after")
    assert r.status_code == 202, r.text
    assert await bob1.recv() == {"type": "publish", "requestId": "news", "data": "after",
                                 "room": NEWS, "id": r.json()["id"]}
    # the High-templar client is not told (no such frame) and loses nothing it may keep
    got = sorted([(await bob2.recv())["requestId"], (await bob2.recv())["requestId"]])
    assert got == ["c2", "news"]
    assert (await amy.recv())["requestId"] == "c1"
    await then_only_marker(p1, bob1, bob2, amy)
    # later subscribes are judged by the new answer
    await send_json(bob1.ws, {"type": "subscribe", "room": CHAT1, "requestId": "again"})
    assert (await bob1.recv())["message"] == "room-not-found"

    # the API no longer admits bob: both connections close with 4003 revoked, amy stays
    auth_api.deny("tb")
    await ok(p2, "recheck", {"login": "bob"})
    assert await close_code(bob1.ws) == (4003, "revoked")
    assert await close_code(bob2.ws) == (4003, "revoked")
    await then_only_marker(p2, amy)


async def test_exclude_keeps_the_echo_from_the_sender_only(cluster, auth_api):
    p1, p2 = cluster()
    user(auth_api, "tb", "bob", [NEWS])
    sender, other_tab = await connect(p1, "tb"), await connect(p2, "tb")
    amy = await connect(p2, user(auth_api, "ta", "amy", [NEWS]))
    for c in (sender, other_tab, amy):
        await c.subscribe("n", NEWS)

    r = await atrigger(p2.base_url, TOKEN, None, body={"rooms": [NEWS], "data": "single",
                                                       "exclude": sender.id})
    assert r.status_code == 202, r.text
    for c in (other_tab, amy):
        assert (await c.recv())["data"] == "single"
    r = await atrigger(p1.base_url, TOKEN, None, body=[
        {"rooms": [NEWS], "data": "batch", "exclude": sender.id}, {"rooms": [NEWS], "data": 2}])
    assert r.status_code == 202, r.text
    for c in (other_tab, amy):
        assert [(await c.recv())["data"], (await c.recv())["data"]] == ["batch", 2]
    assert (await sender.recv())["data"] == 2  # the second entry excluded no one
    await then_only_marker(p1, sender, other_tab, amy)

    r = await atrigger(p1.base_url, TOKEN, None, body={"rooms": [NEWS], "data": 1,
                                                       "exclude": "not an id"})
    assert r.status_code == 400 and "exclude must be a connection id" in r.json()["error"]


async def test_history_and_connections(cluster, auth_api):
    p1, p2 = cluster()
    bob = await connect(p1, user(auth_api, "tb", "bob"))
    amy = await connect(p2, user(auth_api, "ta", "amy", [CHAT_ANY]))
    await amy.subscribe("c1", CHAT1)
    ids = []
    for n in range(3):
        r = await atrigger(p1.base_url, TOKEN, None, body={"rooms": [CHAT1], "data": {"n": n},
                                                           "history": True})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
        assert (await amy.recv())["data"] == {"n": n}

    page = await ok(p2, "history", {"room": CHAT1, "limit": 2})
    assert page["room"] == CHAT1 and [m["id"] for m in page["messages"]] == ids[1:]
    assert [m["data"] for m in page["messages"]] == [{"n": 1}, {"n": 2}]
    assert page["offset"] == page["messages"][-1]["offset"] and "recovered" not in page
    first = page["messages"][0]["offset"]
    after = await ok(p1, "history", {"room": CHAT1, "since": first})
    assert [m["id"] for m in after["messages"]] == ids[2:] and after["recovered"] is True
    # no permission check: bob may not subscribe to chat rooms, the backend reads them anyway
    empty = await ok(p1, "history", {"room": CHAT2})
    assert empty == {"room": CHAT2, "offset": 0, "messages": []}

    listed = await wait_listed(p1, 2)
    assert {(c["id"], c["login_id"]) for c in listed} == {(bob.id, "bob"), (amy.id, "amy")}
    assert {"id", "login_id", "profile", "realm", "transport", "remote_addr", "connected_at",
            "subscriptions"} <= set(listed[0])
    only = await ok(p2, "connections", {"login": "amy"})
    assert [c["id"] for c in only["connections"]] == [amy.id]


async def test_presence_sees_the_cluster(cluster, auth_api):
    p1, p2 = cluster(BROKER_PRESENCE_OFF='[{"target": "news"}]')
    tabs = [await connect(p, user(auth_api, "tb", "bob", [CHAT_ANY])) for p in (p1, p2)]
    amy = await connect(p2, user(auth_api, "ta", "amy", [CHAT_ANY]))
    for client in (*tabs, amy):
        await client.subscribe("c1", CHAT1)
    # no permission check: the backend asks for any room (here, from a third login's process)
    assert await ok(p1, "presence", {"room": CHAT1}) == {
        "room": CHAT1, "anonymous": 0,
        "members": [{"login": "amy", "profile": "agent", "connections": 1},
                    {"login": "bob", "profile": "agent", "connections": 2}]}
    assert await ok(p2, "presence_stats", {"room": CHAT1}) == {
        "room": CHAT1, "members": 2, "connections": 3}
    assert await ok(p1, "presence", {"room": CHAT2}) == {
        "room": CHAT2, "members": [], "anonymous": 0}
    r = await call(p1, "presence", {"room": NEWS})
    assert (r.status_code, r.json()["error"]) == (400, "presence-not-enabled")
    r = await call(p1, "presence_stats", {})
    assert (r.status_code, r.json()["error"]) == (400, "missing-field")


MOUNT_ARGV = ["{python}", "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}",
              "tests.mountproject.asgi:application"]


async def test_a_mounted_project_answers_through_the_django_view(broker_factory, auth_api,
                                                                 redis_server, unique):
    broker = broker_factory(
        argv=MOUNT_ARGV, ready_path="/rt/healthz", auth_api=auth_api, redis=redis_server,
        BROKER_KEY_PREFIX=f"mount-{unique}", DJANGO_SETTINGS_MODULE="tests.mountproject.settings",
        BROKER_TRIGGER_TOKEN=None)  # the project's settings.py holds the token
    bob = await connect(broker, user(auth_api, "tb", "bob"))
    assert (await call(broker, "broadcast", {"data": 1}, prefix="/rt")).status_code == 401
    r = await call(broker, "publish_to_users", {"logins": ["bob"], "data": 2}, prefix="/rt",
                   token="mounted-token")
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    assert (await bob.recv())["data"] == 2
    r = await call(broker, "broadcast", {}, prefix="/rt", token="mounted-token")
    assert (r.status_code, r.json()["error"]) == (400, "missing-field")


async def test_stomp_clients_get_messages_broadcasts_and_a_revoked_close(cluster, auth_api):
    from tests.integration.test_stomp_ws import stomp_ws

    p1, p2 = cluster()
    user(auth_api, "ts", "sam", [NEWS])
    stomp, connected = await stomp_ws(p2.ws_url, token="ts")
    assert connected.command == "CONNECTED"
    await wait_listed(p1, 1, "sam")

    sent = await ok(p1, "publish_to_users", {"logins": ["sam"], "data": {"hi": 1}})
    frame = await stomp.recv()
    assert (frame.command, frame.headers["destination"], frame.headers["message-id"]) == (
        "MESSAGE", "/agent/sam", sent["id"])
    assert "origin" not in frame.headers and json.loads(frame.body) == {"hi": 1}

    sent = await ok(p1, "broadcast", {"data": [1]})
    frame = await stomp.recv()
    assert (frame.command, frame.headers["destination"], frame.body) == (
        "MESSAGE", "/broadcast", b"[1]")
    assert "subscription" not in frame.headers

    auth_api.deny("ts")
    await ok(p1, "recheck", {"login": "sam"})
    assert await close_code(stomp.ws) == (4003, "revoked")
