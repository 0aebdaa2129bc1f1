"""Graceful shutdown of one broker process, whichever ASGI server runs it.

``graceful_shutdown()`` is what SIGTERM means (docs/operations.md, "Stopping a process"):

1. new connections are refused (the WebSocket handshake with HTTP 503 ``shutting-down``);
   the server hook stops listening too, so a load balancer moves on at once;
2. deliveries already on their way to this process are delivered: a probe sent through the
   channel layer to the process's own channel comes back behind every message queued before
   it (``Hub.quiesce``), so a trigger accepted before the signal reaches the outboxes;
3. every connection is closed with 1001 ``going-away`` once its outbox is written out
   (``Connection.close_soon``, each close bounded by ``connection.CLOSE_TIMEOUT``);
4. it waits for the connections to be gone, at most BROKER_SHUTDOWN_GRACE seconds in all,
   then stops the webhook dispatcher (broker.webhooks, if one runs), the AMQP trigger source
   (broker.amqpsource, if one runs: what it has not acknowledged goes back to RabbitMQ) and
   the hub (the process leaves the cluster registry at once, not after its TTL).

Hooks, one per server:

- daphne: ``broker.daphne_ext`` runs it from the reactor's "before shutdown" trigger, before
  daphne cancels the applications;
- uvicorn: ``install_signal_hooks()`` wraps uvicorn's SIGTERM and SIGINT handlers: the first
  signal runs ``graceful_shutdown`` and then hands the signal to uvicorn, which then finds no
  connection left; a second signal goes to uvicorn at once. The server edge installs them:
  ``serving_hub()``, the hub as whatever serves clients gets it (the connection's open, the
  health check), installs them once per loop. The hub itself knows nothing of signals: this
  module sits above fan-out and fan-out never imports it.
- ``runtcpgate`` has its own (``Gate.shutdown``); ``runbroker`` (uvicorn and the gate on one
  loop) takes SIGTERM and SIGINT over from uvicorn once it listens and runs ``Gate.shutdown``
  before letting uvicorn stop: ``install_signal_hooks`` leaves its handlers alone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from types import FrameType
from typing import Any

from . import disconnect
from .amqpsource import start_source, stop_source
from .collector import serve_policy
from .conf import conf
from .fanout.hub import Hub
from .fanout.running import get_hub, running_hub
from .limits import admission
from .webhooks import start_dispatcher, stop_dispatcher

log = logging.getLogger("broker.shutdown")

_done: asyncio.Future[None] | None = None
_hooked: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()  # loops hooked


async def serving_hub() -> Hub:
    """The running loop's hub, for serving clients: the first call on a loop also installs
    the signal hooks (under uvicorn; nothing under another server), the garbage collector's
    serving policy (broker.collector) and, with BROKER_WEBHOOK_URL, starts the webhook
    dispatcher on the hub's stores (broker.webhooks; stopped by ``graceful_shutdown``) and,
    with BROKER_AMQP_URL and BROKER_AMQP_IN_BROKER, the AMQP trigger source
    (broker.amqpsource; stopped there too)."""
    hub = await get_hub()
    loop = asyncio.get_running_loop()
    if loop not in _hooked:
        _hooked.add(loop)
        install_signal_hooks()
        serve_policy(conf().BROKER_GC_FULL_EVERY)
        start_dispatcher(hub.stores.webhooks, conf())
        if conf().BROKER_AMQP_IN_BROKER:
            start_source(conf())
    return hub


async def graceful_shutdown(grace: float | None = None) -> None:
    """Close this process's connections with 1001 within ``grace`` seconds. Idempotent: a
    second call waits for the first."""
    global _done
    if _done is not None:
        await asyncio.shield(_done)
        return
    loop = asyncio.get_running_loop()
    _done = loop.create_future()
    try:
        await _shutdown(conf().BROKER_SHUTDOWN_GRACE if grace is None else grace)
    finally:
        _done.set_result(None)


async def _shutdown(grace: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(grace, 0.0)
    admission.shutting_down = True
    hub = running_hub()
    if hub is None:
        return
    log.info("shutting down: closing %d connections with 1001 within %.1f s",
             len(hub.conns), grace)
    if hub.conns:
        # A trigger accepted just before the signal may still be in the channel layer.
        if not await hub.quiesce(max(min(1.0, deadline - loop.time()), 0.05)):
            log.warning("the channel layer did not answer: deliveries in flight may be lost")
        for conn in list(hub.conns.values()):
            conn.close_soon(disconnect.GOING_AWAY)
        while hub.conns and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if hub.conns:
            log.warning("%d connections still open after BROKER_SHUTDOWN_GRACE",
                        len(hub.conns))
    # Before the stores close; what it has not sent stays in Redis (lost in memory).
    await stop_dispatcher(max(deadline - loop.time(), 0.5))
    await stop_source(max(deadline - loop.time(), 0.5))
    try:
        await asyncio.wait_for(hub.stop(), max(deadline - loop.time(), 0.5))
    except Exception as exc:  # noqa: BLE001 - the registry forgets us after its TTL anyway
        log.warning("hub stop failed: %s", type(exc).__name__)


def install_signal_hooks() -> None:
    """Under uvicorn, run ``graceful_shutdown`` before uvicorn's own shutdown (which would
    close every WebSocket with 1012 at once). Does nothing under another server. Must run in
    the event loop, in the main thread."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous = signal.getsignal(sig)
        except ValueError:
            return
        owner = getattr(previous, "__self__", None)
        if owner is None or not type(owner).__module__.startswith("uvicorn"):
            continue  # not uvicorn's, or already ours (a plain function)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            if _done is not None:  # a second signal: the server's own, at once
                previous(signum, frame)
                return
            loop.call_soon_threadsafe(_start, previous, signum)

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            return


def _start(previous: Any, signum: int) -> None:
    async def run() -> None:
        try:
            await graceful_shutdown()
        except Exception:  # noqa: BLE001 - the server must still stop
            log.exception("graceful shutdown failed")
        finally:
            previous(signum, None)

    asyncio.ensure_future(run())
