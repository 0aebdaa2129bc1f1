"""The resume cookie (BROKER_RESUME_COOKIE, issue 15): the broker sets a rich connection's resume
token in an HttpOnly cookie on the WebSocket accept, and a reconnect that presents only that
cookie (no ``?resume=``) gets its subscriptions and the triggers it missed back.

Under uvicorn's production path (``broker.wsedge``, writing the 101 itself) and the ASGI path
(``broker.consumers``: under daphne, and under uvicorn's own WebSocket as in a project that
mounts the broker); ``Secure`` only under TLS or a trusted proxy's ``X-Forwarded-Proto``.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tests.harness import DAPHNE_ARGV, UVICORN_ARGV, expect_nothing, recv_json, send_json, ws_open
from tests.integration.test_security import self_signed

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}
HISTORY = [{"room": CHAT_ANY, "size": 100, "ttl": 60}]
BOB = {"login_id": "bob", "allowed_rooms": [CHAT_ANY]}
COOKIE = {"BROKER_RESUME_COOKIE": "true", "BROKER_RESUME_TTL": "120", "BROKER_HISTORY": HISTORY}

# uvicorn's own WebSocket implementation in front of the ASGI application (broker.consumers)
UVICORN_ASGI_ARGV = [a for a in UVICORN_ARGV if a not in ("--ws", "broker.wsedge:WebSocketEdge")]
PATHS = {"wsedge": UVICORN_ARGV, "daphne": DAPHNE_ARGV, "uvicorn-asgi": UVICORN_ASGI_ARGV}


def set_cookie(ws) -> dict[str, str] | None:
    """The resume cookie the handshake's response set, as its attributes (None: none)."""
    for value in ws.response.headers.get_all("Set-Cookie"):
        first, *rest = value.split("; ")
        name, _, token = first.partition("=")
        if name == "combroker_resume":
            return {"value": token, **{k: v for k, _, v in (a.partition("=") for a in rest)}}
    return None


async def post(broker, room: dict, data) -> None:
    r = await broker.atrigger([room], None, body={"rooms": [room], "data": data,
                                                  "history": True})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("path", PATHS)
async def test_a_reconnect_with_only_the_cookie_resumes(broker_factory, auth_api, unique, path):
    auth_api.allow_cookie("s1", body=BOB)
    broker = broker_factory(auth_api=auth_api, argv=PATHS[path], **COOKIE)
    room = {"target": "chat", "customer": unique}
    ws, welcome = await ws_open(broker.ws_url, cookie={"sessionid": "s1"}, subprotocols=RICH)
    cookie = set_cookie(ws)
    assert cookie is not None, "no resume cookie on the accept"
    assert cookie == {"value": welcome["resume_token"], "Path": "/ws/", "HttpOnly": "",
                      "SameSite": "Lax"}  # no Secure on plain ws://, no Max-Age (see docs)
    assert welcome["resume_ttl"] == 120
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": "r"})
    assert (await recv_json(ws))["code"] == "success"
    await ws.close()
    await broker.until_metric("combroker_connections", 0)  # the state is saved: now miss two
    await post(broker, room, "missed-1")
    await post(broker, room, "missed-2")

    # the browser sends the cookie back with its own: only the cookie says "resume"
    ws, welcome = await ws_open(broker.ws_url, subprotocols=RICH,
                                cookie={"sessionid": "s1", "combroker_resume": cookie["value"]})
    assert welcome["resumed"] is True
    assert welcome["subscriptions"][0]["requestId"] == "r"
    assert welcome["subscriptions"][0]["room"] == room
    assert [(await recv_json(ws))["data"] for _ in range(2)] == ["missed-1", "missed-2"]
    await expect_nothing(ws, 0.3)
    renewed = set_cookie(ws)
    assert renewed is not None and renewed["value"] == welcome["resume_token"] != cookie["value"]
    # the auth API is not told the broker's own cookie
    assert auth_api.last.cookies == {"sessionid": "s1"}
    await ws.close()


async def test_no_cookie_unless_asked(broker_factory, auth_api):
    auth_api.allow(token="bob", body=BOB)
    broker = broker_factory(auth_api=auth_api, BROKER_HISTORY=HISTORY)
    ws, welcome = await ws_open(broker.ws_url, token="bob", subprotocols=RICH)
    assert set_cookie(ws) is None and welcome["resume_token"]
    await ws.close()
    # and never for a dialect that does not resume
    on = broker_factory(auth_api=auth_api, **COOKIE)
    ws, welcome = await ws_open(on.ws_url, token="bob")
    assert set_cookie(ws) is None
    await ws.close()


async def test_secure_behind_a_trusted_https_proxy_only(broker_factory, auth_api):
    auth_api.allow(token="bob", body=BOB)
    https = {"X-Forwarded-Proto": "https"}
    trusting = [*[a for a in UVICORN_ARGV if a != "--no-proxy-headers"], "--proxy-headers",
                "--forwarded-allow-ips", "127.0.0.1"]
    proxied = broker_factory(auth_api=auth_api, argv=trusting,
                             BROKER_RESUME_COOKIE_SAMESITE="strict", **COOKIE)
    ws, _ = await ws_open(proxied.ws_url, token="bob", subprotocols=RICH, headers=https)
    assert set_cookie(ws) == {"value": set_cookie(ws)["value"], "Path": "/ws/", "HttpOnly": "",
                              "SameSite": "Strict", "Secure": ""}
    await ws.close()
    ws, _ = await ws_open(proxied.ws_url, token="bob", subprotocols=RICH)  # plain http there
    assert "Secure" not in set_cookie(ws)
    await ws.close()
    # a proxy header from an untrusted client (no --proxy-headers) changes nothing
    direct = broker_factory(auth_api=auth_api, **COOKIE)
    ws, _ = await ws_open(direct.ws_url, token="bob", subprotocols=RICH, headers=https)
    assert "Secure" not in set_cookie(ws)
    await ws.close()


async def test_secure_under_tls(broker_factory, auth_api, tmp_path):
    cert, key = self_signed(tmp_path)
    auth_api.allow(token="bob", body=BOB)
    broker = broker_factory(auth_api=auth_api, ready_path=None, **COOKIE,
                            argv=[*UVICORN_ARGV, "--ssl-keyfile", str(key),
                                  "--ssl-certfile", str(cert)])
    url = f"wss://localhost:{broker.port}/ws/"
    trusting = ssl.create_default_context(cafile=str(cert))
    ws = None
    for _ in range(50):  # the port opens before the TLS endpoint is quite ready
        try:
            ws, _welcome = await ws_open(url, token="bob", subprotocols=RICH, ssl=trusting)
            break
        except (OSError, ssl.SSLError):
            await asyncio.sleep(0.1)
    assert ws is not None, broker.log_tail()
    cookie = set_cookie(ws)
    assert cookie is not None and "Secure" in cookie and "HttpOnly" in cookie
    await ws.close()
