"""Django model events: publish a trigger when a model instance is created, updated or deleted.

For code that runs inside a Django deployment with the broker mounted (or any project that can
reach the broker's Redis: ``broker.publish_sync`` works from any process on the same
BROKER_REDIS_URL)::

    # myapp/apps.py
    class MyAppConfig(AppConfig):
        def ready(self):
            from broker.model_events import publish_model_events
            from .models import Order

            publish_model_events(
                Order,
                rooms=lambda order: [{"target": "order", "customer": order.customer_id}],
            )

Every subscription matching one of the rooms then receives::

    {"model": "myapp.order", "event": "created" | "updated" | "deleted",
     "pk": <primary key>, "data": <serializer(instance)>}

- **Only committed changes.** The trigger is published by ``transaction.on_commit`` of the
  database the instance was saved to: a change inside a transaction that rolls back publishes
  nothing, and subscribers never hear of a row before other connections can read it. Outside
  a transaction (autocommit), ``on_commit`` runs at once.
- **What is sent is computed at save time** (the rooms and the data, from the instance as the
  signal saw it), so a later change of the instance in the same transaction does not alter an
  earlier event. For a delete, the primary key is the one the instance had.
- **Failures do not break the caller's commit**: a trigger that cannot be published (Redis
  down) is logged (``broker.model_events``) and dropped. Model events are at most once.
- ``outbox=True``: at least once instead. The trigger is written as a row of the transactional
  outbox in the transaction of the change (``broker.publish.publish_on_commit``, on the
  instance's database) and published by the outbox relay (``manage.py runoutboxrelay``);
  a failure to write the row fails the change. In autocommit the row is its own transaction
  right after the change: wrap changes in ``transaction.atomic()`` (or ATOMIC_REQUESTS) to
  make the two one (docs/guarantees.md "The transactional outbox").
- ``history=True`` records the events in the rooms' history (BROKER_HISTORY), so subscribers
  can recover the ones they missed (docs/guarantees.md).
- ``serializer(instance)`` must return JSON-serializable data; the default is
  ``model_to_dict`` through Django's JSON encoder (dates, decimals and UUIDs become strings).
- Raw saves (fixtures loading) are skipped. ``disconnect()`` of the returned handle removes
  the receivers (tests).
- ``name``: added to the payload as ``"name"`` (event classes, ``broker.events``);
  ``tags(instance)``: the trigger's tags (``broker.filters``), computed and checked at save
  time, so a subscriber's filter can select among the events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save
from django.forms.models import model_to_dict

from .filters import Scalar, check_tags

log = logging.getLogger("broker.model_events")

CREATED, UPDATED, DELETED = "created", "updated", "deleted"

Rooms = Callable[[Any], Iterable[dict[str, Any]]]
Serializer = Callable[[Any], Any]
TagsOf = Callable[[Any], Mapping[str, Any] | None]


def default_serializer(instance: models.Model) -> Any:
    """The instance's editable fields as JSON-safe values (``model_to_dict``)."""
    return json.loads(json.dumps(model_to_dict(instance), cls=DjangoJSONEncoder))


def _publish(rooms: list[dict[str, Any]], payload: dict[str, Any], history: bool,
             tags: dict[str, Scalar] | None = None) -> None:
    from .publish import publish_sync

    try:
        publish_sync(rooms, payload, history=history, tags=tags)
    except Exception:  # noqa: BLE001 - never break the commit that already happened
        log.exception("model event %s %s of %s not published", payload.get("event"),
                      payload.get("pk"), payload.get("model"))


@dataclass
class ModelEventReceivers:
    """The receivers connected for one model; ``disconnect()`` removes them."""

    model: type[models.Model]
    rooms: Rooms
    serializer: Serializer
    history: bool
    events: frozenset[str]
    dispatch_uid: str
    name: str | None = None
    tags: TagsOf | None = None
    outbox: bool = False

    def _send(self, event: str, instance: models.Model, using: str) -> None:
        rooms = [dict(r) for r in self.rooms(instance)]
        if not rooms:
            return
        payload = {"model": instance._meta.label_lower, "event": event, "pk": _pk(instance),
                   "data": self.serializer(instance)}
        if self.name is not None:
            payload["name"] = self.name
        json.dumps(payload)  # not JSON-serializable: fail in the caller, not after the commit
        # bad tags fail in the caller too (InvalidTags)
        tags = check_tags(self.tags(instance)) if self.tags is not None else None
        if self.outbox:
            from .publish import publish_on_commit

            publish_on_commit(rooms, payload, history=self.history, tags=tags, using=using)
            return
        transaction.on_commit(partial(_publish, rooms, payload, self.history, tags),
                              using=using)

    def on_save(self, sender: Any, instance: models.Model, created: bool, raw: bool = False,
                using: str = "default", **kwargs: Any) -> None:
        event = CREATED if created else UPDATED
        if not raw and event in self.events:
            self._send(event, instance, using)

    def on_delete(self, sender: Any, instance: models.Model, using: str = "default",
                  **kwargs: Any) -> None:
        if DELETED in self.events:
            self._send(DELETED, instance, using)

    def disconnect(self) -> None:
        post_save.disconnect(sender=self.model, dispatch_uid=self.dispatch_uid + ":save")
        post_delete.disconnect(sender=self.model, dispatch_uid=self.dispatch_uid + ":delete")


def _pk(instance: models.Model) -> Any:
    pk = instance.pk
    return pk if isinstance(pk, (int, str)) or pk is None else str(pk)


def publish_model_events(model: type[models.Model], rooms: Rooms, *,
                         serializer: Serializer | None = None, history: bool = False,
                         events: Iterable[str] = (CREATED, UPDATED, DELETED),
                         dispatch_uid: str | None = None, name: str | None = None,
                         tags: TagsOf | None = None,
                         outbox: bool = False) -> ModelEventReceivers:
    """Publish ``model``'s created/updated/deleted events to ``rooms(instance)`` on commit.

    Connecting the same model twice with the same ``dispatch_uid`` (default: one per model)
    replaces nothing and adds nothing: Django's signals ignore the second connection.
    """
    events = frozenset(events)
    unknown = events - {CREATED, UPDATED, DELETED}
    if unknown:
        raise ValueError(f"unknown model events: {sorted(unknown)}")
    handle = ModelEventReceivers(
        model, rooms, serializer or default_serializer, history, events,
        dispatch_uid or f"combroker.model_events:{model._meta.label_lower}", name, tags,
        outbox)
    post_save.connect(handle.on_save, sender=model, weak=False,
                      dispatch_uid=handle.dispatch_uid + ":save")
    post_delete.connect(handle.on_delete, sender=model, weak=False,
                        dispatch_uid=handle.dispatch_uid + ":delete")
    return handle
