"""The AMQP trigger source: triggers a High-templar 3.x backend publishes to RabbitMQ, taken
as they are (docs/architecture.md "Trigger sources", docs/guarantees.md "Triggers from
RabbitMQ").

Such a backend publishes ``{"rooms": [...], "data": ...}`` to the exchange ``hightemplar``
with routing key ``*``. With BROKER_AMQP_URL set, ``AmqpSource``:

- **declares** the exchange exactly as High-templar 3.x does (``declare_exchange(name)``:
  aio-pika's defaults, a direct exchange, not durable, not auto-deleted), so both can run on
  one RabbitMQ during a migration; the one durable queue BROKER_AMQP_QUEUE, bound to it with
  ``*``, that every broker process consumes (competing consumers: each message goes to one
  process, and the Redis fan-out takes the trigger to every process); and its dead letters,
  the durable fanout exchange and durable queue ``<queue>.dead``, the queue's
  ``x-dead-letter-exchange``.
- **reads** each message as a ``POST /trigger`` body (at most BROKER_MAX_TRIGGER_BYTES, JSON,
  a JSON object) checked by the one set of trigger rules (``broker.triggers``: rooms, data,
  ``history``, ``id``, ``exclude``, ``tags``) and publishes it through the router as
  ``publish_many()`` does, a batch of what has arrived in one round trip. The message's AMQP
  ``message_id``, where one is given and the body has no ``id``, is the trigger's id
  (``trigger_id``), so a redelivered copy is recorded and delivered once.
- **acknowledges** a message only once its trigger was handed to the channel layer: a process
  that dies before that leaves it unacknowledged, and RabbitMQ gives it to another consumer.
  A trigger refused because Redis is down (``BrokerUnavailable``) is nacked with requeue, and
  this process takes nothing more until a backoff has passed. A message that is not a trigger
  (too large, not JSON, refused by the rules) is rejected without requeue, so RabbitMQ moves it
  to ``<queue>.dead``; it is counted and logged, never retried.
- **holds** at most BROKER_AMQP_PREFETCH messages unacknowledged (the channel's QoS).
- **reconnects** by itself: a lost connection or channel (RabbitMQ stopped, restarted, a
  network cut) is retried with a backoff doubling from 0.5 s to BROKER_AMQP_RETRY_MAX, with
  full jitter, and everything is declared again (a restarted RabbitMQ forgets the exchange,
  which is not durable, and so the binding). What it had not acknowledged is redelivered by
  RabbitMQ to whichever consumer is left.

Counted in broker.metrics: the ``amqp_connected`` gauge (1 while consuming, shown once a
source runs in the process), ``amqp_received`` (messages), ``amqp_published`` (messages
acknowledged after their trigger was published), ``amqp_requeued`` (nacked for Redis) and
``amqp_dead_lettered{cause="too-large"|"not-json"|"not-a-trigger"}``. ``/healthz`` says
``"amqp": true|false`` where a source runs.

One source per event loop: ``start_source`` (from ``broker.shutdown.serving_hub`` when
BROKER_AMQP_IN_BROKER, and from ``manage.py runamqpsource``), ``stop_source`` (graceful
shutdown), ``running_source``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from typing import TYPE_CHECKING, Any

from . import metrics
from .conf import Settings
from .errors import BrokerUnavailable
from .ingest import Answer, read_body
from .publish import publish_many
from .triggers import check_trigger_id

if TYPE_CHECKING:  # aio-pika is imported by a source that runs, not by every process
    from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger("broker.amqpsource")

ROUTING_KEY = "*"  # High-templar's binding and its backends' routing key
RETRY_MIN = 0.5  # seconds before the first reconnect or after the first refusal; doubled
CONNECT_TIMEOUT = 10.0  # seconds for one connection attempt and its declarations


def dead_letters(queue: str) -> str:
    """The name of ``queue``'s dead-letter exchange and queue."""
    return f"{queue}.dead"


def trigger_id_for(message_id: str) -> str:
    """The trigger id an AMQP ``message_id`` gives: itself when it is one (1 to 64 characters
    of A-Z a-z 0-9 . _ : -), else ``amqp:`` and a digest of it, the same for every copy."""
    try:
        valid = check_trigger_id(message_id)
    except ValueError:
        valid = None
    if valid is not None:
        return valid
    return "amqp:" + hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:48]


class NotATrigger(Exception):
    """A message dead-lettered: ``cause`` is its metric label, the message says why."""

    def __init__(self, cause: str, why: str) -> None:
        super().__init__(why)
        self.cause = cause


def read_message(body: bytes, message_id: str | None, max_bytes: int) -> dict[str, Any]:
    """The trigger body of one message, as ``publish_many`` takes it; ``NotATrigger`` for one
    too large, not JSON, or not a JSON object. The rules of a trigger are publish_many's."""
    if len(body) > max_bytes:
        raise NotATrigger("too-large", f"{len(body)} bytes, over BROKER_MAX_TRIGGER_BYTES "
                                       f"({max_bytes})")
    entry = read_body(body)
    if isinstance(entry, Answer):
        raise NotATrigger("not-json", str(entry.body.get("error")))
    if not isinstance(entry, dict):
        raise NotATrigger("not-a-trigger", "body must be a JSON object")
    if message_id and "id" not in entry:
        entry["id"] = trigger_id_for(message_id)
    return entry


class AmqpSource:
    """Consumes ``queue`` (bound to ``exchange``) on the RabbitMQ at ``url`` and publishes
    each message as a trigger, until ``stop``."""

    def __init__(self, url: str, exchange: str, queue: str, *, prefetch: int = 100,
                 max_bytes: int = 1_048_576, retry_min: float = RETRY_MIN,
                 retry_max: float = 30.0) -> None:
        """Raises ValueError for settings that cannot work (a clear message)."""
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError("BROKER_AMQP_URL must be an amqp:// or amqps:// URL")
        if not exchange or not queue:
            raise ValueError("BROKER_AMQP_EXCHANGE and BROKER_AMQP_QUEUE must not be empty")
        if prefetch < 1:
            raise ValueError("BROKER_AMQP_PREFETCH must be at least 1")
        self.url, self.exchange, self.queue = url, exchange, queue
        self.prefetch, self.max_bytes = prefetch, max_bytes
        self.retry_min, self.retry_max = retry_min, max(retry_max, retry_min)
        self.connected = False  # consuming now
        self._failures = 0  # consecutive failed connections, or refusals for Redis
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, c: Settings) -> AmqpSource:
        return cls(c.BROKER_AMQP_URL, c.BROKER_AMQP_EXCHANGE, c.BROKER_AMQP_QUEUE,
                   prefetch=c.BROKER_AMQP_PREFETCH, max_bytes=c.BROKER_MAX_TRIGGER_BYTES,
                   retry_max=c.BROKER_AMQP_RETRY_MAX)

    def start(self) -> None:
        """Run in the running loop until ``stop``."""
        if self._task is None:
            self._set_connected(False)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="amqp-source")

    async def stop(self, grace: float = 5.0) -> None:
        """Let the batch being published end (within ``grace``: its messages are then
        acknowledged), then close the connection; what is not acknowledged is redelivered."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, grace)
            except TimeoutError:
                log.warning("amqp source: stopped while publishing a batch")
            except Exception:  # noqa: BLE001 - _run raises nothing; stop must go on
                log.exception("amqp source failed")
        self._set_connected(False)
        log.info("amqp source: stopped")

    # ---- the loop

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        metrics.gauges["amqp_connected"] = 1 if connected else 0

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._consume()
                wait = self._backoff()
                if not self._stopping.is_set():
                    log.warning("amqp source: connection lost, reconnecting in %.1f s", wait)
            except Exception as exc:  # noqa: BLE001 - never die: log, back off, reconnect
                self._failures += 1
                wait = self._backoff()
                log.warning("amqp source: %s unavailable (%s: %s), reconnecting in %.1f s",
                            self.url.rsplit("@", 1)[-1], type(exc).__name__, exc, wait)
            self._set_connected(False)
            await self._wait(wait)

    async def _consume(self) -> None:
        """One connection: declare, consume until it or its channel is lost, or ``stop``."""
        import aio_pika

        lost = asyncio.Event()
        connection = await aio_pika.connect(self.url, timeout=CONNECT_TIMEOUT)
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=self.prefetch)
            # Exactly High-templar 3.x's declaration (high_templar/rabbitmq.py): its defaults.
            exchange = await channel.declare_exchange(self.exchange)
            dead = dead_letters(self.queue)
            dead_exchange = await channel.declare_exchange(dead, aio_pika.ExchangeType.FANOUT,
                                                           durable=True)
            dead_queue = await channel.declare_queue(dead, durable=True)
            await dead_queue.bind(dead_exchange)
            queue = await channel.declare_queue(
                self.queue, durable=True, arguments={"x-dead-letter-exchange": dead})
            await queue.bind(exchange, routing_key=ROUTING_KEY)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

            async def arrived(message: AbstractIncomingMessage) -> None:
                metrics.counters["amqp_received"] += 1
                inbox.put_nowait(message)

            await queue.consume(arrived)
            log.info("amqp source: consuming %s (exchange %s, prefetch %d)", self.queue,
                     self.exchange, self.prefetch)
            self._set_connected(True)
            self._failures = 0
            while not self._stopping.is_set() and not lost.is_set():
                batch = await self._next_batch(inbox, lost)
                if batch:
                    await self._handle(batch)
        finally:
            self._set_connected(False)
            if not connection.is_closed:
                try:
                    await asyncio.wait_for(connection.close(), 2.0)
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass

    async def _next_batch(self, inbox: asyncio.Queue[AbstractIncomingMessage],
                          lost: asyncio.Event) -> list[AbstractIncomingMessage]:
        """What has arrived (at least one message), or nothing once stopped or lost."""
        if inbox.empty():
            got = asyncio.ensure_future(inbox.get())
            ends = [asyncio.ensure_future(lost.wait()),
                    asyncio.ensure_future(self._stopping.wait())]
            try:
                await asyncio.wait([got, *ends], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for end in ends:
                    end.cancel()
            if not got.done():
                got.cancel()
                return []
            batch = [got.result()]
        else:
            batch = []
        while not inbox.empty() and len(batch) < self.prefetch:
            batch.append(inbox.get_nowait())
        return batch

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        """Publish the batch's triggers in one round trip; acknowledge each published one,
        dead-letter each that is not a trigger, requeue each refused for Redis."""
        entries: list[tuple[AbstractIncomingMessage, dict[str, Any]]] = []
        for message in batch:
            try:
                entries.append((message, read_message(message.body, message.message_id,
                                                      self.max_bytes)))
            except NotATrigger as exc:
                await self._dead_letter(message, exc.cause, str(exc))
        if not entries:
            return
        outcomes = await publish_many([entry for _, entry in entries])
        requeued = 0
        for (message, _), outcome in zip(entries, outcomes, strict=True):
            if isinstance(outcome, str):
                if await _settle(message.ack()):
                    metrics.counters["amqp_published"] += 1
            elif isinstance(outcome, ValueError):  # the trigger rules refused it
                await self._dead_letter(message, "not-a-trigger", str(outcome))
            else:  # BrokerUnavailable: try again later
                requeued += 1
                await _settle(message.nack(requeue=True))
        if requeued:
            metrics.counters["amqp_requeued"] += requeued
            self._failures += 1
            wait = self._backoff()
            reason = next(o for o in outcomes if isinstance(o, Exception)
                          and not isinstance(o, ValueError))
            log.warning("amqp source: %d triggers requeued (%s), taking more in %.1f s",
                        requeued, reason if isinstance(reason, BrokerUnavailable)
                        else type(reason).__name__, wait)
            await self._wait(wait)
        else:
            self._failures = 0

    async def _dead_letter(self, message: AbstractIncomingMessage, cause: str,
                           why: str) -> None:
        metrics.amqp_dead_lettered(cause)
        log.warning("amqp source: message %s dead-lettered to %s (%s): %s",
                    message.message_id or "without id", dead_letters(self.queue), cause, why)
        await _settle(message.reject(requeue=False))

    def _backoff(self) -> float:
        """Full jitter: uniform in (0, min(cap, retry_min * 2^(failures-1))], at least
        retry_min/2."""
        ceiling = min(self.retry_max, self.retry_min * 2 ** min(max(self._failures - 1, 0), 30))
        return max(random.uniform(0, ceiling), self.retry_min / 2)

    async def _wait(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass


async def _settle(settling: Any) -> bool:
    """Ack, nack or reject: False when the channel is gone (RabbitMQ then redelivers the
    message to another consumer: at least once)."""
    try:
        await settling
        return True
    except Exception as exc:  # noqa: BLE001 - a lost channel: the message is redelivered
        log.warning("amqp source: could not settle a message (%s): it will be redelivered",
                    type(exc).__name__)
        return False


# ---- one source per process (per event loop)

_sources: dict[asyncio.AbstractEventLoop, AmqpSource] = {}


def start_source(c: Settings) -> AmqpSource | None:
    """Start the running loop's source if BROKER_AMQP_URL is set (once per loop). Raises
    ValueError (a clear message) if the settings cannot work."""
    if not c.BROKER_AMQP_URL:
        return None
    loop = asyncio.get_running_loop()
    found = _sources.get(loop)
    if found is None:
        found = _sources[loop] = AmqpSource.from_settings(c)
        found.start()
    return found


def running_source() -> AmqpSource | None:
    """The running loop's source, if one was started."""
    try:
        return _sources.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


async def stop_source(grace: float = 5.0) -> None:
    """Stop the running loop's source, if one runs (graceful shutdown)."""
    found = _sources.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.stop(grace)
