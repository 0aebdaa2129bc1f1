"""The messages processes send each other through the channel layer, as typed values.

Every message between broker processes is one of the classes below. ``to_wire`` turns one into
the dict the channel layer carries (msgpack under channels_redis: str keys, plain values), and
``from_wire`` turns such a dict back into the value, or ``None`` for one this version does not
know (a newer process during a rolling upgrade): nothing else in the broker spells a ``"cb.*"``
type or a wire key.

The wire format is the one processes of earlier versions send, so old and new processes can
share one Redis during an upgrade. An acknowledged ``DirectMessage`` is also what the ack store
keeps (``to_wire``/``from_wire`` again). The server API's messages (``Notify``, ``DropRooms``,
``Recheck``) are new actions of the control message: an earlier process reads them as unknown
(None) and ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .disconnect import Disconnect
from .filters import Scalar, check_tags
from .identity import Identity, Realm

TRIGGER = "cb.trigger"
DIRECT = "cb.direct"
CONFIRMED = "cb.confirmed"
CONTROL = "cb.control"
PROBE = "cb.probe"
PRESENCE = "cb.presence"


@dataclass(frozen=True, slots=True)
class Trigger:
    """A trigger for ``rooms`` (canonical keys); ``data_json`` is its data, encoded once.
    ``offsets``: for a recorded trigger, each recorded room's offset in its history.
    ``exclude``: the id of a connection whose subscriptions do not get it (the sender's own
    echo); sent only when set, and a process of an earlier version ignores it.
    ``tags``: what subscriptions' filters are matched against (broker.filters); sent only when
    set, and a process of an earlier version ignores it (it holds no filtered subscription)."""

    id: str
    rooms: list[str]
    data_json: str
    offsets: dict[str, int] | None = None
    exclude: str | None = None
    tags: dict[str, Scalar] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": TRIGGER, "id": self.id, "rooms": self.rooms,
                                "data": self.data_json}
        if self.offsets is not None:
            wire["offsets"] = self.offsets
        if self.exclude is not None:
            wire["exclude"] = self.exclude
        if self.tags is not None:
            wire["tags"] = self.tags
        return wire


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """A direct message (``send`` to a destination).

    ``to``/``sender``: routing addresses (broker.identity); ``room``: the key of the recipient's
    client room, which watchers' subscriptions match; ``frame``: the JSON dialects' whole
    ``message`` frame, built once by the sender's process; ``data_json``: its data; ``text`` and
    ``content_type``: a STOMP sender's exact body and its type (STOMP receivers see them);
    ``ack``: acknowledged delivery (stored until confirmed)."""

    id: str
    room: str
    to: str
    sender: str | None
    frame: str
    data_json: str
    text: str | None = None
    content_type: str | None = None
    ack: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": DIRECT, "id": self.id, "room": self.room, "to": self.to,
                                "from": self.sender, "message": self.frame,
                                "data": self.data_json, "text": self.text}
        if self.content_type is not None:
            wire["content_type"] = self.content_type
        if self.ack:
            wire["ack"] = True
        return wire


@dataclass(frozen=True, slots=True)
class Confirmed:
    """To the sender ``to``: every connection of ``by`` confirmed message ``message_id``."""

    message_id: str
    to: str
    by: str | None

    @property
    def id(self) -> str:
        return f"confirmed.{self.message_id}"

    def to_wire(self) -> dict[str, Any]:
        return {"type": CONFIRMED, "id": self.id, "message_id": self.message_id, "to": self.to,
                "by": self.by}


@dataclass(frozen=True, slots=True)
class Close:
    """Close the matching connections of every process (kick, duplicate-login ``replace``):
    the one with id ``conn_id``, those of ``login_id``, those owning ``destination``; never the
    one with id ``except_id``, nor one opened at or after ``opened_before`` (wall-clock
    seconds: a replace arriving late, behind a newer connect of the same login, closes only
    the connections older than the one that replaces them)."""

    disconnect: Disconnect
    conn_id: str | None = None
    login_id: str | None = None
    destination: str | None = None
    except_id: str | None = None
    opened_before: float | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": CONTROL, "action": "close",
                                "code": self.disconnect.code, "reason": self.disconnect.reason}
        for key, value in (("conn_id", self.conn_id), ("login_id", self.login_id),
                           ("destination", self.destination), ("except", self.except_id),
                           ("before", self.opened_before)):
            if value is not None:
                wire[key] = value
        return wire

    def matches(self, conn_id: str, login_id: str | None, destination: str | None,
                opened_at: float) -> bool:
        if conn_id == self.except_id or (self.opened_before is not None
                                         and opened_at >= self.opened_before):
            return False
        return (conn_id == self.conn_id
                or (self.login_id is not None and login_id == self.login_id)
                or (self.destination is not None and destination == self.destination))


def _api_login(login_id: str, identity: Identity) -> bool:
    """Whether ``identity`` is the auth API's login ``login_id`` (the backend's users: a
    static-key login of the same name is another client, broker.identity's realms)."""
    return identity.login_id == login_id and identity.realm == Realm.API


@dataclass(frozen=True, slots=True)
class Notify:
    """Data from the backend (the server API) to every connection of ``logins`` in the auth
    API's realm, or, with ``logins`` None, to every connection (a broadcast). ``data_json``:
    its data, encoded once; ``id``: the message id the frames carry."""

    id: str
    data_json: str
    logins: list[str] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": CONTROL, "action": "notify", "id": self.id,
                                "data": self.data_json}
        if self.logins is not None:
            wire["logins"] = self.logins
        return wire

    def reaches(self, identity: Identity) -> bool:
        return self.logins is None or any(_api_login(login, identity) for login in self.logins)


@dataclass(frozen=True, slots=True)
class DropRooms:
    """Unsubscribe every connection of the auth API's login ``login_id`` from exactly the
    rooms ``rooms`` (canonical keys): a subscription to one of them ends, others stay."""

    login_id: str
    rooms: list[str]

    def to_wire(self) -> dict[str, Any]:
        return {"type": CONTROL, "action": "unsubscribe", "login_id": self.login_id,
                "rooms": self.rooms}

    def reaches(self, identity: Identity) -> bool:
        return _api_login(self.login_id, identity)


@dataclass(frozen=True, slots=True)
class Recheck:
    """Every connection of the auth API's login ``login_id`` asks the auth API again who it
    is, and drops what its answer no longer allows."""

    login_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": CONTROL, "action": "recheck", "login_id": self.login_id}

    def reaches(self, identity: Identity) -> bool:
        return _api_login(self.login_id, identity)


@dataclass(frozen=True, slots=True)
class Probe:
    """Sent through the layer to see it come back (a path works end to end)."""

    token: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": PROBE, "token": self.token}


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """``member`` joined or left the room ``room_key`` (``broker.presence.Transition``), sent
    to the room's group: the subscriptions to that room which asked for presence are told."""

    id: str
    kind: str  # broker.presence.JOIN or LEAVE
    room_key: str
    member: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": PRESENCE, "id": self.id, "kind": self.kind, "room": self.room_key,
                "member": self.member}


Message = (Trigger | DirectMessage | Confirmed | Close | Probe | Notify | DropRooms | Recheck
           | PresenceEvent)


def _str(wire: dict[str, Any], key: str) -> str | None:
    value = wire.get(key)
    return value if isinstance(value, str) else None


def from_wire(wire: dict[str, Any]) -> Message | None:
    """The message a channel-layer dict carries; None for an unknown type. Raises
    KeyError/TypeError/ValueError for a known type with missing or mistyped fields."""
    kind = wire.get("type")
    if kind == TRIGGER:
        offsets = wire.get("offsets")
        return Trigger(str(wire["id"]), [str(r) for r in wire["rooms"]], str(wire["data"]),
                       {str(k): int(v) for k, v in offsets.items()} if offsets else None,
                       _str(wire, "exclude"), check_tags(wire.get("tags")))
    if kind == DIRECT:
        return DirectMessage(str(wire["id"]), str(wire["room"]), str(wire["to"]),
                             _str(wire, "from"), str(wire["message"]), str(wire["data"]),
                             _str(wire, "text"), _str(wire, "content_type"),
                             wire.get("ack") is True)
    if kind == CONFIRMED:
        return Confirmed(str(wire["message_id"]), str(wire["to"]), _str(wire, "by"))
    if kind == CONTROL:
        action = wire.get("action")
        if action == "notify":
            logins = wire.get("logins")
            return Notify(str(wire["id"]), str(wire["data"]),
                          None if logins is None else [str(x) for x in logins])
        if action == "unsubscribe":
            return DropRooms(str(wire["login_id"]), [str(r) for r in wire["rooms"]])
        if action == "recheck":
            return Recheck(str(wire["login_id"]))
        if action != "close":
            return None
        before = wire.get("before")
        return Close(Disconnect(int(wire["code"]), str(wire["reason"])), _str(wire, "conn_id"),
                     _str(wire, "login_id"), _str(wire, "destination"), _str(wire, "except"),
                     float(before) if isinstance(before, (int, float)) else None)
    if kind == PROBE:
        return Probe(str(wire.get("token", "")))
    if kind == PRESENCE:
        if wire["kind"] not in ("join", "leave"):
            raise ValueError(f"presence kind {wire['kind']!r}")
        return PresenceEvent(str(wire["id"]), str(wire["kind"]), str(wire["room"]),
                             str(wire["member"]))
    return None
