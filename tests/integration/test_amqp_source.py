"""The AMQP trigger source (issue 17, broker.amqpsource) against a real RabbitMQ.

One private rabbitmq-server for the module (tests/rabbitmq.py: Debian's, on free ports, about
10 s to start), real broker processes, real Redis, real WebSockets:

- High-templar 3.1.0's own tests that trigger through RabbitMQ (tests/vendor/high_templar),
  with its pika trigger helper unchanged, pass against the broker;
- a broker process SIGKILLed while it consumes a burst loses nothing: every number reaches the
  subscriber on the other process exactly once, live and from history;
- a message that is not a trigger is counted and dead-lettered, never retried;
- RabbitMQ stopped shows in /healthz and /metrics, and consumption resumes once it is back
  (this one stops the module's server: it runs last).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import unittest
from collections import Counter

import aio_pika
import pytest

from tests.harness import ROOT, _broker_env, expect_nothing, recv_json, send_json, ws_open
from tests.rabbitmq import RabbitMQServer

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}
HISTORY = [{"room": CHAT_ANY, "size": 5000, "ttl": 120}]
AGENT = {"login_id": "agent", "allowed_rooms": [CHAT_ANY]}


@pytest.fixture(scope="module")
def rabbitmq():
    with RabbitMQServer() as server:
        yield server


def source_env(rabbitmq: RabbitMQServer, unique: str, **kw) -> dict:
    """A source on an exchange and a queue of this test's own."""
    return {"BROKER_AMQP_URL": rabbitmq.url, "BROKER_AMQP_EXCHANGE": f"ht-{unique}",
            "BROKER_AMQP_QUEUE": f"triggers-{unique}", **kw}


async def until_health(broker, amqp: bool, timeout: float = 30.0) -> tuple[int, dict]:
    """Wait until the broker's /healthz says ``"amqp": amqp``; returns its status and body."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await asyncio.to_thread(broker.get, "/healthz")
        if r.json().get("amqp") is amqp:
            return r.status_code, r.json()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/healthz is {r.json()}, not amqp={amqp}:\n"
                                 f"{broker.log_tail()}")
        await asyncio.sleep(0.1)


def dead_lettered(broker, cause: str) -> float:
    text = broker.get("/metrics").text
    found = re.search(rf'^combroker_amqp_dead_lettered_total{{cause="{cause}"}} (\S+)$', text,
                      re.M)
    return 0.0 if found is None else float(found.group(1))


async def publisher(url: str, exchange: str):
    """A connection and High-templar's exchange, as its backends declare it."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    return connection, channel, await channel.declare_exchange(exchange)


async def subscribe(ws, rid, room, **extra) -> dict:
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": rid, **extra})
    reply = await recv_json(ws)
    assert reply["code"] == "success", reply
    return reply


# ---- High-templar's own tests


def _unskipped(suite: unittest.TestSuite) -> unittest.TestSuite:
    """The suite without the tests High-templar marks ``pytest.mark.skip`` (unittest does not
    read pytest's marks)."""
    kept = unittest.TestSuite()
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            kept.addTest(_unskipped(test))
            continue
        marks = getattr(getattr(test, test._testMethodName), "pytestmark", [])
        if not any(m.name == "skip" for m in marks):
            kept.addTest(test)
    return kept


def test_high_templar_suite_passes_with_its_trigger_helper_unchanged(
        rabbitmq, broker_factory, auth_api, unique, monkeypatch):
    broker = broker_factory(auth_api=auth_api, BROKER_AMQP_URL=rabbitmq.url,
                            BROKER_AMQP_QUEUE=f"triggers-{unique}")  # exchange: hightemplar
    asyncio.run(until_health(broker, True))
    # What the suite imports as ``settings``; pika (its helper) connects to DEFAULT_PORT.
    settings = types.ModuleType("settings")
    settings.WS_URI = broker.ws_url
    settings.RABBITMQ = {"exchange_name": "hightemplar", "username": "guest",
                         "password": "guest", "host": "127.0.0.1"}
    settings.AUTH_API = auth_api
    monkeypatch.setitem(sys.modules, "settings", settings)
    import pika

    monkeypatch.setattr(pika.ConnectionParameters, "DEFAULT_PORT", rabbitmq.port)
    package = "tests.vendor.high_templar.tests"
    names = [f"{package}.test_messages", f"{package}.test_subscribe"]
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the suite runs asyncio.get_event_loop().run_until_complete
    try:
        modules = [importlib.import_module(name) for name in names]
        suite = _unskipped(unittest.TestSuite(
            unittest.defaultTestLoader.loadTestsFromModule(m) for m in modules))
        out = io.StringIO()
        result = unittest.TextTestRunner(stream=out, verbosity=2).run(suite)
    finally:
        loop.close()
        asyncio.set_event_loop(None)
        helper = sys.modules.get(f"{package}.utils.rabbitmq")
        if helper is not None:
            helper.connection.close()
        for name in [n for n in sys.modules if n.startswith(package)]:
            del sys.modules[name]
    assert result.testsRun == 7, out.getvalue()
    assert result.wasSuccessful(), out.getvalue() + broker.log_tail()


# ---- nothing lost when a consumer dies


async def test_a_consumer_sigkilled_mid_burst_loses_no_trigger(
        rabbitmq, broker_factory, auth_api, fresh_redis, unique):
    auth_api.allow("agent", body=AGENT)
    env = source_env(rabbitmq, unique, BROKER_HISTORY=HISTORY, BROKER_AMQP_PREFETCH=20)
    doomed = broker_factory(auth_api=auth_api, redis=fresh_redis, name="doomed", **env)
    survivor = broker_factory(auth_api=auth_api, redis=fresh_redis, name="survivor", **env)
    await until_health(doomed, True)
    await until_health(survivor, True)
    room = {"target": "chat", "customer": unique}
    ws, _ = await ws_open(survivor.ws_url, token="agent", subprotocols=RICH)
    await subscribe(ws, "live", room)

    n = 2000
    connection, _, exchange = await publisher(rabbitmq.url, f"ht-{unique}")
    got: Counter[int] = Counter()

    async def receive() -> None:
        while len(got) < n:
            frame = await recv_json(ws, timeout=30)
            got[frame["data"]["n"]] += 1

    # The burst waits in the queue while both processes are stopped: they take it up at full
    # speed, each holding BROKER_AMQP_PREFETCH messages it has not acknowledged.
    for proc in (doomed, survivor):
        os.kill(proc.pid, signal.SIGSTOP)
    try:
        for i in range(n):
            body = json.dumps({"rooms": [room], "data": {"n": i}, "history": True}).encode()
            await exchange.publish(aio_pika.Message(body, message_id=f"burst-{unique}-{i}"),
                                   routing_key="*")
    finally:
        for proc in (doomed, survivor):
            os.kill(proc.pid, signal.SIGCONT)
    receiving = asyncio.create_task(receive())
    while (await asyncio.to_thread(doomed.metric, "combroker_amqp_published_total") or 0) < 50:
        await asyncio.sleep(0.01)
    doomed.kill()  # SIGKILL while it consumes
    assert len(got) < n // 2, "the burst was over before the kill"
    await connection.close()
    await asyncio.wait_for(receiving, 60)
    assert sorted(got) == list(range(n))
    assert set(got.values()) == {1}, [k for k, v in got.items() if v > 1]  # live: once each

    # History: each recorded once, whichever process published it, however often.
    ws2, _ = await ws_open(survivor.ws_url, token="agent", subprotocols=RICH)
    reply = await subscribe(ws2, "again", room, since=0)  # all the room holds
    assert reply["recovered"] is True
    replayed = [await recv_json(ws2) for _ in range(n)]
    assert sorted(f["data"]["n"] for f in replayed) == list(range(n))
    offsets = sorted(f["offset"] for f in replayed)
    assert offsets == list(range(offsets[0], offsets[0] + n))  # no offset taken twice
    assert reply["offset"] == offsets[-1]
    await expect_nothing(ws2)


# ---- not a trigger: counted, dead-lettered, never retried


async def test_malformed_messages_are_counted_and_dead_lettered(
        rabbitmq, broker_factory, auth_api, fresh_redis, unique):
    auth_api.allow("agent", body=AGENT)
    broker = broker_factory(auth_api=auth_api, redis=fresh_redis,
                            **source_env(rabbitmq, unique, BROKER_MAX_TRIGGER_BYTES=4096))
    await until_health(broker, True)
    room = {"target": "chat", "customer": unique}
    ws, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    await subscribe(ws, "s", room)
    connection, channel, exchange = await publisher(rabbitmq.url, f"ht-{unique}")
    bad = [b"not json", b"[1, 2]", json.dumps({"rooms": "chat", "data": 1}).encode(),
           json.dumps({"rooms": [room]}).encode(), b'{"rooms": [], "data": "x"}',
           json.dumps({"rooms": [room], "data": "x" * 5000}).encode()]
    for body in bad:
        await exchange.publish(aio_pika.Message(body), routing_key="*")
    good = json.dumps({"rooms": [room], "data": "after the bad ones"}).encode()
    await exchange.publish(aio_pika.Message(good), routing_key="*")
    frame = await recv_json(ws, timeout=10)
    assert frame["data"] == "after the bad ones"  # the bad ones delivered nothing

    dead = await channel.declare_queue(f"triggers-{unique}.dead", passive=True)
    bodies = []
    for _ in range(100):
        message = await dead.get(fail=False)
        if message is not None:
            bodies.append(message.body)
            await message.ack()
        elif len(bodies) == len(bad):
            break
        else:
            await asyncio.sleep(0.05)
    assert sorted(bodies) == sorted(bad)
    assert await asyncio.to_thread(dead_lettered, broker, "not-json") == 1
    assert await asyncio.to_thread(dead_lettered, broker, "not-a-trigger") == 4
    assert await asyncio.to_thread(dead_lettered, broker, "too-large") == 1
    queue = await channel.declare_queue(f"triggers-{unique}", passive=True)
    assert queue.declaration_result.message_count == 0  # nothing left to retry
    await connection.close()


# ---- SIGTERM: the source stops with the process, leaving the queue to the others


async def test_sigterm_stops_the_source_and_leaves_what_comes_next_in_the_queue(
        rabbitmq, broker_factory, auth_api, fresh_redis, unique):
    broker = broker_factory(auth_api=auth_api, redis=fresh_redis,
                            **source_env(rabbitmq, unique))
    await until_health(broker, True)
    broker.terminate()
    assert await asyncio.to_thread(broker.wait, 20) is not None
    assert "amqp source: stopped" in broker.log()  # by graceful_shutdown, not by the exit
    assert "amqp source failed" not in broker.log()
    assert "Traceback" not in broker.log(), broker.log_tail()
    connection, channel, exchange = await publisher(rabbitmq.url, f"ht-{unique}")
    queue = await channel.declare_queue(f"triggers-{unique}", passive=True)
    assert queue.declaration_result.consumer_count == 0  # its consumer is gone
    await exchange.publish(aio_pika.Message(b'{"rooms": [{"target": "x"}], "data": 1}'),
                           routing_key="*")
    message = await queue.get(timeout=5)  # kept for the next consumer
    assert message.body == b'{"rooms": [{"target": "x"}], "data": 1}'
    await connection.close()


# ---- manage.py runamqpsource: the source in a process of its own


async def test_runamqpsource_consumes_for_brokers_that_do_not(
        rabbitmq, broker_factory, auth_api, fresh_redis, unique, tmp_path):
    auth_api.allow("agent", body=AGENT)
    env = source_env(rabbitmq, unique, BROKER_AMQP_IN_BROKER=False)
    broker = broker_factory(auth_api=auth_api, redis=fresh_redis, **env)
    assert broker.get("/healthz").json() == {"status": "ok", "redis": True}  # no source here
    room = {"target": "chat", "customer": unique}
    ws, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    await subscribe(ws, "s", room)
    log_path = tmp_path / "runamqpsource.log"
    with open(log_path, "wb") as log:
        command = subprocess.Popen(
            [sys.executable, "manage.py", "runamqpsource"], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=_broker_env({**env, "BROKER_REDIS_URL": fresh_redis.url}))
    try:
        deadline = time.monotonic() + 20
        while b"amqp source: consuming" not in log_path.read_bytes():
            assert command.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        connection, _, exchange = await publisher(rabbitmq.url, f"ht-{unique}")
        body = json.dumps({"rooms": [room], "data": "from the command"}).encode()
        await exchange.publish(aio_pika.Message(body), routing_key="*")
        assert (await recv_json(ws, timeout=10))["data"] == "from the command"
        await connection.close()
        command.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(command.wait, 10) == 0, log_path.read_text()
    finally:
        if command.poll() is None:
            command.kill()
            command.wait(5)


# ---- RabbitMQ down: reported, and consumption resumes (stops the module's server: last)


async def test_an_outage_shows_in_healthz_and_metrics_and_consumption_resumes(
        rabbitmq, broker_factory, auth_api, fresh_redis, unique):
    auth_api.allow("agent", body=AGENT)
    broker = broker_factory(auth_api=auth_api, redis=fresh_redis,
                            **source_env(rabbitmq, unique, BROKER_AMQP_RETRY_MAX=1))
    assert await until_health(broker, True) == (200, {"status": "ok", "redis": True,
                                                      "amqp": True})
    assert broker.metric("combroker_amqp_connected") == 1
    room = {"target": "chat", "customer": unique}
    ws, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    await subscribe(ws, "s", room)

    await asyncio.to_thread(rabbitmq.stop)
    try:
        # Still serving its clients: 200, "degraded", with the source's state.
        assert await until_health(broker, False) == (200, {"status": "degraded", "redis": True,
                                                           "amqp": False})
        assert broker.metric("combroker_amqp_connected") == 0
    finally:
        await asyncio.to_thread(rabbitmq.start)
    assert await until_health(broker, True) == (200, {"status": "ok", "redis": True,
                                                      "amqp": True})
    connection, _, exchange = await publisher(rabbitmq.url, f"ht-{unique}")
    body = json.dumps({"rooms": [room], "data": "after the outage"}).encode()
    await exchange.publish(aio_pika.Message(body), routing_key="*")
    assert (await recv_json(ws, timeout=10))["data"] == "after the outage"
    await connection.close()
