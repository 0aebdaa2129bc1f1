"""What a trigger is, as a caller sends one: its rooms, its data, ``history`` and its own ``id``.

The one set of rules for a trigger, whoever sends it: the body of ``POST /trigger``, each entry
of a batch, each mapping given to ``publish_many()``, and ``publish()``'s arguments (PROTOCOL §5,
docs/protocol.md). A trigger that breaks one raises, naming the rule:

- ``InvalidTrigger``: not a mapping, ``rooms`` or ``data`` missing, ``history`` not a boolean;
- ``rooms.InvalidRoom``: ``rooms`` not a non-empty list of valid rooms;
- ``InvalidTriggerId``: an ``id`` that is not 1 to 64 characters of A-Z a-z 0-9 . _ : -
- ``InvalidTrigger``: an ``exclude`` that is not a connection id (1 to 64 such characters too)
- ``filters.InvalidTags``: ``tags`` that are not an object of at most 32 string keys and
  bounded scalar values (``broker.filters.check_tags``)

Each message is the text ``/trigger`` answers with 400 (``refusal``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from rooms import InvalidRoom, Room, parse_room

from .errors import INVALID_TRIGGER_ID, InvalidTriggerId
from .filters import Scalar, check_tags


class InvalidTrigger(ValueError):
    """A trigger that is not a mapping with ``rooms`` and ``data``, or a ``history`` that is
    not a boolean; the message says which."""


@dataclass(frozen=True, slots=True)
class TriggerRequest:
    """A checked trigger: ``trigger_id`` is the caller's own id, or None (one is made)."""

    rooms: list[Room]
    data: Any
    history: bool = False
    trigger_id: str | None = None
    exclude: str | None = None  # a connection whose subscriptions do not get it
    tags: dict[str, Scalar] | None = None  # what subscriptions' filters match (broker.filters)


def parse_rooms(rooms: Any) -> list[Room]:
    if not isinstance(rooms, list) or not rooms:
        raise InvalidRoom("rooms must be a non-empty list of rooms")
    return [parse_room(r) for r in rooms]


_TRIGGER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def check_trigger_id(value: Any) -> str | None:
    """None, or a client-supplied trigger id: 1 to 64 characters of A-Z a-z 0-9 . _ : -"""
    if value is None:
        return None
    if not isinstance(value, str) or not _TRIGGER_ID.fullmatch(value):
        raise InvalidTriggerId(f"{INVALID_TRIGGER_ID}: a trigger id is 1 to 64 characters "
                               "of A-Z a-z 0-9 . _ : -")
    return value


def check_exclude(value: Any) -> str | None:
    """None, or the id of the connection a trigger is not delivered to (the sender's own
    echo): what a welcome's ``connection_id`` is, 1 to 64 characters of A-Z a-z 0-9 . _ : -"""
    if value is None:
        return None
    if not isinstance(value, str) or not _TRIGGER_ID.fullmatch(value):
        raise InvalidTrigger("exclude must be a connection id (1 to 64 characters of "
                             "A-Z a-z 0-9 . _ : -)")
    return value


def parse_trigger(entry: Any) -> TriggerRequest:
    """A trigger given as a mapping ``{"rooms": [...], "data": ..., "history"?: bool,
    "id"?: str, "exclude"?: str, "tags"?: {...}}`` (the body of ``POST /trigger``, an entry of
    a batch), checked in this order."""
    if not isinstance(entry, Mapping):
        raise InvalidTrigger("body must be a JSON object")
    if "rooms" not in entry:
        raise InvalidTrigger("rooms missing")
    if "data" not in entry:
        raise InvalidTrigger("data missing")
    rooms = parse_rooms(entry["rooms"])
    history = entry.get("history", False)  # issue 8: record it in its rooms' history
    if not isinstance(history, bool):
        raise InvalidTrigger("history must be a boolean")
    trigger_id = entry.get("id")
    if "id" in entry and trigger_id is None:
        raise InvalidTriggerId(f"{INVALID_TRIGGER_ID}: id must be a string")
    return TriggerRequest(rooms, entry["data"], history, check_trigger_id(trigger_id),
                          check_exclude(entry.get("exclude")), check_tags(entry.get("tags")))


def refusal(exc: Exception) -> str:
    """The text ``/trigger`` answers (400) for a trigger ``parse_trigger`` refused."""
    if isinstance(exc, InvalidRoom):
        return f"invalid room: {exc}"
    return str(exc)
