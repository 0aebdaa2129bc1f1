"""Identities at the boundary (issue 11, items 2, 3 and 4), through real broker processes.

- A login is a concrete, printable value: control characters (they would split a STOMP header)
  and the wildcard ``*`` (it would turn a client room into a wildcard room) are refused with
  ``invalid-login``, whether the login comes from static keys or from the auth API's answer.
- A send destination names one client: ``/agent/*`` is ``destination-not-found``.
- Static-key logins and auth-API logins live in two realms: a static-key ``bob`` and the API's
  ``bob`` share nothing (direct messages, watches, duplicate-login policy, resume state).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest

from tests.harness import close_code, expect_nothing, recv_json, send_json, ws_open
from tests.integration.gatehelpers import STATIC_KEYS

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
