"""``publish()`` / ``publish_sync()``: triggers from code inside a Django deployment.

Same semantics as POST /trigger (PROTOCOL §5), without the HTTP hop: rooms are validated
(``rooms.InvalidRoom``), and ``BrokerUnavailable`` is raised when the channel layer is down, in
which case the trigger was not delivered.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from channels.layers import get_channel_layer

from rooms import Room

from .fanout.router import Router
from .fanout.running import fanout_settings, hub_loop, make_stores, running_hub
from .jsontext import dump_json
from .triggers import check_trigger_id, parse_rooms

__all__ = ["check_trigger_id", "parse_rooms", "publish", "publish_rooms", "publish_sync"]

_routers: dict[asyncio.AbstractEventLoop, Router] = {}


def _router() -> Router:
    """The running hub's router; in a loop without a hub (a Django process that only
    publishes), a router of its own on its own stores."""
    hub = running_hub()
    if hub is not None:
        return hub.router
    loop = asyncio.get_running_loop()
    router = _routers.get(loop)
    if router is None:
        router = _routers[loop] = Router(get_channel_layer(), make_stores(), fanout_settings())
    return router


async def publish_rooms(rooms: list[Room], data: Any, history: bool = False,
                        trigger_id: str | None = None) -> str:
    return await _router().publish(rooms, dump_json(data), history=history,
                                   trigger_id=trigger_id)


async def publish(rooms: list[Any], data: Any, *, history: bool = False,
                  trigger_id: str | None = None) -> str:
    """Deliver ``data`` to every subscription matching any of ``rooms``; returns the trigger id.

    ``history``: also record it in the history of its rooms that BROKER_HISTORY covers, so
    subscribers can recover it (``since``, resume tokens; docs/guarantees.md).
    ``trigger_id``: your own id for it (``InvalidTriggerId`` unless 1 to 64 characters of
    A-Z a-z 0-9 . _ : -). After ``BrokerUnavailable``, retry with the same id: it is recorded
    once and delivered once per subscription (docs/guarantees.md "Retrying a trigger").
    """
    return await publish_rooms(parse_rooms(rooms), data, history,
                               check_trigger_id(trigger_id))


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="combroker-publish",
                             daemon=True).start()
        return _loop


def publish_sync(rooms: list[Any], data: Any, timeout: float = 10.0, *,
                 history: bool = False, trigger_id: str | None = None) -> str:
    """Blocking ``publish()`` for sync code (views, signals, management commands)."""
    parsed = parse_rooms(rooms)  # raise InvalidRoom in the caller's thread
    trigger_id = check_trigger_id(trigger_id)
    # In a process that runs a hub (runbroker, in-memory layer), publish on the hub's loop:
    # the in-memory layer's queues belong to that loop.
    loop = hub_loop() or _background_loop()
    future: Future[str] = asyncio.run_coroutine_threadsafe(
        publish_rooms(parsed, data, history, trigger_id), loop)
    return future.result(timeout)
