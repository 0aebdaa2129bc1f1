"""Event classes: a model's events declared as a class, found in each app's ``events`` module.

On top of ``broker.model_events`` (the same receivers, ``transaction.on_commit``, at most
once, or at least once through the transactional outbox with ``outbox = True``;
docs/guarantees.md)::

    # myapp/events.py
    from broker.events import ModelEvents
    from .models import Order

    class OrderEvents(ModelEvents):
        model = Order
        name = "order"                        # the payload's "name"
        fields = ["status", "total"]          # or exclude = [...]; neither: every field
        operations = ["created", "updated"]   # of created, updated, deleted; default all

        def rooms(self, order):               # or a static list: rooms = [{...}]
            return [{"target": "order", "customer": str(order.customer_id)}]

        def tags(self, order):                # optional: what subscribers' filters match
            return {"status": order.status}

The broker app's ``ready()`` imports every installed app's ``events`` module
(``autodiscover_modules``) and connects each subclass (``register_all``). A subscriber gets::

    {"name": "order", "model": "myapp.order", "event": "created" | "updated" | "deleted",
     "pk": <primary key>, "data": {"status": ..., "total": ...}}

``data`` holds exactly the declared fields (a foreign key as its ``<name>_id`` value under the
field's name), through Django's JSON encoder (dates, decimals and UUIDs become strings).
``history = True`` records them (BROKER_HISTORY); ``outbox = True`` writes them to the
transactional outbox in the change's transaction (at least once: ``broker.model_events``'s
``outbox``). A class with ``abstract = True`` is a base,
not connected. Registration is idempotent (one set of receivers per class, however often
autodiscovery runs); a bad declaration (no model, an unknown field or operation, no rooms)
raises ``ImproperlyConfigured`` naming the class, so the process does not start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from rooms import InvalidRoom, parse_room

from .model_events import CREATED, DELETED, UPDATED, ModelEventReceivers, publish_model_events

OPERATIONS = (CREATED, UPDATED, DELETED)
MAX_NAME_CHARS = 100

# Every subclass declared so far (its module and qualified name -> the class), and the
# receivers connected for each.
_declared: dict[str, type[ModelEvents]] = {}
_connected: dict[str, ModelEventReceivers] = {}


class ModelEvents:
    """Subclass it in an app's ``events`` module; see the module docstring."""

    model: ClassVar[type[models.Model] | None] = None
    name: ClassVar[str | None] = None  # default: the model's label, "app.model"
    rooms: Any = None  # a list of rooms, or a method (self, instance) -> list of rooms
    fields: ClassVar[Sequence[str] | None] = None  # None: every concrete field
    exclude: ClassVar[Sequence[str]] = ()
    operations: ClassVar[Iterable[str]] = OPERATIONS
    history: ClassVar[bool] = False
    outbox: ClassVar[bool] = False  # through the transactional outbox (broker.relay)
    abstract: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("abstract", False):
            _declared[_key(cls)] = cls

    def tags(self, instance: Any) -> Mapping[str, Any] | None:
        """The trigger's tags for ``instance`` (broker.filters); None: no tags."""
        return None

    # ------------------------------------------------------------ what it sends

    def rooms_of(self, instance: Any) -> list[dict[str, Any]]:
        rooms = self.rooms
        return list(rooms(instance) if callable(rooms) else rooms)

    def serialize(self, instance: Any) -> dict[str, Any]:
        """The declared fields of ``instance``, JSON-safe."""
        values = {f.name: f.value_from_object(instance) for f in self._fields()}
        data: dict[str, Any] = json.loads(json.dumps(values, cls=DjangoJSONEncoder))
        return data

    @classmethod
    def _fields(cls) -> list[Any]:
        meta = cls.model._meta  # type: ignore[union-attr]
        names = cls.fields if cls.fields is not None else [f.name for f in meta.concrete_fields]
        return [meta.get_field(n) for n in names if n not in cls.exclude]

    # ------------------------------------------------------------ the declaration's check

    @classmethod
    def check(cls) -> None:
        """Raise ImproperlyConfigured naming what is wrong with this declaration."""
        where = f"event class {cls.__module__}.{cls.__qualname__}"
        model = cls.model
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise ImproperlyConfigured(f"{where}: model must be a Django model class")
        if cls.fields is not None and (isinstance(cls.fields, str)
                                       or not isinstance(cls.fields, Sequence)):
            raise ImproperlyConfigured(f"{where}: fields must be a list of field names")
        if isinstance(cls.exclude, str) or not isinstance(cls.exclude, Sequence):
            raise ImproperlyConfigured(f"{where}: exclude must be a list of field names")
        for name in [*(cls.fields or ()), *cls.exclude]:
            try:
                field = model._meta.get_field(name)
            except FieldDoesNotExist:
                raise ImproperlyConfigured(
                    f"{where}: {model._meta.label} has no field {name!r}") from None
            if not field.concrete or field.many_to_many:
                raise ImproperlyConfigured(f"{where}: {name!r} is not a concrete field of "
                                           f"{model._meta.label}")
        ops = cls.operations
        if isinstance(ops, str) or not isinstance(ops, Iterable):
            raise ImproperlyConfigured(f"{where}: operations must be a list of "
                                       f"{', '.join(OPERATIONS)}")
        unknown = sorted(set(ops) - set(OPERATIONS))
        if unknown or not set(ops):
            raise ImproperlyConfigured(f"{where}: operations must be a non-empty subset of "
                                       f"{', '.join(OPERATIONS)}; unknown: {unknown}")
        if not isinstance(cls.outbox, bool):
            raise ImproperlyConfigured(f"{where}: outbox must be True or False")
        label = cls.name
        if label is not None and (not isinstance(label, str) or not label
                                  or len(label) > MAX_NAME_CHARS):
            raise ImproperlyConfigured(f"{where}: name must be 1 to {MAX_NAME_CHARS} characters")
        rooms = cls.rooms
        if rooms is None:
            raise ImproperlyConfigured(f"{where}: rooms must be a list of rooms or a method "
                                       "taking the instance")
        if not callable(rooms):
            if isinstance(rooms, (str, Mapping)) or not isinstance(rooms, Iterable):
                raise ImproperlyConfigured(f"{where}: rooms must be a list of rooms or a "
                                           "method taking the instance")
            for room in rooms:
                try:
                    parse_room(room)
                except InvalidRoom as exc:
                    raise ImproperlyConfigured(f"{where}: invalid room {room!r}: {exc}") from None


def _key(cls: type[ModelEvents]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_all() -> list[ModelEventReceivers]:
    """Connect every declared event class not connected yet (after checking them all: one bad
    declaration connects none); returns the receivers of every connected class. Idempotent."""
    pending = {key: cls for key, cls in _declared.items() if key not in _connected}
    for cls in pending.values():
        cls.check()
    for key, cls in pending.items():
        _connected[key] = _connect(key, cls)
    return list(_connected.values())


def _connect(key: str, cls: type[ModelEvents]) -> ModelEventReceivers:
    declared = cls()
    model = cls.model
    assert model is not None  # checked
    return publish_model_events(
        model, rooms=declared.rooms_of, serializer=declared.serialize, history=cls.history,
        events=cls.operations, dispatch_uid=f"combroker.events:{key}",
        name=cls.name or model._meta.label_lower, tags=declared.tags, outbox=cls.outbox)

