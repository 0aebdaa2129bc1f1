"""``publish()`` / ``publish_sync()``, ``publish_many()`` / ``publish_many_sync()``: triggers
from code inside a Django deployment.

Same semantics as POST /trigger (PROTOCOL §5) and its batch form, without the HTTP hop: a
trigger is checked by the rules of ``broker.triggers`` (``rooms.InvalidRoom``,
``InvalidTriggerId``, ``InvalidTrigger``), and ``BrokerUnavailable`` is raised (or, from the
``_many`` forms, returned for the entry) when the channel layer is down, in which case the
trigger is not known to be delivered.

``publish_on_commit()`` is the transactional outbox's form: the trigger is written in the
caller's database transaction and published by the outbox relay (``broker.relay``) after the
commit, at least once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from channels.layers import get_channel_layer

from rooms import Room

from .fanout.router import Router
from .fanout.running import fanout_settings, hub_loop, make_stores, running_hub
from .filters import Tags, check_tags
from .jsontext import dump_json
from .triggers import TriggerRequest, check_exclude, check_trigger_id, parse_rooms, \
    parse_trigger

__all__ = ["check_trigger_id", "parse_rooms", "publish", "publish_many", "publish_many_sync",
           "publish_on_commit", "publish_rooms", "publish_sync"]

T = TypeVar("T")

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
                        trigger_id: str | None = None, exclude: str | None = None,
                        tags: Tags | None = None) -> str:
    return await _router().publish(rooms, dump_json(data), history=history,
                                   trigger_id=trigger_id, exclude=exclude, tags=tags)


async def publish(rooms: list[Any], data: Any, *, history: bool = False,
                  trigger_id: str | None = None, exclude: str | None = None,
                  tags: Mapping[str, Any] | None = None) -> str:
    """Deliver ``data`` to every subscription matching any of ``rooms``; returns the trigger id.

    ``history``: also record it in the history of its rooms that BROKER_HISTORY covers, so
    subscribers can recover it (``since``, resume tokens; docs/guarantees.md).
    ``trigger_id``: your own id for it (``InvalidTriggerId`` unless 1 to 64 characters of
    A-Z a-z 0-9 . _ : -). After ``BrokerUnavailable``, retry with the same id: it is recorded
    once and delivered once per subscription (docs/guarantees.md "Retrying a trigger").
    ``exclude``: a connection id (its welcome's ``connection_id``): that connection's
    subscriptions do not get this trigger, so a sender does not get its own echo
    (``InvalidTrigger`` unless 1 to 64 characters of A-Z a-z 0-9 . _ : -).
    ``tags``: string keys and scalar values that subscriptions' filters are matched against
    (``broker.filters``; ``InvalidTags`` past its bounds; docs/protocol.md "Event filters").
    """
    return await publish_rooms(parse_rooms(rooms), data, history,
                               check_trigger_id(trigger_id), check_exclude(exclude),
                               check_tags(tags))


async def _publish_checked(triggers: list[TriggerRequest | Exception]) -> list[str | Exception]:
    """Publish the checked triggers in one batch; an exception in ``triggers`` (the entry's
    refusal) is passed through in its place."""
    valid = [t for t in triggers if isinstance(t, TriggerRequest)]
    published = iter(await _router().publish_many(valid) if valid else [])
    return [t if isinstance(t, Exception) else next(published) for t in triggers]


def _check_all(triggers: Iterable[Mapping[str, Any]]) -> list[TriggerRequest | Exception]:
    checked: list[TriggerRequest | Exception] = []
    for entry in triggers:
        try:
            checked.append(parse_trigger(entry))
        except ValueError as exc:  # InvalidTrigger, InvalidRoom, InvalidTriggerId
            checked.append(exc)
    return checked


async def publish_many(triggers: Iterable[Mapping[str, Any]]) -> list[str | Exception]:
    """Publish several triggers at once: one round trip to Redis for all of them.

    Each trigger is a mapping like a ``POST /trigger`` body: ``{"rooms": [...], "data": ...,
    "history": bool (optional), "id": str (optional), "exclude": connection id (optional),
    "tags": {...} (optional)}``.
    Returns, per trigger and in order, its trigger id, or the exception that refused it, as
    ``asyncio.gather(..., return_exceptions=True)`` does: ``InvalidTrigger`` (not a mapping,
    ``rooms`` or ``data`` missing, ``history`` not a boolean, ``exclude`` not a connection
    id), ``rooms.InvalidRoom``, ``InvalidTriggerId``, ``filters.InvalidTags``,
    ``ValueError`` (data that is not JSON), ``BrokerUnavailable`` (not known to be delivered:
    retry it, with an ``id`` to make the retry idempotent). Each trigger is checked and
    delivered on its own: one refused trigger never stops the others.
    """
    return await _publish_checked(_check_all(triggers))


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
                 history: bool = False, trigger_id: str | None = None,
                 exclude: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    """Blocking ``publish()`` for sync code (views, signals, management commands)."""
    parsed = parse_rooms(rooms)  # raise InvalidRoom in the caller's thread
    trigger_id = check_trigger_id(trigger_id)
    return _run(publish_rooms(parsed, data, history, trigger_id, check_exclude(exclude),
                              check_tags(tags)), timeout)


def publish_many_sync(triggers: Iterable[Mapping[str, Any]],
                      timeout: float = 10.0) -> list[str | Exception]:
    """Blocking ``publish_many()`` for sync code; ``TimeoutError`` after ``timeout`` seconds
    (the triggers may still be published)."""
    return _run(_publish_checked(_check_all(triggers)), timeout)


def _run(coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    # In a process that runs a hub (runbroker, in-memory layer), publish on the hub's loop:
    # the in-memory layer's queues belong to that loop.
    loop = hub_loop() or _background_loop()
    future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
    return future.result(timeout)


def publish_on_commit(rooms: list[Any], data: Any, *, history: bool = False,
                      tags: Mapping[str, Any] | None = None, using: str | None = None) -> str:
    """Write the trigger as a row of the transactional outbox (``broker.models``) in the
    current transaction of database ``using`` (default: ``default``); returns its trigger id.

    The row commits or rolls back with the caller's own changes; the outbox relay
    (``manage.py runoutboxrelay``, ``broker.relay``) publishes committed rows in order, at
    least once (docs/guarantees.md "The transactional outbox"). The trigger is checked here,
    by the rules of ``publish()`` (``rooms.InvalidRoom``, ``InvalidTrigger``,
    ``filters.InvalidTags``, ``ValueError`` for data that is not JSON), so a bad one fails in
    the caller's transaction. Outside ``transaction.atomic()`` (autocommit) the row commits at
    once. On PostgreSQL the write also NOTIFYs the relay, which hears it at the commit.
    """
    from django.db import DEFAULT_DB_ALIAS, connections

    from .models import NOTIFY_CHANNEL, OutboxTrigger, trigger_id

    body: dict[str, Any] = {"rooms": rooms, "data": data}
    if history:
        body["history"] = history
    if tags:
        body["tags"] = tags
    parse_trigger(body)  # raises in the caller, naming the rule
    using = using or DEFAULT_DB_ALIAS
    row = OutboxTrigger.objects.using(using).create(trigger=dump_json(body),
                                                    stamp=time.time_ns() // 1000)
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])
    return trigger_id(row.id, row.stamp)
