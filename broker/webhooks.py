"""Delivering lifecycle events to the backend: signed POSTs, in order, retried until they are
acknowledged or too old (docs/webhooks.md).

Events are pushed to the webhook queue (``Stores.webhooks``, broker.stores.webhooks) by
whoever produces them; each serving process runs one ``WebhookDispatcher`` when
BROKER_WEBHOOK_URL is set (``start_dispatcher``, from ``broker.shutdown.serving_hub``). This
module decides:

- **who sends**: only the holder of the queue's lease (a random token per dispatcher, renewed
  before each POST and while it waits, so it never expires during a POST: the lease lasts at
  least twice the POST timeout). The others try to take it every third of its ttl; a holder
  that dies loses it when it expires and another process takes over. One sender at a time
  taking from the head keeps the events in order and sends none twice while nobody dies.
- **what a POST is**: ``{"events": [...]}`` with the first BROKER_WEBHOOK_BATCH events,
  ``X-Combroker-Timestamp`` (integer unix seconds), ``X-Combroker-Signature`` (``v1=<hex>``,
  broker.signature over the timestamp and the body, with BROKER_WEBHOOK_SECRET) and
  ``X-Combroker-Delivery`` (a fresh uuid per attempt).
- **what an answer means**: a 2xx removes the batch (only if the lease is still held); anything
  else (another status, a refused connection, a reset, BROKER_WEBHOOK_TIMEOUT) is a failed
  attempt, and the batch is sent again after a backoff doubling from ``retry_min`` (0.5 s) to
  BROKER_WEBHOOK_RETRY_MAX, with full jitter. A batch is re-read before each attempt: events
  that reached BROKER_WEBHOOK_MAX_AGE since their ``"at"`` are dropped then (counted, logged),
  so an event is retried for as long as it is younger than that, and no longer.
- **what is never done twice**: a batch a 2xx acknowledged is not sent again, except when the
  process dies (or loses its lease) between the 2xx and the removal: another sender then sends
  it again (receivers dedupe by event ``id``). If the removal itself fails (Redis), it is
  retried without sending; if the lease was lost meanwhile, the acknowledged ids are kept and,
  should this dispatcher find them at the head again, removed without being sent.
- **failures of Redis**: logged, waited for with the same backoff, retried; never raised.

POSTs go through broker.httppool (kept-alive connections; a POST is never re-sent by the pool
once a byte of it is written). Counted in broker.metrics: ``webhook_delivered`` (events),
``webhook_failed`` (attempts), ``webhook_dropped{cause="expired"|"malformed"}``, the
``webhook_pending`` gauge (the queue's length as last read) and
``webhook_last_success_timestamp_seconds``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
import uuid
from typing import Any

from . import metrics
from .conf import Settings
from .errors import BrokerUnavailable
from .httppool import HttpError, HttpPool
from .signature import sign
from .stores.webhooks import WebhookQueue

log = logging.getLogger("broker.webhooks")

RETRY_MIN = 0.5  # seconds before the first retry; doubled after each failure
POLL = 0.2  # seconds between two reads of an empty queue by the lease holder


class WebhookDispatcher:
    """Sends the queue's events to ``url`` while it holds the queue's lease."""

    def __init__(self, queue: WebhookQueue, url: str, secret: str, *, batch: int = 100,
                 timeout: float = 5.0, max_age: float = 86_400.0, retry_min: float = RETRY_MIN,
                 retry_max: float = 30.0, lease_ttl: float = 15.0,
                 poll: float = POLL) -> None:
        """Raises ValueError for an empty secret, a URL the pool cannot POST to, or a lease
        shorter than twice the timeout."""
        if not secret:
            raise ValueError("BROKER_WEBHOOK_SECRET is empty: webhooks are signed, set a secret "
                             "(or unset BROKER_WEBHOOK_URL)")
        if batch < 1:
            raise ValueError("BROKER_WEBHOOK_BATCH must be at least 1")
        if lease_ttl < 2 * timeout:
            raise ValueError("BROKER_WEBHOOK_LEASE_TTL must be at least twice "
                             "BROKER_WEBHOOK_TIMEOUT (a lease must outlast a POST)")
        self.queue = queue
        self.url = url
        self._secret = secret
        self._pool = HttpPool(url, [(b"Content-Type", b"application/json")])
        self.batch, self.timeout, self.max_age = batch, timeout, max_age
        self.retry_min, self.retry_max = retry_min, max(retry_max, retry_min)
        self.lease_ttl, self.poll = lease_ttl, poll
        self.token = secrets.token_hex(16)
        self.holding = False  # held the lease when last asked
        self._acked: list[Any] = []  # ids a 2xx acknowledged whose removal failed
        self._failures = 0  # consecutive failed attempts or Redis errors
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, queue: WebhookQueue, c: Settings) -> WebhookDispatcher:
        return cls(queue, c.BROKER_WEBHOOK_URL, c.BROKER_WEBHOOK_SECRET,
                   batch=c.BROKER_WEBHOOK_BATCH, timeout=c.BROKER_WEBHOOK_TIMEOUT,
                   max_age=c.BROKER_WEBHOOK_MAX_AGE, retry_max=c.BROKER_WEBHOOK_RETRY_MAX,
                   lease_ttl=c.BROKER_WEBHOOK_LEASE_TTL)

    def start(self) -> None:
        """Run in the running loop until ``stop``."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="webhook-dispatcher")

    async def stop(self, grace: float | None = None) -> None:
        """Let an attempt in flight end (within ``grace``, default the timeout plus 2 s: its
        2xx removes its batch), then give the lease back."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, self.timeout + 2.0 if grace is None else grace)
            except TimeoutError:
                log.warning("webhook dispatcher: stopped during an attempt")
            except Exception:  # noqa: BLE001 - _run raises nothing; stop must go on
                log.exception("webhook dispatcher failed")
        if self.holding:
            try:
                await self.queue.release(self.token)
            except BrokerUnavailable as exc:
                log.warning("webhook lease not released (it expires): %s", exc)
            self.holding = False

    # ---- the loop

    async def _run(self) -> None:
        task = asyncio.current_task()
        while not self._stopping.is_set():
            if task is not None and task.cancelling():
                # A cancellation was swallowed below (seen in a Redis call, redis-py 8.1, when
                # it lands as the reply arrives): end as cancelled all the same.
                raise asyncio.CancelledError
            try:
                wait = await self._step()
            except BrokerUnavailable as exc:
                self._failures += 1
                wait = self._backoff()
                log.warning("webhook queue unavailable, retrying in %.1f s: %s", wait, exc)
            except Exception:  # noqa: BLE001 - never die: log, back off, go on
                self._failures += 1
                wait = self._backoff()
                log.exception("webhook dispatcher error, retrying in %.1f s", wait)
            if wait > 0:
                await self._wait(wait)

    async def _step(self) -> float:
        """One turn: returns the seconds to wait before the next."""
        self.holding = await self.queue.lease(self.token, self.lease_ttl)
        if not self.holding:
            metrics.gauges["webhook_pending"] = await self.queue.pending()
            return self.lease_ttl / 3
        events = await self.queue.peek(self.batch)
        metrics.gauges["webhook_pending"] = await self.queue.pending() if events else 0
        if not events:
            self._failures = 0
            return self.poll
        if self._acked and [_id(e) for e in events[:len(self._acked)]] == self._acked:
            if await self._remove(len(self._acked), "acknowledged"):  # its 2xx came already
                self._acked = []
            return 0
        self._acked = []
        now = time.time()
        fresh, malformed, expired = [], 0, 0
        for event in events:
            if not isinstance(event, dict):
                malformed += 1
            elif _age(event, now) > self.max_age:
                expired += 1
            else:
                fresh.append(event)
        if fresh:
            if not await self._attempt(fresh):
                self._failures += 1
                metrics.counters["webhook_failed"] += 1
                return self._backoff()
            self._failures = 0
            metrics.gauges["webhook_last_success_timestamp_seconds"] = time.time()
            metrics.counters["webhook_delivered"] += len(fresh)
            if not await self._remove(len(events), "delivered"):
                ids = [_id(e) for e in events]
                self._acked = ids if all(isinstance(i, str) for i in ids) else []
                log.warning("webhook lease lost between a 2xx and the removal of its %d "
                            "events: another process may send them again", len(events))
                return 0
        elif not await self._remove(len(events), "dropped"):
            return 0
        if expired:
            metrics.webhook_dropped("expired", expired)
            log.warning("webhook: dropped %d events older than BROKER_WEBHOOK_MAX_AGE "
                        "(%.0f s)", expired, self.max_age)
        if malformed:
            metrics.webhook_dropped("malformed", malformed)
            log.warning("webhook: dropped %d queue entries that are not JSON objects",
                        malformed)
        return 0 if len(events) == self.batch else self.poll

    async def _remove(self, n: int, what: str) -> bool:
        """Remove the first ``n`` events; a Redis error is retried (never a re-send) until the
        removal is done or the lease is found lost (False)."""
        while True:
            try:
                return await self.queue.remove(self.token, n)
            except BrokerUnavailable as exc:
                wait = min(self.retry_max, self.lease_ttl / 3)
                log.warning("webhook: removing %d %s events failed, retrying in %.1f s: %s",
                            n, what, wait, exc)
                await asyncio.sleep(wait)

    async def _attempt(self, events: list[dict[str, Any]]) -> bool:
        """One POST of ``events``: True for a 2xx. The lease was renewed just before (``_step``),
        so it outlasts the POST (lease_ttl >= 2 timeouts)."""
        body = b'{"events":' + json.dumps(events, separators=(",", ":")).encode() + b"}"
        stamp = int(time.time())
        delivery = str(uuid.uuid4())
        headers = [(b"X-Combroker-Timestamp", b"%d" % stamp),
                   (b"X-Combroker-Signature", sign(body, self._secret, stamp).encode()),
                   (b"X-Combroker-Delivery", delivery.encode())]
        try:
            # (asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # comes as the answer does, and a cancelled dispatcher would go on)
            async with asyncio.timeout(self.timeout):
                status, _ = await self._pool.post(headers, body, lambda status, encoding: None)
        except (HttpError, OSError, TimeoutError) as exc:
            log.warning("webhook delivery %s of %d events failed: %s", delivery, len(events),
                        type(exc).__name__ if isinstance(exc, TimeoutError)
                        else f"{type(exc).__name__}: {exc}")
            return False
        if 200 <= status < 300:
            return True
        log.warning("webhook delivery %s of %d events answered %d", delivery, len(events),
                    status)
        return False

    def _backoff(self) -> float:
        """Full jitter: uniform in (0, min(cap, retry_min * 2^(failures-1))], at least
        retry_min/2."""
        ceiling = min(self.retry_max, self.retry_min * 2 ** min(self._failures - 1, 30))
        return max(random.uniform(0, ceiling), self.retry_min / 2)

    async def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` or until stopped, renewing a held lease every third of its ttl."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self._stopping.is_set():
            left = end - loop.time()
            if left <= 0:
                return
            try:
                async with asyncio.timeout(min(left, self.lease_ttl / 3)):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            if self.holding and end - loop.time() > 0:
                try:
                    self.holding = await self.queue.lease(self.token, self.lease_ttl)
                except BrokerUnavailable:
                    pass  # the next turn backs off


def _id(event: Any) -> Any:
    return event.get("id") if isinstance(event, dict) else None


def _age(event: dict[str, Any], now: float) -> float:
    """Seconds since the event's ``"at"`` (0 when it has none: it cannot be judged old)."""
    at = event.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        return 0.0
    return now - float(at)


# ---- one dispatcher per serving process (per event loop)

_dispatchers: dict[asyncio.AbstractEventLoop, WebhookDispatcher] = {}


def start_dispatcher(queue: WebhookQueue, c: Settings) -> WebhookDispatcher | None:
    """Start the running loop's dispatcher on ``queue`` if BROKER_WEBHOOK_URL is set (once per
    loop). Raises ValueError (a clear message) if the settings cannot work: no secret."""
    if not c.BROKER_WEBHOOK_URL:
        return None
    loop = asyncio.get_running_loop()
    found = _dispatchers.get(loop)
    if found is None:
        found = _dispatchers[loop] = WebhookDispatcher.from_settings(queue, c)
        found.start()
        log.info("webhook dispatcher started (lease token %s...)", found.token[:8])
    return found


async def stop_dispatcher(grace: float | None = None) -> None:
    """Stop the running loop's dispatcher, if one runs (graceful shutdown): ``grace`` as
    ``WebhookDispatcher.stop`` takes it."""
    found = _dispatchers.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.stop(grace)
