"""Self-checks of tests/harness.py and tests/conftest.py. They do not need the application."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time

import httpx
import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus

from tests.harness import (
    ARTIFACTS_ROOT,
    DAPHNE_ARGV,
    UVICORN_ARGV,
    AuthAPI,
    BrokerProcess,
    BrokerStartError,
    RedisServer,
    WSClosedError,
    atrigger,
    close_code,
    expect_nothing,
    free_port,
    recv_json,
    recv_many,
    recv_text,
    recv_until,
    send_json,
    trigger,
    ws_connect,
    ws_open,
)

pytestmark = pytest.mark.timeout(60)


def http() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


# ---------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# ---------------------------------------------------------------------------
# RedisServer
# ---------------------------------------------------------------------------


def test_session_redis_is_private(redis_server: RedisServer):
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.ping()
    r = redis_server.client()
    r.set("selfcheck:key", "v")
    assert r.get("selfcheck:key") == "v"
    r.delete("selfcheck:key")
    r.close()


def test_redis_stop_and_restart(fresh_redis: RedisServer):
    port = fresh_redis.port
    r = fresh_redis.client()
    r.set("k", "1")
    r.close()

    fresh_redis.stop()
    assert not fresh_redis.running
    assert fresh_redis.proc is not None and fresh_redis.proc.poll() is not None
    assert not fresh_redis.ping()
    import redis

    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(fresh_redis.url, socket_connect_timeout=1).ping()

    fresh_redis.restart()
    assert fresh_redis.port == port
    assert fresh_redis.ping()
    r = fresh_redis.client()
    assert r.get("k") is None  # nothing persisted
    r.close()
    fresh_redis.flushall()


def test_redis_freeze_thaw(fresh_redis: RedisServer):
    fresh_redis.freeze()
    assert not fresh_redis.ping(timeout=0.3)
    fresh_redis.thaw()
    assert fresh_redis.ping()


def test_redis_context_manager():
    with RedisServer() as r:
        assert r.ping()
        proc = r.proc
    assert proc is not None and proc.poll() is not None
    assert not r.dir.exists()


# ---------------------------------------------------------------------------
# AuthAPI
# ---------------------------------------------------------------------------


def test_auth_rules_and_recording(auth_api: AuthAPI):
    room = {"target": "chat", "customer": "1"}
    auth_api.allow(token="good", body={"allowed_rooms": [room], "login_id": "bob"})
    auth_api.allow_cookie(sessionid="s1", body={"allowed_rooms": [], "profile": "admin"})
    assert auth_api.url == f"http://127.0.0.1:{auth_api.port}/api/bootstrap/"

    with http() as c:
        r = c.get(auth_api.url + "?x=1&y=two", headers={"Authorization": "Token good",
                                                         "X-Real-IP": "10.0.0.9"})
        assert r.status_code == 200
        assert r.json() == {"allowed_rooms": [room], "login_id": "bob"}

        r = c.get(auth_api.url, headers={"Cookie": "csrftoken=abc; sessionid=s1"})
        assert r.status_code == 200 and r.json()["profile"] == "admin"

        r = c.get(auth_api.url, headers={"Authorization": "Token bad"})
        assert r.status_code == 403 and r.json() == {"detail": "no"}

        r = c.get(auth_api.base_url + "/other/")
        assert r.status_code == 404

    reqs = auth_api.wait_for_requests(4)
    assert len(reqs) == 4
    first = reqs[0]
    assert first.method == "GET"
    assert first.path == "/api/bootstrap/"
    assert first.query == {"x": "1", "y": "two"}
    assert first.raw_query == "x=1&y=two"
    assert first.headers["authorization"] == "Token good"
    assert first.headers["Authorization"] == "Token good"  # case-insensitive
    assert "x-real-ip" in first.headers and first.headers.get("X-REAL-IP") == "10.0.0.9"
    assert reqs[1].cookies == {"csrftoken": "abc", "sessionid": "s1"}
    assert auth_api.last.path == "/other/"


def test_auth_default_raw_and_malformed(auth_api: AuthAPI):
    auth_api.default = (500, b"<html>oops", 0.0)
    auth_api.allow(token="weird", body=b"{not json", status=200)
    auth_api.allow(authorization="Bearer xyz", body={"allowed_rooms": ["foo"]})
    auth_api.when(lambda rec: rec.headers.get("x-test") == "1", status=401, body="nope")
    with http() as c:
        r = c.get(auth_api.url)
        assert r.status_code == 500 and r.content == b"<html>oops"
        r = c.get(auth_api.url, headers={"Authorization": "Token weird"})
        assert r.status_code == 200 and r.content == b"{not json"
        r = c.get(auth_api.url, headers={"Authorization": "Bearer xyz"})
        assert r.json() == {"allowed_rooms": ["foo"]}
        r = c.get(auth_api.url, headers={"X-Test": "1"})
        assert r.status_code == 401 and r.text == "nope"
    auth_api.clear_rules()
    auth_api.default = (403, {"detail": "no"})
    with http() as c:
        assert c.get(auth_api.url, headers={"Authorization": "Token weird"}).status_code == 403


def test_auth_delay(auth_api: AuthAPI):
    auth_api.allow(token="slow", delay=0.5)
    t0 = time.monotonic()
    with http() as c:
        r = c.get(auth_api.url, headers={"Authorization": "Token slow"})
    assert r.status_code == 200
    assert time.monotonic() - t0 >= 0.45
    with http() as c, pytest.raises(httpx.ReadTimeout):
        c.get(auth_api.url, headers={"Authorization": "Token slow"}, timeout=0.1)


async def test_auth_in_flight_counts_concurrent_requests(auth_api: AuthAPI):
    auth_api.allow(token="t", delay=0.5)
    n = 30
    t0 = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
        rs = await asyncio.gather(*[
            c.get(auth_api.url, headers={"Authorization": "Token t"}) for _ in range(n)])
    assert all(r.status_code == 200 for r in rs)
    assert time.monotonic() - t0 < 3.0  # served concurrently
    assert auth_api.max_in_flight == n
    assert auth_api.in_flight == 0
    assert auth_api.count == n


def test_auth_pause_resume(auth_api: AuthAPI):
    auth_api.pause()
    results: list[int] = []

    def get():
        with http() as c:
            results.append(c.get(auth_api.url).status_code)

    threads = [threading.Thread(target=get) for _ in range(5)]
    for t in threads:
        t.start()
    auth_api.wait_for_in_flight(5)
    assert results == []
    auth_api.resume()
    for t in threads:
        t.join(5)
    assert results == [403] * 5
    assert auth_api.max_in_flight == 5


def test_auth_keepalive_connection_ids(auth_api: AuthAPI):
    with http() as c:
        c.get(auth_api.url)
        c.get(auth_api.url)
    with http() as c:
        c.get(auth_api.url)
    reqs = auth_api.requests
    assert reqs[0].connection_id == reqs[1].connection_id != reqs[2].connection_id
    assert auth_api.connections_opened == 2
    auth_api.clear()
    assert auth_api.count == 0 and auth_api.connections_opened == 0


def test_auth_stop_cuts_delayed_requests():
    api = AuthAPI()
    api.allow(token="t", delay=30)
    errors: list[BaseException] = []

    def get():
        try:
            with http() as c:
                c.get(api.url, headers={"Authorization": "Token t"})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=get)
    t.start()
    api.wait_for_in_flight(1)
    t0 = time.monotonic()
    api.stop()
    t.join(5)
    assert time.monotonic() - t0 < 5
    assert not t.is_alive()
    assert errors and isinstance(errors[0], httpx.HTTPError)
    with pytest.raises(httpx.ConnectError), http() as c:
        c.get(api.url)


# ---------------------------------------------------------------------------
# trigger helpers (against the AuthAPI stub, which records any method)
# ---------------------------------------------------------------------------


async def test_trigger_helpers(auth_api: AuthAPI):
    auth_api.when(lambda rec: rec.method == "POST", status=202, body={"id": "t1"})
    rooms = [{"target": "chat", "customer": "1"}]
    r = trigger(auth_api.base_url, "tok", rooms, {"a": 1}, path="/api/bootstrap/")
    assert r.status_code == 202 and r.json() == {"id": "t1"}
    rec = auth_api.last
    assert rec.method == "POST"
    assert rec.headers["authorization"] == "Bearer tok"
    assert rec.json() == {"rooms": rooms, "data": {"a": 1}}

    r = await atrigger(auth_api.base_url, None, rooms, 5, path="/api/bootstrap/")
    assert r.status_code == 202
    assert "authorization" not in auth_api.last.headers
    assert auth_api.last.json() == {"rooms": rooms, "data": 5}

    r = trigger(auth_api.base_url, "tok", None, None, path="/api/bootstrap/",
                body=b"{broken", scheme="Token")
    assert auth_api.last.body == b"{broken"
    assert auth_api.last.headers["authorization"] == "Token tok"


# ---------------------------------------------------------------------------
# WebSocket helpers against a tiny echo server
# ---------------------------------------------------------------------------


async def _handler(ws):
    req = ws.request
    await ws.send(json.dumps({
        "path": req.path,
        "cookie": req.headers.get("Cookie"),
        "x_extra": req.headers.get("X-Extra"),
        "origin": req.headers.get("Origin"),
        "subprotocol": ws.subprotocol,
    }))
    async for msg in ws:
        if msg == "silent":
            continue
        if isinstance(msg, str) and msg.startswith("close:"):
            _, code, reason = msg.split(":", 2)
            await ws.close(int(code), reason)
            return
        if isinstance(msg, str) and msg.startswith("burst:"):
            for i in range(int(msg.split(":")[1])):
                await ws.send(json.dumps({"i": i}))
            continue
        if msg == "bin":
            await ws.send(b"\x00\x01")
            continue
        if msg == "ping":
            await ws.send("pong")
            continue
        await ws.send(msg)


@pytest.fixture
async def echo_url():
    def pick(connection, offered):
        return next((p for p in offered if p in ("combroker.v1", "v12.stomp")), None)

    async with serve(_handler, "127.0.0.1", 0, select_subprotocol=pick) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/"


async def test_ws_connect_options(echo_url):
    async with ws_connect(echo_url, token="a b&c", cookie={"sessionid": "s1", "csrftoken": "x"},
                          headers={"X-Extra": "1"}, subprotocols=["combroker.v1"],
                          origin="http://example.test") as ws:
        hello = await recv_json(ws)
    assert hello["path"] == "/ws/?token=a+b%26c"
    assert hello["cookie"] == "sessionid=s1; csrftoken=x"
    assert hello["x_extra"] == "1"
    assert hello["origin"] == "http://example.test"
    assert hello["subprotocol"] == "combroker.v1"

    ws, hello = await ws_open(echo_url + "?a=1", token="t")
    assert hello["path"] == "/ws/?a=1&token=t" and hello["subprotocol"] is None
    await ws.close()


async def test_ws_recv_helpers(echo_url):
    ws = await ws_connect(echo_url)
    try:
        await recv_json(ws)
        await send_json(ws, {"type": "subscribe", "requestId": 1})
        assert await recv_json(ws) == {"type": "subscribe", "requestId": 1}
        await ws.send("ping")
        assert await recv_text(ws) == "pong"

        await ws.send("silent")
        await expect_nothing(ws, within=0.3)

        with pytest.raises(AssertionError, match="no WebSocket frame received within 0.2s"):
            await recv_json(ws, timeout=0.2)

        await ws.send("ping")
        with pytest.raises(AssertionError, match="expected a JSON frame"):
            await recv_json(ws)

        await ws.send("bin")
        with pytest.raises(AssertionError, match="expected a text frame"):
            await recv_text(ws)

        await ws.send("burst:5")
        assert await recv_many(ws, 3) == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert await recv_until(ws, lambda f: f == {"i": 4}) == {"i": 4}

        await send_json(ws, {"x": 1})
        with pytest.raises(AssertionError, match="expected no frame"):
            await expect_nothing(ws, within=1.0)
    finally:
        await ws.close()


async def test_ws_close_code(echo_url):
    ws = await ws_connect(echo_url)
    await recv_json(ws)
    await ws.send("burst:3")
    await ws.send("close:4003:refused")
    frames: list = []
    assert await close_code(ws, frames=frames) == (4003, "refused")
    assert len(frames) == 3

    ws = await ws_connect(echo_url)
    await recv_json(ws)
    await ws.send("close:4010:kicked")
    with pytest.raises(WSClosedError) as info:
        await recv_json(ws)
    assert info.value.code == 4010 and info.value.reason == "kicked"

    ws = await ws_connect(echo_url)
    await recv_json(ws)
    with pytest.raises(AssertionError, match="still open"):
        await close_code(ws, timeout=0.3)
    await ws.close()


async def test_ws_refused_handshake():
    async def reject(connection, request):
        return connection.respond(403, "forbidden\n")

    async with serve(_handler, "127.0.0.1", 0, process_request=reject) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(InvalidStatus) as info:
            await ws_connect(f"ws://127.0.0.1:{port}/ws/")
        assert info.value.response.status_code == 403


# ---------------------------------------------------------------------------
# BrokerProcess with a stand-in server (the real app is tested elsewhere)
# ---------------------------------------------------------------------------

FAKE_SERVER = textwrap.dedent("""
    import json, os, sys, signal
    from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({k: v for k, v in os.environ.items()
                               if k.startswith(("BROKER_", "DJANGO_"))}).encode()
            self.send_response(503 if os.environ.get("FAKE_503") else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    def term(*a):
        print("got SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    print("fake broker starting on", sys.argv[1], flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")

FAKE_ARGV = ["{python}", "-c", FAKE_SERVER, "{port}"]


def test_broker_process_lifecycle(monkeypatch):
    monkeypatch.setenv("BROKER_LEAKED", "from-shell")
    b = BrokerProcess({"BROKER_A": 1, "BROKER_B": True, "BROKER_C": ["x"], "FAKE_503": "1"},
                      argv=FAKE_ARGV)
    try:
        assert b.running
        assert b.base_url == f"http://127.0.0.1:{b.port}"
        assert b.ws_url == f"ws://127.0.0.1:{b.port}/ws/"
        r = b.get("/healthz")
        assert r.status_code == 503  # readiness accepts any HTTP answer
        env = r.json()
        assert env == {"BROKER_A": "1", "BROKER_B": "true", "BROKER_C": '["x"]',
                       "DJANGO_SETTINGS_MODULE": "combroker.settings"}
        assert "fake broker starting" in b.log() and "to stderr" in b.log()

        port, pid = b.port, b.pid
        b.restart(BROKER_A=None)
        assert b.port == port and b.pid != pid and b.starts == 2
        assert "BROKER_A" not in b.get("/healthz").json()

        assert b.stop() == 0
        assert "got SIGTERM" in b.log()
        assert not b.running

        b.start()
        b.kill()
        assert b.returncode == -signal.SIGKILL
    finally:
        b.stop()


def test_broker_process_sigkill_after_timeout():
    stubborn = ["{python}", "-c",
                "import signal, sys, http.server as h; signal.signal(signal.SIGTERM, "
                "signal.SIG_IGN); h.HTTPServer(('127.0.0.1', int(sys.argv[1])), "
                "h.BaseHTTPRequestHandler).serve_forever()", "{port}"]
    with BrokerProcess(argv=stubborn, start=False) as b:
        t0 = time.monotonic()
        assert b.stop(timeout=0.5) == -signal.SIGKILL
        assert time.monotonic() - t0 < 5


def test_broker_process_early_death_shows_output():
    argv = ["{python}", "-c",
            "import sys; print('boom on stdout'); sys.stderr.write('Traceback: boom\\n'); "
            "sys.exit(3)"]
    with pytest.raises(BrokerStartError) as info:
        BrokerProcess(argv=argv)
    msg = str(info.value)
    assert "exited early with code 3" in msg
    assert "boom on stdout" in msg and "Traceback: boom" in msg


def test_broker_process_not_ready_times_out():
    argv = ["{python}", "-c", "import time; time.sleep(60)"]
    t0 = time.monotonic()
    with pytest.raises(BrokerStartError, match="not ready"):
        BrokerProcess(argv=argv, start_timeout=1.0)
    assert time.monotonic() - t0 < 10


def test_broker_process_picks_the_server():
    """The production uvicorn command by default, daphne by name, any command by ``argv``."""
    from tests.integration.test_packaging import _production_command

    default = BrokerProcess(start=False)
    assert default.server == "uvicorn" and default.argv_template == UVICORN_ARGV
    daphne = BrokerProcess(server="daphne", start=False)
    assert daphne.server == "daphne" and daphne.argv_template == DAPHNE_ARGV
    assert BrokerProcess(argv=FAKE_ARGV, start=False).server is None
    with pytest.raises(ValueError, match="unknown server"):
        BrokerProcess(server="hypercorn", start=False)
    with pytest.raises(TypeError):
        BrokerProcess(server="daphne", argv=FAKE_ARGV, start=False)
    # the README's production command, but for the proxy headers (the tests have no proxy)
    readme = _production_command("uvicorn", "{port}")
    harness = [a for a in UVICORN_ARGV[2:] if a != "--no-proxy-headers"]
    assert harness == [a for a in readme if a != "--proxy-headers"], (harness, readme)


def test_broker_factory_wiring(broker_factory, auth_api, redis_server, fresh_redis):
    b = broker_factory(auth_api=auth_api, redis=[redis_server, fresh_redis],
                       argv=FAKE_ARGV, BROKER_AUTH_TIMEOUT=1)
    env = b.get("/healthz").json()
    assert env["BROKER_AUTH_URL"] == auth_api.url
    assert env["BROKER_REDIS_URL"] == f"{redis_server.url},{fresh_redis.url}"
    assert env["BROKER_TRIGGER_TOKEN"] == "test-token"
    assert env["BROKER_AUTH_TIMEOUT"] == "1"

    b2 = broker_factory(argv=FAKE_ARGV, BROKER_TRIGGER_TOKEN=None)
    env2 = b2.get("/healthz").json()
    assert "BROKER_REDIS_URL" not in env2 and "BROKER_TRIGGER_TOKEN" not in env2
    assert broker_factory.brokers == [b, b2]
    assert b.name == "broker1" and b2.name == "broker2"


def test_artifacts_dir(artifacts_dir):
    assert artifacts_dir.is_dir()
    assert artifacts_dir.parent == ARTIFACTS_ROOT
    assert artifacts_dir.name == "test_artifacts_dir"
    (artifacts_dir / "x.txt").write_text("ok")


def test_harness_does_not_import_django():
    import subprocess

    code = "import sys, tests.harness; assert 'django' not in sys.modules, 'django imported'"
    root = ARTIFACTS_ROOT.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True,
                   env={**os.environ, "PYTHONPATH": str(root)})
