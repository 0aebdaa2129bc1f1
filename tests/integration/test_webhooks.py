"""Webhook delivery (issue 14): the queue on a real Redis, the dispatcher POSTing to a real HTTP
receiver on 127.0.0.1, and the wiring in a real broker process.

Backoffs and timeouts are small (constructor arguments) so the tests are quick; every wait is
for something the test can see (a request received, a counter, the queue's length), and no
assertion is about timing.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from broker import metrics
from broker.httppool import HttpError, HttpPool
from broker.signature import verify
from broker.stores.redis import RedisClient
from broker.stores.webhooks import MemoryWebhookQueue, RedisWebhookQueue
from broker.webhooks import WebhookDispatcher
from tests.harness import BrokerStartError, free_port

SECRET = "whsec_integration"
FAST = {"timeout": 0.5, "retry_min": 0.02, "retry_max": 0.1, "lease_ttl": 1.0, "poll": 0.02}


# ------------------------------------------------------------------------ the receiver


class Received:
    __slots__ = ("body", "headers", "status")

    def __init__(self, headers: dict[str, str], body: bytes, status: int) -> None:
        self.headers, self.body, self.status = headers, body, status

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in json.loads(self.body)["events"]]


class Receiver:
    """A backend's webhook endpoint: records every POST; answers the statuses queued with
    ``answer`` first, then 200."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/combroker/"
        self.requests: list[Received] = []
        self._statuses: list[int] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.before_answer: Callable[[Received], None] | None = None  # in the server's thread

    def answer(self, *statuses: int) -> None:
        with self._lock:
            self._statuses.extend(statuses)

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    status = receiver._statuses.pop(0) if receiver._statuses else 200
                    received = Received(dict(self.headers), body, status)
                    receiver.requests.append(received)
                if receiver.before_answer is not None:
                    receiver.before_answer(received)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def acked(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def acked_ids(self) -> list[str]:
        return [i for r in self.acked() for i in r.ids]


async def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


async def until_async(predicate: Callable[[], Any], timeout: float = 20.0,
                      what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def events(ids: Iterable[int], at: float | None = None) -> list[dict[str, Any]]:
    stamp = time.time() if at is None else at
    return [{"id": f"e{i}", "type": "online", "at": stamp, "login": f"user{i}"} for i in ids]


def ids(numbers: Iterable[int]) -> list[str]:
    return [f"e{i}" for i in numbers]


def first_seen(received: list[str]) -> list[str]:
    """The ids in order of their first delivery (a receiver's dedupe by id)."""
    seen: dict[str, None] = {}
    for i in received:
        seen.setdefault(i, None)
    return list(seen)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
async def redis_prefix(redis_server: Any) -> AsyncIterator[Callable[[int], RedisWebhookQueue]]:
    """Queues on one Redis under one fresh prefix: each call is another process's client."""
    prefix = f"hooks-{uuid.uuid4().hex[:8]}"
    clients: list[RedisClient] = []

    def make(max_pending: int = 100_000) -> RedisWebhookQueue:
        client = RedisClient(redis_server.url, prefix)
        clients.append(client)
        return RedisWebhookQueue(client, max_pending)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(params=["redis", "memory"])
def any_queue(request: pytest.FixtureRequest,
              redis_prefix: Callable[[int], RedisWebhookQueue]) -> Callable[[int], Any]:
    """A queue maker: a Redis one (under a fresh prefix) or the memory twin."""
    return MemoryWebhookQueue if request.param == "memory" else redis_prefix


def check_signed(r: Received) -> None:
    assert r.headers["Content-Type"] == "application/json"
    uuid.UUID(r.headers["X-Combroker-Delivery"])
    verify(r.body, r.headers["X-Combroker-Timestamp"], r.headers["X-Combroker-Signature"],
           SECRET)


# ------------------------------------------------------------------------ (a) in order, signed


async def test_delivered_in_order_in_signed_batches(any_queue: Any, receiver: Receiver) -> None:
    queue = any_queue(100_000)
    assert await queue.push(events(range(250))) == 250
    delivered = metrics.counters["webhook_delivered"]
    started = time.time()
    dispatcher = WebhookDispatcher(queue, receiver.url, SECRET, batch=100, **FAST)
    dispatcher.start()
    try:
        await until(lambda: len(receiver.acked_ids()) >= 250, what="250 events")
        await until_async(lambda: _empty(queue), what="the queue drained")
        await until(lambda: metrics.gauges["webhook_pending"] == 0, what="the gauge at 0")
        assert metrics.counters["webhook_delivered"] == delivered + 250
        assert metrics.gauges["webhook_last_success_timestamp_seconds"] >= started
        await queue.push(events(range(250, 260)))
        await until(lambda: len(receiver.acked_ids()) >= 260, what="10 more")
    finally:
        await dispatcher.stop()
    assert receiver.acked_ids() == ids(range(260))
    assert [len(r.ids) for r in receiver.requests] == [100, 100, 50, 10]
    for r in receiver.requests:
        check_signed(r)
        assert json.loads(r.body)["events"][0]["type"] == "online"
    assert len({r.headers["X-Combroker-Delivery"] for r in receiver.requests}) == 4
    assert not dispatcher.holding  # released at the stop


async def _empty(queue: Any) -> bool:
    return bool(await queue.pending() == 0)


# ------------------------------------------------------------------------ (b) down, 500, 200


async def test_receiver_down_then_failing_then_up(redis_prefix: Any) -> None:
    queue = redis_prefix()
    receiver = Receiver()  # its port is closed until it starts
    failed = metrics.counters["webhook_failed"]
    dispatcher = WebhookDispatcher(queue, receiver.url, SECRET, batch=7, **FAST)
    dispatcher.start()
    try:
        await queue.push(events(range(20)))
        await until(lambda: metrics.counters["webhook_failed"] >= failed + 3,
                    what="three refused connections")
        await queue.push(events(range(20, 30)))
        receiver.answer(500, 503, 500)
        receiver.start()
        await until(lambda: len(receiver.requests) >= 2, what="the first 5xx answers")
        await queue.push(events(range(30, 40)))
        await until(lambda: len(set(receiver.acked_ids())) >= 40, what="every event")
        await until_async(lambda: _empty(queue), what="the queue drained")
    finally:
        await dispatcher.stop()
        receiver.stop()
    statuses = [r.status for r in receiver.requests]
    assert statuses[:3] == [500, 503, 500] and set(statuses[3:]) == {200}
    # every event, in order, exactly once after dedupe by id; in fact exactly once
    assert first_seen(receiver.acked_ids()) == ids(range(40))
    assert receiver.acked_ids() == ids(range(40))
    # a batch a 2xx acknowledged is never sent again (in any request, acknowledged or not)
    acked: set[str] = set()
    for r in receiver.requests:
        assert not acked & set(r.ids), "an acknowledged event was sent again"
        if r.status == 200:
            acked |= set(r.ids)
    for r in receiver.requests:
        check_signed(r)
    assert metrics.counters["webhook_failed"] >= failed + 6


# ------------------------------------------------------------------------ (c) a restart


async def test_a_new_dispatcher_finishes_after_a_stop(redis_prefix: Any,
                                                     receiver: Receiver) -> None:
    await redis_prefix().push(events(range(300)))
    first = WebhookDispatcher(redis_prefix(), receiver.url, SECRET, batch=20, **FAST)
    first.start()
    await until(lambda: len(receiver.acked()) >= 2, what="two batches")
    await first.stop()  # a broker restart: graceful
    sent_by_first = len(receiver.acked_ids())
    assert sent_by_first < 300, "the first one sent everything: nothing left to take over"
    second = WebhookDispatcher(redis_prefix(), receiver.url, SECRET, batch=20, **FAST)
    second.start()
    try:
        await until(lambda: len(receiver.acked_ids()) >= 300, what="all 300")
        await until_async(lambda: _empty(second.queue), what="the queue drained")
    finally:
        await second.stop()
    assert receiver.acked_ids() == ids(range(300))  # nothing lost, nothing twice


async def test_a_dead_holder_loses_the_lease_and_another_takes_over(
        redis_prefix: Any, receiver: Receiver) -> None:
    queue = redis_prefix()
    await queue.push(events(range(200)))
    first = WebhookDispatcher(redis_prefix(), receiver.url, SECRET, batch=20, **FAST)
    first.start()
    await until(lambda: len(receiver.acked()) >= 2, what="two batches")
    # the process dies: its task ends where it stands, the lease is not given back
    assert first._task is not None
    first._task.cancel()
    dying = first._task
    await until(dying.done, timeout=10, what="the cancelled dispatcher to end")
    assert dying.cancelled()
    first._task = None
    second = WebhookDispatcher(redis_prefix(), receiver.url, SECRET, batch=20, **FAST)
    second.start()
    try:
        await until(lambda: set(receiver.acked_ids()) >= set(ids(range(200))), what="all 200")
        await until_async(lambda: _empty(queue), what="the queue drained")
    finally:
        await second.stop()
    # in order after dedupe by id (a batch acknowledged just as the first died may come again)
    assert first_seen(receiver.acked_ids()) == ids(range(200))


async def test_a_2xx_whose_removal_found_the_lease_lost_is_not_sent_again(
        redis_prefix: Any, redis_server: Any, receiver: Receiver) -> None:
    """The lease vanishes while a batch is in flight (as after a Redis restart): the removal
    after the 2xx is refused; once the lease is taken again the acknowledged batch at the head
    is removed, not sent again."""
    queue = redis_prefix()
    await queue.push(events(range(10)))
    lease = queue.client.key("hooks", "lease")
    sync = redis_server.client()

    def lose_the_lease(r: Received) -> None:
        if len(receiver.requests) == 1:
            sync.delete(lease)

    receiver.before_answer = lose_the_lease
    dispatcher = WebhookDispatcher(queue, receiver.url, SECRET, batch=4, **FAST)
    dispatcher.start()
    try:
        await until(lambda: len(receiver.acked_ids()) >= 10, what="all 10")
        await until_async(lambda: _empty(queue), what="the queue drained")
    finally:
        await dispatcher.stop()
        sync.close()
    assert receiver.acked_ids() == ids(range(10))


# ------------------------------------------------------------------------ (d) two at once


async def test_two_dispatchers_on_one_redis_send_nothing_twice(redis_prefix: Any,
                                                               receiver: Receiver) -> None:
    pusher = redis_prefix()
    one = WebhookDispatcher(redis_prefix(), receiver.url, SECRET, batch=10, **FAST)
    two = WebhookDispatcher(redis_prefix(), receiver.url, SECRET, batch=10, **FAST)
    one.start()
    two.start()
    try:
        for n in range(0, 300, 15):  # pushed while both run
            await pusher.push(events(range(n, n + 15)))
            await asyncio.sleep(0)
        await until(lambda: len(receiver.acked_ids()) >= 300, what="all 300")
        await until_async(lambda: _empty(pusher), what="the queue drained")
        assert [one.holding, two.holding].count(True) == 1
    finally:
        await one.stop()
        await two.stop()
    received = [i for r in receiver.requests for i in r.ids]
    assert received == ids(range(300))  # every request 2xx: none twice, in order


# ------------------------------------------------------------------------ (e) the bound


async def test_the_bound_refuses_counts_and_logs_once_per_burst(
        any_queue: Any, caplog: pytest.LogCaptureFixture) -> None:
    queue = any_queue(10)
    full = metrics.webhook_drops["full"]
    with caplog.at_level(logging.WARNING, logger="broker.webhooks"):
        assert await queue.push(events(range(7))) == 7
        assert await queue.push(events(range(7, 14))) == 3
        assert await queue.push(events(range(14, 15))) == 0
        assert await queue.pending() == 10
        assert metrics.webhook_drops["full"] == full + 5
        assert [e["id"] for e in await queue.peek(20)] == ids(range(10))
        assert len([r for r in caplog.records if "full" in r.getMessage()]) == 1
        # drained a little, it accepts again (and says so); a new burst is logged again
        assert await queue.lease("t", 5.0)
        assert await queue.remove("t", 4)
        assert await queue.push(events(range(15, 17))) == 2
        assert await queue.push(events(range(17, 22))) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "full" in m]) == 2
    assert len([m for m in messages if "accepting events again; 5 were refused" in m]) == 1
    assert metrics.webhook_drops["full"] == full + 8
    assert [e["id"] for e in await queue.peek(20)] == ids([4, 5, 6, 7, 8, 9, 15, 16, 17, 18])


async def test_the_lease_and_the_removal_belong_to_one_token(any_queue: Any) -> None:
    queue = any_queue(100)
    await queue.push(events(range(5)))
    assert await queue.lease("a", 5.0) and await queue.lease("a", 5.0)  # taken, renewed
    assert not await queue.lease("b", 5.0)
    assert not await queue.remove("b", 5)  # not the holder: nothing removed
    assert await queue.pending() == 5
    await queue.release("b")  # not the holder: still a's
    assert not await queue.lease("b", 5.0)
    await queue.release("a")
    assert await queue.lease("b", 0.05)
    assert not await queue.remove("a", 1)
    await until_async(lambda: queue.lease("a", 5.0), what="b's lease to expire")
    assert await queue.remove("a", 2)
    assert [e["id"] for e in await queue.peek(10)] == ids(range(2, 5))


# ------------------------------------------------------------------------ (f) too old


async def test_events_older_than_max_age_are_dropped_and_counted(
        redis_prefix: Any, receiver: Receiver) -> None:
    queue = redis_prefix()
    expired = metrics.webhook_drops["expired"]
    old = time.time() - 1000
    # a whole batch of old ones (never POSTed), then old and fresh mixed
    await queue.push(events(range(0, 5), at=old))
    await queue.push(events(range(5, 8)) + events(range(8, 10), at=old) + events(range(10, 13)))
    dispatcher = WebhookDispatcher(queue, receiver.url, SECRET, batch=5, max_age=100.0, **FAST)
    dispatcher.start()
    try:
        await until_async(lambda: _empty(queue), what="the queue drained")
        await until(lambda: metrics.webhook_drops["expired"] >= expired + 7,
                    what="7 counted")
    finally:
        await dispatcher.stop()
    assert receiver.acked_ids() == ids([5, 6, 7, 10, 11, 12])
    assert metrics.webhook_drops["expired"] == expired + 7


# ------------------------------------------------------------------------ the POST's transport


async def test_a_post_is_not_sent_again_once_written_a_get_is() -> None:
    """A server that closes a kept-alive connection after reading the second request on it,
    without answering: the GET is sent again on a new connection, the POST is not."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            body = await reader.readexactly(length[0]) if length else b""
            seen.append(head.split(b" ")[0] + b" " + body)
            if answered:  # the second request on this connection: read, then closed
                writer.close()
                return
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = HttpPool(f"http://127.0.0.1:{port}/")
        assert await pool.post([], b"one", lambda s, e: None) == (200, b"")
        with pytest.raises(HttpError):
            await pool.post([], b"two", lambda s, e: None)
        assert seen == [b"POST one", b"POST two"]  # not sent a third time
        seen.clear()
        assert (await pool.get(pool.head([]), lambda s, e: None))[0] == 200
        assert (await pool.get(pool.head([]), lambda s, e: None))[0] == 200
        assert seen == [b"GET ", b"GET ", b"GET "]  # the second went again, on a new one
    finally:
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------------ a real broker


def test_a_url_without_a_secret_stops_the_broker_at_start(broker_factory: Any) -> None:
    with pytest.raises(BrokerStartError) as failed:
        broker_factory(start_timeout=15, BROKER_WEBHOOK_URL="http://127.0.0.1:9/hooks")
    assert "BROKER_WEBHOOK_SECRET" in str(failed.value)


async def test_a_broker_process_delivers_what_its_queue_holds(broker_factory: Any,
                                                             redis_server: Any,
                                                             receiver: Receiver) -> None:
    prefix = f"hooks-{uuid.uuid4().hex[:8]}"
    client = RedisClient(redis_server.url, prefix)
    queue = RedisWebhookQueue(client)
    try:
        await queue.push(events(range(30)))
        broker = await asyncio.to_thread(
            broker_factory, redis=redis_server, BROKER_KEY_PREFIX=prefix,
            BROKER_WEBHOOK_URL=receiver.url, BROKER_WEBHOOK_SECRET=SECRET,
            BROKER_WEBHOOK_BATCH=8)
        await until(lambda: len(receiver.acked_ids()) >= 30, what="30 events")
        await until_async(lambda: _empty(queue), what="the queue drained")
        assert receiver.acked_ids() == ids(range(30))
        for r in receiver.requests:
            check_signed(r)
        lease = client.key("hooks", "lease")
        assert await client.redis.exists(lease)  # held by the running broker
        await asyncio.to_thread(broker.stop)  # SIGTERM: the lease is given back
        assert not await client.redis.exists(lease)
    finally:
        await client.close()
