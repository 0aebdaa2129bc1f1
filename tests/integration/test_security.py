"""Security on the public edge (docs/operations.md "Security"): the trigger token, the
WebSocket Origin allow-list, TLS (wss://), no credentials in any log line, and what the auth
API may receive (test_auth_proxy.py pins the forwarded headers one by one; here: nothing else,
whatever the client sends).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness import (
    DAPHNE_ARGV, ROOT, SERVERS, UVICORN_ARGV, close_code, free_port, recv_json, recv_text,
    send_json, wait_for_port, ws_connect, ws_open,
)

NEWS = {"target": "news"}
OK = {"login_id": "u1", "allowed_rooms": [NEWS]}


def metric(broker, name: str, labels: str = "") -> int:
    m = re.search(rf"^{re.escape(name + labels)} (\d+)", broker.get("/metrics").text, re.M)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------- the trigger token


def test_runbroker_prints_a_trigger_token_and_requires_it(tmp_path):
    """Without BROKER_TRIGGER_TOKEN, /trigger refuses every request (test_trigger.py), except
    under runbroker, which generates a token and prints it: that token, and only it, works."""
    port = free_port()
    log = tmp_path / "runbroker.log"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("BROKER_")}
    env.update(DJANGO_SETTINGS_MODULE="combroker.settings", PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "manage.py", "runbroker", "--port", str(port),
                                 "--tcp-port", "0"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, timeout=30)
        match = None
        for _ in range(100):
            match = re.search(r"trigger token (\S+)", log.read_text())
            if match:
                break
            __import__("time").sleep(0.05)
        assert match, log.read_text()
        token = match.group(1)
        assert len(token) >= 20
        url = f"http://127.0.0.1:{port}/trigger"
        body = {"rooms": [NEWS], "data": 1}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {token}x"}):
            assert httpx.post(url, json=body, headers=headers, trust_env=False).status_code == 401
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, trust_env=False)
        assert r.status_code == 202, r.text
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------- Origin


async def test_origin_allow_list(broker_factory, auth_api):
    auth_api.allow(token="t", body=OK)
    broker = broker_factory(auth_api=auth_api,
                            BROKER_ALLOWED_ORIGINS="https://app.example.com, https://*.example.org")
    for origin in ("https://app.example.com", "https://APP.example.com", "https://a.example.org",
                   None):  # no Origin: not a browser, which could claim any
        ws, welcome = await ws_open(broker.ws_url, token="t", origin=origin)
        assert welcome["is_authorized"] is True, origin
        await ws.close()
    asked = auth_api.count
    for origin in ("https://evil.example.com", "http://app.example.com", "null",
                   "https://app.example.com.evil.net", "https://example.org"):
        for subprotocols in (None, ["combroker.v1"], ["v12.stomp"]):
            ws = await ws_connect(broker.ws_url, token="t", origin=origin,
                                  subprotocols=subprotocols)
            frames: list = []
            assert await close_code(ws, frames=frames) == (1008, "origin-not-allowed"), origin
            assert frames == []
    assert auth_api.count == asked  # refused before anyone asks the auth API
    assert metric(broker, "combroker_connections_refused_by_cause_total",
                  '{cause="origin-not-allowed"}') == 15


# ---------------------------------------------------------------- TLS


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("server", SERVERS)
async def test_wss_with_a_verified_certificate(broker_factory, auth_api, tmp_path, server):
    cert, key = self_signed(tmp_path)
    auth_api.allow(token="t", body=OK)
    if server == "daphne":  # docs/operations.md "TLS"
        argv = ["{python}", "-m", "daphne", "-e",
                f"ssl:{{port}}:privateKey={key}:certKey={cert}:interface=127.0.0.1",
                "combroker.asgi:application"]
    else:
        argv = [*UVICORN_ARGV, "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]
    broker = broker_factory(auth_api=auth_api, argv=argv, ready_path=None)
    url = f"wss://localhost:{broker.port}/ws/"
    trusting = ssl.create_default_context(cafile=str(cert))
    ws = None
    for _ in range(50):  # the port opens before the TLS endpoint is quite ready
        try:
            ws, welcome = await ws_open(url, token="t", ssl=trusting)
            break
        except (OSError, ssl.SSLError):
            await asyncio.sleep(0.1)
    assert ws is not None, broker.log_tail()
    assert welcome == {"is_authorized": True, "allowed_rooms": [NEWS]}
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": 1})
    assert await recv_json(ws) == {"code": "success"}
    r = httpx.post(f"https://localhost:{broker.port}/trigger", verify=trusting, trust_env=False,
                   json={"rooms": [NEWS], "data": "over tls"},
                   headers={"Authorization": "Bearer test-token"})
    assert r.status_code == 202, r.text
    assert await recv_json(ws) == {"type": "publish", "requestId": 1, "data": "over tls"}
    await ws.close()
    # a client that does not trust the certificate refuses it
    with pytest.raises(ssl.SSLCertVerificationError):
        await ws_connect(url, token="t", ssl=ssl.create_default_context())
    # and plain ws:// gets no WebSocket on a TLS port
    with pytest.raises(Exception):  # noqa: B017 - any handshake failure will do
        await ws_connect(f"ws://127.0.0.1:{broker.port}/ws/", token="t", open_timeout=3)


# ---------------------------------------------------------------- no credentials in logs

SECRETS = {
    "token": "tokSECRET1x", "cookie": "ckSECRET2x", "csrf": "csrfSECRET3x",
    "app_key": "appSECRET4x", "profile_key": "pkSECRET5x", "trigger": "trigSECRET6x",
    "bearer": "bearerSECRET7x", "wrong_app": "wrongappSECRET8x", "wrong_trigger": "wtrigSECRET9x",
    "stomp_pass": "stompSECRET10x", "query": "querySECRET11x",
}


@pytest.mark.parametrize("server", SERVERS)
async def test_no_credentials_in_the_logs(broker_factory, auth_api, server):
    s = SECRETS
    auth_api.allow(token=s["token"], body=OK)
    auth_api.allow(authorization=f"Bearer {s['bearer']}", status=500, body=b"<html>boom")
    auth_api.allow_cookie(s["cookie"], body={"allowed_rooms": "not a list"})
    # with each server's access log on (the harness runs uvicorn without it; daphne writes it
    # by default) and its INFO lines: uvicorn logs each WebSocket's path with its query string
    argv = [*UVICORN_ARGV, "--access-log"] if server == "uvicorn" else DAPHNE_ARGV
    broker = broker_factory(
        auth_api=auth_api, argv=argv,
        BROKER_TRIGGER_TOKEN=s["trigger"], BROKER_APP_KEY=s["app_key"],
        BROKER_PROFILE_KEYS={"agent": s["profile_key"]}, BROKER_LOG_LEVEL="DEBUG")
    # connects: authorized, refused (500), malformed body, static keys right and wrong
    ws, welcome = await ws_open(broker.ws_url, token=s["token"])
    assert welcome["is_authorized"] is True
    await ws.send("ping")
    assert await recv_text(ws) == "pong"
    ws2, refused = await ws_open(broker.ws_url, headers={"Authorization": f"Bearer {s['bearer']}"})
    assert refused == {"is_authorized": False}
    ws3, refused = await ws_open(broker.ws_url, cookie=f"sessionid={s['cookie']}; csrftoken={s['csrf']}")
    assert refused == {"is_authorized": False}
    static = f"{broker.ws_url}?app_key={s['app_key']}&login_id=bob&profile_key={s['profile_key']}"
    ws4, welcome = await ws_open(static, subprotocols=["combroker.v1"])
    assert welcome["type"] == "welcome"
    wrong = f"{broker.ws_url}?app_key={s['wrong_app']}&login_id=bob&profile_key=x"
    ws5, refused = await ws_open(wrong, subprotocols=["combroker.v1"])
    assert refused["type"] == "refused"
    async with ws_connect(broker.ws_url, subprotocols=["v12.stomp"]) as stomp:
        await stomp.send(f"CONNECT\naccept-version:1.2\nlogin:bob\npasscode:{s['stomp_pass']}\n"
                         f"secret-key:{s['app_key']}\n\n\x00")
        await recv_text(stomp)
    # triggers: accepted, and refused with wrong tokens
    assert broker.trigger([NEWS], 1, token=s["trigger"]).status_code == 202
    assert broker.trigger([NEWS], 1, token=s["wrong_trigger"]).status_code == 401
    assert broker.trigger([NEWS], 1, token=s["wrong_trigger"], scheme="Token").status_code == 401
    broker.get(f"/healthz?token={s['query']}&x=1")
    # the auth API goes away: auth-unavailable
    auth_api.stop()
    ws6 = await ws_connect(broker.ws_url, token=s["token"])
    assert (await close_code(ws6, timeout=10))[0] == 1011
    await asyncio.gather(*(w.close() for w in (ws, ws2, ws3, ws4, ws5)))
    await asyncio.sleep(0.5)  # let the last log lines out
    log = broker.log()
    assert "/ws/" in log or "WebSocket" in log, log[-2000:]
    leaked = {name: value for name, value in s.items() if value in log}
    assert not leaked, (leaked, log[-4000:])
    # the lines are still there, with the credential replaced
    assert "token=***" in log, log[-3000:]


# ---------------------------------------------------------------- what the auth API receives

# What any request of the pooled client carries on its own (httpx), beside the §2.1 headers.
TRANSPORT_HEADERS = {"host", "accept", "accept-encoding", "connection"}


async def test_auth_api_receives_nothing_the_client_did_not_send(broker_factory, auth_api):
    auth_api.default = (200, OK)
    broker = broker_factory(auth_api=auth_api, BROKER_AUTH_FORWARD_HEADERS="X-Tenant")
    hostile = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6",
               "X-CSRFToken": "forged", "Proxy-Authorization": "Basic x", "X-Api-Key": "k",
               "Referer": "https://evil.example/", "X-Tenant-Other": "no"}
    ws, welcome = await ws_open(broker.ws_url, token="t1", headers=hostile,
                                user_agent_header=None, origin="https://app.example")
    assert welcome["is_authorized"] is True
    await ws.close()
    rec = auth_api.last
    assert set(rec.headers) - TRANSPORT_HEADERS == {"authorization", "x-real-ip"}, rec.headers
    assert rec.headers["x-real-ip"] == "127.0.0.1"
    assert (rec.raw_query, rec.body) == ("", b"")

    # a forward-listed header the client did not send is not made up; one it sent is passed
    auth_api.clear()
    ws, _ = await ws_open(broker.ws_url, token="t2", user_agent_header=None,
                          headers={"X-Tenant": "acme"})
    await ws.close()
    assert set(auth_api.last.headers) - TRANSPORT_HEADERS == {"authorization", "x-real-ip",
                                                              "x-tenant"}

    # CR/LF in a token cannot add a header
    auth_api.clear()
    ws = await ws_connect(broker.ws_url + "?token=abc%0d%0aX-Evil:%201")
    await close_code(ws, timeout=10)  # refused or auth-unavailable: either way, closed
    for rec in auth_api.requests:
        assert "x-evil" not in rec.headers

    # STOMP: cookie/authorization/token (and forward-listed names) become headers; host,
    # heart-beat, accept-version never do
    auth_api.clear()
    async with ws_connect(broker.ws_url, subprotocols=["v12.stomp"],
                          user_agent_header=None) as stomp:
        await stomp.send("CONNECT\naccept-version:1.2\nhost:h\nheart-beat:0,0\n"
                         "token:t3\nx-tenant:acme\n\n\x00")
        assert (await recv_text(stomp)).startswith("CONNECTED\n")
    rec = auth_api.last
    # x-tenant: the client sent it (a CONNECT header) and it is forward-listed
    assert set(rec.headers) - TRANSPORT_HEADERS == {"authorization", "x-real-ip", "x-tenant"}
    assert (rec.headers["authorization"], rec.headers["host"]) == (
        "Token t3", f"127.0.0.1:{auth_api.port}")

    # static-key logins never reach the auth API
    auth_api.clear()
    ws, refused = await ws_open(broker.ws_url + "?app_key=a&login_id=bob&profile_key=p")
    assert refused == {"is_authorized": False}
    assert auth_api.count == 0


# ---------------------------------------------------------------- structured logs


async def test_log_lines_carry_the_connection_id(broker_factory, auth_api):
    auth_api.allow(token="t", body=OK)
    broker = broker_factory(auth_api=auth_api, BROKER_RATE_LIMIT=0.1, BROKER_RATE_BURST=1)
    ws, welcome = await ws_open(broker.ws_url, token="t", subprotocols=["combroker.v1"])
    conn_id = welcome["connection_id"]
    for rid in range(4):
        await send_json(ws, {"type": "ping", "requestId": rid})
    assert await close_code(ws) == (4029, "rate-limited")
    # a line logged in the connection's own task, and one logged outside any connection
    auth_api.stop()
    ws = await ws_connect(broker.ws_url, token="t")
    assert (await close_code(ws, timeout=10))[0] == 1011
    log = broker.wait_for_log("auth API unavailable")
    assert re.search(rf" broker\.connection conn={conn_id} .*over BROKER_RATE_LIMIT", log), log
    assert re.search(r" broker\.auth conn=[0-9a-f]{16} auth API unavailable", log), log
    for line in log.splitlines():
        # (the harness's "--- broker1 start" line names the server's command, not a logger)
        if " broker." in line and not line.startswith("--- "):
            assert re.search(r" broker\.[a-z_.]+ conn=([0-9a-f]{16}|-) ", line), line
