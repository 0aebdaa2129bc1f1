"""Graceful shutdown (docs/operations.md "Stopping a process"): on SIGTERM the broker stops
accepting connections, delivers what it already accepted, closes every client with 1001
``going-away`` and exits within BROKER_SHUTDOWN_GRACE, under uvicorn as production runs it,
under daphne, and under ``runbroker`` (uvicorn and the TCP gate on one loop).
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from websockets.exceptions import InvalidStatus

from tests.harness import (SERVERS, UVICORN_ARGV, close_code, free_port, recv_json, send_json,
                           ws_connect, ws_open)
from tests.integration.gatehelpers import JsonLines, RawStomp

NEWS = {"target": "news"}


def start(broker_factory, auth_api, server, argv=None, **env):
    auth_api.allow(token="t", body={"allowed_rooms": [NEWS]})
    if argv is not None:
        return broker_factory(auth_api=auth_api, argv=argv, **env)
    return broker_factory(auth_api=auth_api, server=server, **env)


async def subscriber(broker, **kw):
    ws, welcome = await ws_open(broker.ws_url, token="t", **kw)
    assert welcome["is_authorized"] is True
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": 1})
    assert await recv_json(ws) == {"code": "success"}
    return ws


async def wait_exit(broker, timeout: float) -> float:
    t0 = time.monotonic()
    code = await asyncio.to_thread(broker.wait, timeout)
    assert code is not None
    return time.monotonic() - t0


@pytest.mark.parametrize("layer", ["memory", "redis"])
@pytest.mark.parametrize("server", SERVERS)
async def test_sigterm_delivers_then_closes_with_1001(broker_factory, auth_api, redis_server,
                                                      server, layer):
    broker = start(broker_factory, auth_api, server,
                   redis=redis_server if layer == "redis" else None,
                   BROKER_KEY_PREFIX=f"shutdown-{server}-{layer}")
    clients = [await subscriber(broker) for _ in range(3)]
    r = await broker.atrigger([NEWS], {"last": "words"})
    assert r.status_code == 202
    broker.terminate()  # SIGTERM right after the trigger was accepted
    for ws in clients:
        assert await recv_json(ws, timeout=10) == {"type": "publish", "requestId": 1,
                                                   "data": {"last": "words"}}
        assert await close_code(ws, timeout=10) == (1001, "going-away")
    elapsed = await wait_exit(broker, 15)
    assert elapsed < 10, elapsed
    log = broker.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("server", SERVERS)
async def test_grace_bounds_the_wait_for_a_client_that_does_not_read(broker_factory, auth_api,
                                                                     server):
    # uvicorn waits forever for a client that does not read unless --timeout-graceful-shutdown
    # bounds its own teardown, which comes after broker.shutdown's grace (production: 5 s).
    # Here it is 1 s, so that what the bound below measures is BROKER_SHUTDOWN_GRACE.
    argv = [*UVICORN_ARGV, "--timeout-graceful-shutdown", "1"] if server == "uvicorn" else None
    # an outbox large enough that the stuck client is not dropped as slow before the signal
    broker = start(broker_factory, auth_api, server, argv, BROKER_SHUTDOWN_GRACE=2,
                   BROKER_MAX_OUTBOX_BYTES=64_000_000)
    stuck = await subscriber(broker, max_queue=1)
    reader = await subscriber(broker)
    # fill the stuck client's buffers (20 MB, incompressible for uvicorn's permessage-deflate):
    # it reads nothing from now on
    payload = secrets.token_urlsafe(500_000)
    for i in range(40):
        assert (await broker.atrigger([NEWS], {"i": i, "p": f"{i}{payload}"})).status_code == 202
    for _ in range(40):
        await recv_json(reader, timeout=10)
    t0 = time.monotonic()
    broker.terminate()
    assert await close_code(reader, timeout=10) == (1001, "going-away")
    # while the grace runs, no new connection gets in
    try:
        async with ws_connect(broker.ws_url, token="t", open_timeout=3) as late:
            pytest.fail(f"connected during shutdown: {await recv_json(late)}")
    except InvalidStatus as exc:
        assert exc.response.status_code == 503
        assert bytes(exc.response.body) == b"shutting-down"
    except (OSError, TimeoutError):
        pass  # daphne stopped listening
    await wait_exit(broker, 20)
    # it waited for the stuck client up to BROKER_SHUTDOWN_GRACE (2 s), not longer
    elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 8, elapsed
    assert "still open after BROKER_SHUTDOWN_GRACE" in broker.log()
    stuck.transport.abort()


@pytest.mark.parametrize("server", SERVERS)
async def test_shutdown_without_connections_is_quick(broker_factory, auth_api, server):
    broker = start(broker_factory, auth_api, server)
    t0 = time.monotonic()
    broker.terminate()
    await wait_exit(broker, 15)
    assert time.monotonic() - t0 < 5


async def test_runbroker_closes_websocket_and_tcp_clients_with_going_away(broker_factory,
                                                                          auth_api):
    """``runbroker`` serves uvicorn and the TCP gate on one loop: SIGTERM delivers what was
    accepted, closes the WebSocket and the TCP clients alike with 1001, and the process exits."""
    tcp_port = free_port()
    broker = start(broker_factory, auth_api, None,
                   ["{python}", "manage.py", "runbroker", "--host", "127.0.0.1",
                    "--port", "{port}", "--tcp-port", str(tcp_port)])
    ws = await subscriber(broker)
    stomp = RawStomp(tcp_port)
    assert stomp.connect("t").command == "CONNECTED"
    lines = JsonLines(tcp_port)
    lines.send({"type": "connect", "token": "t"})
    assert lines.recv()["type"] == "welcome"
    r = await broker.atrigger([NEWS], {"last": "words"})
    assert r.status_code == 202
    broker.terminate()
    assert await recv_json(ws, timeout=10) == {"type": "publish", "requestId": 1,
                                               "data": {"last": "words"}}
    assert await close_code(ws, timeout=10) == (1001, "going-away")
    error = await asyncio.to_thread(stomp.recv)
    assert error.command == "ERROR" and error.headers["message"] == "going-away"
    assert await asyncio.to_thread(lines.recv) == {"type": "close", "code": 1001,
                                                   "reason": "going-away"}
    assert await asyncio.to_thread(broker.wait, 15) == 0
    log = broker.log()
    assert "Traceback" not in log, log[-3000:]
