"""Identities at the boundary (issue 11, items 2, 3 and 4), through real broker processes.

- A login is a concrete, printable value: control characters (they would split a STOMP header)
  and the wildcard ``*`` (it would turn a client room into a wildcard room) are refused with
  ``invalid-login``, whether the login comes from static keys or from the auth API's answer.
- A send destination names one client: ``/agent/*`` is ``destination-not-found``.
- Static-key logins and auth-API logins live in two realms: a static-key ``bob`` and the API's
  ``bob`` share nothing (direct messages, watches, duplicate-login policy, resume state).
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from typing import Any

import pytest

from tests.harness import close_code, expect_nothing, recv_json, send_json, ws_open
from tests.integration.gatehelpers import STATIC_KEYS, CBClient, JsonLines, start_gate

pytestmark = pytest.mark.timeout(60)

RICH = ["combroker.v1"]
INVALID_LOGIN = {"type": "refused", "is_authorized": False, "reason": "invalid-login"}
# C0 (NUL, LF, CR, ESC), DEL, C1 (NEL), the Unicode line and paragraph separators, a lone
# surrogate, and the wildcard alone and inside a login.
BAD_LOGINS = ["evil\x00ERROR", "a\nb", "a\rb", "a\x1bb", "a\x7fb", "a\x85b", "a\u2028b",
              "a\u2029b", "a\ud800b", "*", "bo*"]


def static_url(broker: Any, login: str, profile_key: str = "ak") -> str:
    query = urllib.parse.urlencode({"app_key": "app-secret", "login_id": login,
                                    "profile_key": profile_key})
    return f"{broker.ws_url}?{query}"


def metric(broker: Any, name: str, labels: str = "") -> int:
    m = re.search(rf"^{re.escape(name + labels)} (\d+)", broker.get("/metrics").text, re.M)
    return int(m.group(1)) if m else 0


async def expect_invalid_login(url: str, **kw: Any) -> None:
    ws, first = await ws_open(url, subprotocols=RICH, **kw)
    assert first == INVALID_LOGIN
    assert (await close_code(ws))[0] == 4003


async def test_static_key_logins_with_control_characters_or_wildcards_are_refused(
        broker_factory, auth_api):
    broker = broker_factory(auth_api=auth_api, **STATIC_KEYS)
    for login in BAD_LOGINS:
        if login != "a\ud800b":  # a URL carries UTF-8: no lone surrogate
            await expect_invalid_login(static_url(broker, login))
    assert metric(broker, "combroker_connections_refused_by_cause_total",
                  '{cause="invalid-login"}') == len(BAD_LOGINS) - 1
    # the TCP gate: a JSON-lines connect line (any character JSON can carry), and the
    # Communication Broker framing (its headers are not escaped: anything but NUL)
    gate = start_gate(broker_factory, auth_api=auth_api, **STATIC_KEYS)
    for login in BAD_LOGINS:
        j = JsonLines(gate.port)
        try:
            j.send({"type": "connect", "app_key": "app-secret", "login_id": login,
                    "profile_key": "ak"})
            assert await asyncio.to_thread(j.recv) == INVALID_LOGIN, login
        finally:
            j.close()
    for login in ("a\x1bb", "a\x7fb", "a\u2028b", "*"):
        cb = CBClient(gate.port)
        frame = await asyncio.to_thread(cb.connect, login, "ak")
        assert (frame.command, frame.headers["message"]) == ("ERROR", "invalid-login"), login
        assert await asyncio.to_thread(cb.closed)
    # a login that is fine is still fine: printable Unicode, spaces inside, colons
    ws, first = await ws_open(static_url(broker, "José: the ☃"), subprotocols=RICH)
    assert first["is_authorized"] is True and first["destination"] == "/agent/José: the ☃"
    await ws.close()


async def test_auth_api_logins_with_control_characters_or_wildcards_are_refused(
        broker_factory, auth_api):
    broker = broker_factory(auth_api=auth_api)
    for i, login in enumerate(BAD_LOGINS):
        # json.dumps escapes every one of them, so the API's answer is valid JSON
        auth_api.allow(token=f"t{i}", body={"login_id": login, "profile": "agent"})
        await expect_invalid_login(broker.ws_url, token=f"t{i}")
    # the API answered, wrongly: counted as a malformed answer, never as a client's fault
    assert metric(broker, "combroker_auth_total", '{outcome="malformed"}') == len(BAD_LOGINS)


async def test_a_send_to_a_wildcard_destination_is_refused(broker_factory, auth_api):
    broker = broker_factory(auth_api=auth_api)
    bob_room = {"client": "bob", "profile": "agent"}
    auth_api.allow(token="carol", body={"login_id": "carol", "profile": "super_agent",
                                        "allowed_rooms": [bob_room]})
    auth_api.allow(token="alice", body={"login_id": "alice", "profile": "agent"})
    auth_api.allow(token="bob", body={"login_id": "bob", "profile": "agent"})
    carol, _ = await ws_open(broker.ws_url, token="carol", subprotocols=RICH)
    alice, _ = await ws_open(broker.ws_url, token="alice", subprotocols=RICH)
    bob, _ = await ws_open(broker.ws_url, token="bob", subprotocols=RICH)
    try:
        # carol may watch bob only (her API rooms), not every agent
        await send_json(carol, {"type": "subscribe", "room": bob_room, "requestId": "w"})
        assert (await recv_json(carol))["code"] == "success"
        for ack in (False, True):
            await send_json(alice, {"type": "send", "to": "/agent/*", "data": "x", "ack": ack,
                                    "requestId": 1})
            reply = await recv_json(alice)
            assert (reply["code"], reply["message"]) == ("error", "destination-not-found")
        await expect_nothing(carol, 0.5)
        await expect_nothing(bob, 0.1)
        # her watch works: a message to bob reaches her
        await send_json(alice, {"type": "send", "to": "/agent/bob", "data": "y", "requestId": 2})
        assert (await recv_json(alice))["code"] == "success"
        assert (await recv_json(carol))["data"]["data"] == "y"
    finally:
        for ws in (carol, alice, bob):
            await ws.close()


# ---------------------------------------------------------------- two realms (item 4)


async def open_rich(url: str, **kw: Any) -> tuple[Any, dict[str, Any]]:
    ws, welcome = await ws_open(url, subprotocols=RICH, **kw)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def open_when_released(url: str, **kw: Any) -> tuple[Any, dict[str, Any]]:
    """Open once the broker has let go of the login's closed connection (under "reject", a
    login is refused while the broker still holds its previous connection)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while True:
        ws, first = await ws_open(url, subprotocols=RICH, **kw)
        if first.get("reason") != "duplicate-login" or loop.time() > deadline:
            assert first["type"] == "welcome", first
            return ws, first
        await close_code(ws)


async def reply_to(ws: Any, request: dict[str, Any]) -> dict[str, Any]:
    await send_json(ws, {**request, "requestId": "r"})
    return await recv_json(ws)


@pytest.mark.parametrize("layer", ["memory", "redis"])
async def test_static_key_and_api_logins_never_share_a_client(broker_factory, auth_api,
                                                             redis_server, unique, layer):
    """With both enabled (as README's com-broker run does), a static-key client calling itself
    bob is not the API's bob: no shared direct messages, watches, acknowledged messages,
    duplicate-login policy or resume state. A destination resolves in the sender's realm."""
    env: dict[str, Any] = dict(STATIC_KEYS, BROKER_DUPLICATE_LOGIN="reject")
    if layer == "redis":
        env.update(redis=redis_server, BROKER_KEY_PREFIX=f"t-{unique}")
    broker = broker_factory(auth_api=auth_api, **env)
    for login, profile in (("bob", "agent"), ("alice", "agent"), ("carol", "super_agent")):
        auth_api.allow(token=login, body={"login_id": login, "profile": profile})
    api_bob, api_welcome = await open_rich(broker.ws_url, token="bob")
    # reject: the same login in the other realm is another client, not a duplicate
    key_bob, key_welcome = await open_rich(static_url(broker, "bob"))
    api_alice, _ = await open_rich(broker.ws_url, token="alice")
    key_sue, _ = await open_rich(static_url(broker, "sue"))
    api_carol, carol_welcome = await open_rich(broker.ws_url, token="carol")
    key_carol, key_carol_welcome = await open_rich(static_url(broker, "carol", "sk"))
    everyone = [api_bob, key_bob, api_alice, key_sue, api_carol, key_carol]
    try:
        # both are shown as the contract says: /agent/bob, watching {"client":"*",...}
        assert api_welcome["destination"] == key_welcome["destination"] == "/agent/bob"
        watch = {"client": "*", "profile": "agent"}
        assert carol_welcome["allowed_rooms"] == key_carol_welcome["allowed_rooms"] == [watch]
        for ws in (api_carol, key_carol):
            assert (await reply_to(ws, {"type": "subscribe", "room": watch}))["code"] == "success"

        # API alice -> /agent/bob: the API's bob, watched by the API's super agent only
        reply = await reply_to(api_alice, {"type": "send", "to": "/agent/bob", "data": "api"})
        assert reply["code"] == "success"
        got = await recv_json(api_bob)
        assert (got["from"], got["to"], got["data"]) == ("/agent/alice", "/agent/bob", "api")
        watched = await recv_json(api_carol)
        assert watched["data"]["data"] == "api"
        assert watched["room"] == {"client": "bob", "profile": "agent"}
        # static sue -> /agent/bob: the static bob, watched by the static super agent only
        reply = await reply_to(key_sue, {"type": "send", "to": "/agent/bob", "data": "key"})
        assert reply["code"] == "success"
        got = await recv_json(key_bob)
        assert (got["from"], got["to"], got["data"]) == ("/agent/sue", "/agent/bob", "key")
        watched = await recv_json(key_carol)
        assert watched["data"]["data"] == "key"
        assert watched["room"] == {"client": "bob", "profile": "agent"}
        # a login of one realm is not a destination in the other
        reply = await reply_to(key_sue, {"type": "send", "to": "/agent/alice", "data": "x"})
        assert reply["message"] == "destination-not-found"
        reply = await reply_to(api_alice, {"type": "send", "to": "/agent/sue", "data": "x"})
        assert reply["message"] == "destination-not-found"
        for ws in everyone:
            await expect_nothing(ws, 0.2)

        # acknowledged: to the API's bob; the static bob neither gets nor confirms it
        await api_bob.close()
        reply = await reply_to(api_alice, {"type": "send", "to": "/agent/bob", "data": "ack",
                                           "ack": True})
        mid = reply["id"]
        await expect_nothing(key_bob, 0.3)
        assert (await reply_to(key_bob, {"type": "confirm", "id": mid}))["code"] == "success"
        await expect_nothing(api_alice, 0.3)  # no "confirmed": it was not static bob's
        api_bob, _ = await open_rich(broker.ws_url, token="bob")
        got = await recv_json(api_bob)
        assert (got["id"], got["data"], got["ack"]) == (mid, "ack", True)

        # resume state: a static carol's token is worthless to the API's carol, and vice
        # versa; each realm's carol takes her own back (her watch)
        await api_carol.close()
        await key_carol.close()
        for url, kw, token, resumed in (
                (broker.ws_url, {"token": "carol"}, key_carol_welcome, False),
                (static_url(broker, "carol", "sk"), {}, carol_welcome, False),
                (static_url(broker, "carol", "sk"), {}, key_carol_welcome, True),
                (broker.ws_url, {"token": "carol"}, carol_welcome, True)):
            sep = "&" if "?" in url else "?"
            ws, welcome = await open_when_released(f"{url}{sep}resume={token['resume_token']}",
                                                   **kw)
            everyone.append(ws)
            assert welcome["resumed"] is resumed, (url, welcome)
            await ws.close()
    finally:
        for ws in everyone:
            await ws.close()
