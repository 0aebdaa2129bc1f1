"""Presence: who holds a subscription to a room, cluster-wide, and what a change of it means.

A **member** of a room is a client address (``identity.address_of``: realm, profile, login), so
a login with two tabs is one member with two connections; connections without a login are
counted together as ``ANONYMOUS``. A room's members are those holding a subscription to
exactly that room (its canonical key, ``*`` kept literally): a wildcard subscription is a
member of its wildcard room, not of every room it covers (it watches them; it is not in them).
``ONLINE`` is the pseudo room every connection with a login is in while it is open.

A ``Transition`` is a member's first connection in a room anywhere in the cluster (``join``) or
its last one gone (``leave``); the store decides them atomically (``broker.stores.presence``),
so each happens once, on one process, whichever holds the connections. What follows from one:

- ``join``/``leave`` frames to the room's subscriptions that asked for them (``"presence":
  true``; ``broker.fanout.hub``);
- lifecycle events for the backend (``lifecycle_events``): ``online``/``offline`` per login
  (the ``ONLINE`` room), ``joined``/``left`` per room that ``BROKER_LIFECYCLE_ROOMS`` names;
  each with an ``id`` a receiver dedupes by.

``PresencePolicy`` (from ``BROKER_PRESENCE``, ``BROKER_PRESENCE_OFF``,
``BROKER_LIFECYCLE_ROOMS``) says which rooms are tracked and which make lifecycle events.
Pure: no I/O.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rooms import InvalidRoom, Room, parse_room, permitted

from .identity import Realm, parse_address, public_room

ONLINE = "~online"  # not a room key: those are canonical JSON objects
ANONYMOUS = ""  # the member every connection without a login counts as
JOIN, LEAVE = "join", "leave"


@dataclass(frozen=True, slots=True)
class Transition:
    """``member``'s first connection in ``room_key`` in the cluster (``join``), or its last
    one gone (``leave``)."""

    kind: str
    room_key: str
    member: str


def member_view(member: str) -> dict[str, str] | None:
    """What clients and the backend are shown of a member: its login and profile (and its
    realm when it is not the auth API's). None for ``ANONYMOUS``."""
    target = parse_address(member) if member else None
    if target is None:
        return None
    realm, profile, login = target
    view = {"login": login, "profile": str(profile)}
    if realm != Realm.API:
        view["realm"] = str(realm)
    return view


def presence_members(counts: dict[str, int]) -> list[dict[str, Any]]:
    """A room's members as shown: each login's view with its ``connections``, sorted; the
    anonymous connections are not a member (counted apart)."""
    members = []
    for member, count in sorted(counts.items()):
        view = member_view(member)
        if view is not None:
            members.append({**view, "connections": count})
    return members


def presence_counts(counts: dict[str, int], stats: bool) -> dict[str, Any]:
    """A room's presence as clients and the backend are shown it: ``members`` (each login's
    view with its ``connections``) and ``anonymous`` (connections without a login); or, for
    ``stats``, how many ``members`` and ``connections`` (anonymous ones included)."""
    if stats:
        return {"members": len(counts) - (ANONYMOUS in counts),
                "connections": sum(counts.values())}
    return {"members": presence_members(counts), "anonymous": counts.get(ANONYMOUS, 0)}


def room_of(room_key: str) -> Room | None:
    """The room a key names (None for ``ONLINE`` or a key no room has)."""
    if room_key == ONLINE:
        return None
    try:
        return parse_room(json.loads(room_key))
    except (InvalidRoom, ValueError):
        return None


def _patterns(value: Any, name: str) -> tuple[Room, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{name}: a {type(value).__name__}, not a list of rooms")
    try:
        return tuple(parse_room(r) for r in value)
    except InvalidRoom as exc:
        raise ValueError(f"{name}: {exc}") from None


class PresencePolicy:
    """Which rooms presence tracks (all, but the ``off`` patterns; nothing when disabled) and
    which rooms' joins and leaves the backend hears of (``lifecycle``)."""

    __slots__ = ("enabled", "lifecycle", "off")

    def __init__(self, enabled: bool = True, off: Sequence[Room] = (),
                 lifecycle: Sequence[Room] = ()) -> None:
        self.enabled = enabled
        self.off = tuple(off)
        self.lifecycle = tuple(lifecycle)

    @classmethod
    def from_settings(cls, enabled: bool, off: Any, lifecycle: Any) -> PresencePolicy:
        """Raises ValueError naming the setting that is malformed."""
        return cls(enabled, _patterns(off, "BROKER_PRESENCE_OFF"),
                   _patterns(lifecycle, "BROKER_LIFECYCLE_ROOMS"))

    def tracked(self, room: Room) -> bool:
        return self.enabled and not (self.off and permitted(self.off, room))

    def lifecycle_room(self, room: Room) -> bool:
        return bool(self.lifecycle) and permitted(self.lifecycle, room)


_KIND = {(True, JOIN): "online", (True, LEAVE): "offline",
         (False, JOIN): "joined", (False, LEAVE): "left"}


def lifecycle_events(transitions: Iterable[Transition], policy: PresencePolicy,
                     now: float) -> list[dict[str, Any]]:
    """The backend's events for ``transitions``: ``online``/``offline`` for every login,
    ``joined``/``left`` for the rooms ``policy.lifecycle`` names; anonymous connections make
    none. Each event has a fresh ``id``."""
    events: list[dict[str, Any]] = []
    for t in transitions:
        view = member_view(t.member)
        if view is None:
            continue
        online = t.room_key == ONLINE
        event: dict[str, Any] = {"id": uuid.uuid4().hex, "type": _KIND[online, t.kind],
                                 "at": now, **view}
        if not online:
            room = room_of(t.room_key)
            if room is None or not policy.lifecycle_room(room):
                continue
            event["room"] = public_room(room).original
        events.append(event)
    return events
