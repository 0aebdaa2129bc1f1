"""One connection's session: the sans-I/O core every transport and codec drives.

A codec turns wire frames into the request values below; ``Session.handle`` checks each request
against the connection's identity and its own subscription table, updates that table, and
returns a ``Step``: the reply to send, and at most one ``Effect`` that needs the hub or the
cluster (I/O). The driver (``broker.connection``) carries out the effect, then sends the reply,
or asks the session to ``undo`` the step when the effect failed.

The session never awaits and never touches a socket, the channel layer or Redis, so every rule
of the contract that lives here is testable with plain function calls.

A request's ``meta`` is opaque codec state (a STOMP ``receipt`` or ``transaction`` header) that
the driver hands back to the codec together with the reply; the session never reads it.

Invariant: ``self.subscriptions`` maps a request id's canonical JSON text to its Subscription;
an id is in the table exactly while the hub holds that subscription (the driver adds it to the
hub before replying success, and removes it when the session drops it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

from rooms import InvalidRoom, Room, parse_room

from . import errors
from .identity import Identity, parse_destination

RequestId = Union[str, int, float]


def request_id_ok(value: object) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- requests (codec -> session)


@dataclass(slots=True)
class Subscribe:
    request_id: Any
    room: Any
    # A compiled regex limiting a client-room watch to the destinations it fully matches
    # (STOMP destination-type:1); it becomes Subscription.pattern.
    pattern: Any = None
    meta: Any = None  # codec state that travels to this request's reply (see Connection)


@dataclass(slots=True)
class Unsubscribe:
    request_id: Any
    meta: Any = None


@dataclass(slots=True)
class UnsubscribeAll:
    request_id: Any = None
    meta: Any = None


@dataclass(slots=True)
class Ping:
    request_id: Any = None
    text: bool = False  # High-templar's bare "ping" text frame
    meta: Any = None


@dataclass(slots=True)
class Status:
    request_id: Any = None
    meta: Any = None


@dataclass(slots=True)
class Send:
    request_id: Any
    to: Any
    data: Any
    text: str | None = None  # the exact text a STOMP client sent, kept for STOMP receivers
    meta: Any = None


@dataclass(slots=True)
class Publish:
    request_id: Any
    rooms: Any
    data: Any
    meta: Any = None


@dataclass(slots=True)
class Admin:
    request_id: Any
    action: Any
    args: dict[str, Any] = field(default_factory=dict)
    meta: Any = None


@dataclass(slots=True)
class Disconnect:
    """The client ends the session (STOMP DISCONNECT); answered with success, then closed."""

    request_id: Any = None
    meta: Any = None


@dataclass(slots=True)
class Invalid:
    """A frame the codec could not turn into a request; answered with ``code``."""

    code: str
    request_id: Any = None
    detail: str | None = None
    meta: Any = None


Request = Union[Subscribe, Unsubscribe, UnsubscribeAll, Ping, Status, Send, Publish, Admin,
                Disconnect, Invalid]


# ---------------------------------------------------------------- replies (session -> codec)


@dataclass(slots=True)
class Success:
    request_id: Any = None
    extra: dict[str, Any] | None = None  # rich dialect only


@dataclass(slots=True)
class Error:
    code: str
    request_id: Any = None
    detail: str | None = None


@dataclass(slots=True)
class Pong:
    request_id: Any = None
    text: bool = False


@dataclass(slots=True)
class StatusInfo:
    request_id: Any
    open_connections: int
    num_rooms: int
    online_since: str


@dataclass(slots=True)
class AdminResult:
    request_id: Any
    result: dict[str, Any]


Reply = Union[Success, Error, Pong, StatusInfo, AdminResult]


# ---------------------------------------------------------------- effects (session -> driver)


@dataclass(eq=False, slots=True)
class Subscription:
    """One live subscription. Hashable by identity: it is the hub index's item."""

    request_id: Any
    request_id_json: str
    room: Room
    owner: Any = None  # the driver's connection object; set by the driver
    # Client destinations a regex watch is limited to (STOMP destination-type:1); None = all.
    pattern: Any = None


@dataclass(slots=True)
class JoinRoom:
    subscription: Subscription


@dataclass(slots=True)
class LeaveRooms:
    subscriptions: list[Subscription]


@dataclass(slots=True)
class SendDirect:
    destination: str
    data_json: str
    text: str | None


@dataclass(slots=True)
class PublishRooms:
    rooms: list[Room]
    data_json: str


@dataclass(slots=True)
class QueryStatus:
    pass


@dataclass(slots=True)
class AdminAction:
    action: str
    args: dict[str, Any]


Effect = Union[JoinRoom, LeaveRooms, SendDirect, PublishRooms, QueryStatus, AdminAction]

ADMIN_ACTIONS = frozenset({"connections", "kick", "stats"})


@dataclass(slots=True)
class Step:
    reply: Reply | None
    effect: Effect | None = None


def dump_json(value: Any) -> str:
    """The one JSON encoder for data crossing the broker (compact, UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Session:
    def __init__(self, identity: Identity, *, max_subscriptions: int, public_status: bool) -> None:
        self.identity = identity
        self.max_subscriptions = max_subscriptions
        self.public_status = public_status
        self.subscriptions: dict[str, Subscription] = {}

    def handle(self, req: Request) -> Step:
        match req:
            case Subscribe():
                return self._subscribe(req, req.pattern)
            case Unsubscribe():
                return self._unsubscribe(req)
            case UnsubscribeAll():
                subs = list(self.subscriptions.values())
                self.subscriptions.clear()
                return Step(Success(req.request_id), LeaveRooms(subs) if subs else None)
            case Ping():
                return Step(Pong(req.request_id, req.text))
            case Status():
                if not (self.public_status or self.identity.rule.admin):
                    return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED, req.request_id))
                return Step(None, QueryStatus())
            case Send():
                return self._send(req)
            case Publish():
                return self._publish(req)
            case Admin():
                return self._admin(req)
            case Disconnect():
                return Step(Success(req.request_id))
            case Invalid():
                return Step(Error(req.code, req.request_id, req.detail))
        return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED))  # pragma: no cover

    def undo(self, effect: Effect) -> None:
        """The driver could not carry out ``effect``: forget what ``handle`` recorded for it."""
        if isinstance(effect, JoinRoom):
            sub = effect.subscription
            if self.subscriptions.get(sub.request_id_json) is sub:
                del self.subscriptions[sub.request_id_json]

    def _subscribe(self, req: Subscribe, pattern: Any = None) -> Step:
        rid = req.request_id
        if rid is None:
            return Step(Error(errors.NO_REQUEST_ID))
        if not request_id_ok(rid):
            return Step(Error(errors.INVALID_MESSAGE, rid, "requestId must be a string or number"))
        if not self.identity.rule.can_subscribe:
            return Step(Error(errors.PROFILE_CANNOT_SUBSCRIBE, rid))
        try:
            room = parse_room(req.room)
        except InvalidRoom as exc:
            return Step(Error(errors.INVALID_ROOM, rid, str(exc)))
        key = dump_json(rid)
        existing = self.subscriptions.get(key)
        if existing is not None:
            if existing.room == room:
                return Step(Success(rid))
            return Step(Error(errors.REQUEST_ID_IN_USE, rid))
        if not self.identity.may_subscribe(room):
            return Step(Error(errors.ROOM_NOT_FOUND, rid))
        if len(self.subscriptions) >= self.max_subscriptions:
            return Step(Error(errors.TOO_MANY_SUBSCRIPTIONS, rid))
        sub = Subscription(rid, key, room, pattern=pattern)
        self.subscriptions[key] = sub
        return Step(Success(rid), JoinRoom(sub))

    def _unsubscribe(self, req: Unsubscribe) -> Step:
        rid = req.request_id
        if rid is None:
            return Step(Error(errors.NO_REQUEST_ID))
        if not request_id_ok(rid):
            return Step(Error(errors.INVALID_MESSAGE, rid, "requestId must be a string or number"))
        sub = self.subscriptions.pop(dump_json(rid), None)
        if sub is None:
            return Step(Error(errors.NOT_SUBSCRIBED, rid))
        return Step(Success(rid), LeaveRooms([sub]))

    def _send(self, req: Send) -> Step:
        rid = req.request_id
        if not isinstance(req.to, str):
            return Step(Error(errors.INVALID_MESSAGE, rid, "'to' must be a destination string"))
        if parse_destination(req.to) is None:
            return Step(Error(errors.DESTINATION_NOT_FOUND, rid, "not a client destination"))
        return Step(Success(rid), SendDirect(req.to, dump_json(req.data), req.text))

    def _publish(self, req: Publish) -> Step:
        rid = req.request_id
        if not isinstance(req.rooms, list) or not req.rooms:
            return Step(Error(errors.INVALID_MESSAGE, rid, "'rooms' must be a non-empty list"))
        try:
            rooms = [parse_room(r) for r in req.rooms]
        except InvalidRoom as exc:
            return Step(Error(errors.INVALID_ROOM, rid, str(exc)))
        if not all(self.identity.may_publish(r) for r in rooms):
            return Step(Error(errors.ROOM_NOT_ALLOWED, rid))
        return Step(Success(rid), PublishRooms(rooms, dump_json(req.data)))

    def _admin(self, req: Admin) -> Step:
        if not self.identity.rule.admin:
            return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED, req.request_id))
        if req.action not in ADMIN_ACTIONS:
            return Step(Error(errors.UNKNOWN_ACTION, req.request_id, f"actions: {sorted(ADMIN_ACTIONS)}"))
        return Step(None, AdminAction(str(req.action), req.args))
