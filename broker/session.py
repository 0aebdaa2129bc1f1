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

from dataclasses import dataclass

from rooms import InvalidRoom, parse_room

from . import errors
from .effects import (
    AdminAction,
    ConfirmMessage,
    Effect,
    JoinRoom,
    LeaveRooms,
    PublishRooms,
    QueryStatus,
    ReadHistory,
    SendDirect,
)
from .history import HistoryPolicy, valid_offset
from .identity import Identity, resolve_destination
from .jsontext import dump_json
from .replies import Error, Pong, Reply, Success
from .requests import (
    MAX_REQUEST_ID_CHARS,
    Admin,
    Confirm,
    Goodbye,
    History,
    Invalid,
    Ping,
    Publish,
    Request,
    Send,
    Status,
    Subscribe,
    Unsubscribe,
    UnsubscribeAll,
    request_id_ok,
    request_id_short,
)
from .subscription import DestinationPattern, Subscription

# Regex watches (STOMP destination-type:1) one connection may hold: each may keep its engine's
# memory (RE2: up to broker.codecs.stomp.PATTERN_MAX_MEM) and is matched against every direct
# message to its profile.
MAX_REGEX_WATCHES = 16

ADMIN_ACTIONS = frozenset({"connections", "kick", "stats"})


@dataclass(slots=True)
class Step:
    reply: Reply | None
    effect: Effect | None = None


class Session:
    def __init__(self, identity: Identity, *, max_subscriptions: int, public_status: bool,
                 history: HistoryPolicy | None = None) -> None:
        self.identity = identity
        self.max_subscriptions = max_subscriptions
        self.public_status = public_status
        self.history = history or HistoryPolicy()
        self.subscriptions: dict[str, Subscription] = {}

    def handle(self, req: Request) -> Step:
        rid = req.request_id
        if rid is not None and not request_id_short(rid):
            # Not echoed: the bound is what keeps ids out of memory (and out of replies).
            return Step(Error(errors.REQUEST_ID_TOO_LONG, None,
                              f"requestId: at most {MAX_REQUEST_ID_CHARS} characters"))
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
            case Goodbye():
                return Step(Success(req.request_id))
            case History():
                return self._history(req)
            case Confirm():
                return self._confirm(req)
            case Invalid():
                return Step(Error(req.code, req.request_id, req.detail))
        return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED))  # pragma: no cover

    def undo(self, effect: Effect) -> None:
        """The driver could not carry out ``effect``: forget what ``handle`` recorded for it."""
        if isinstance(effect, JoinRoom):
            sub = effect.subscription
            if self.subscriptions.get(sub.request_id_json) is sub:
                del self.subscriptions[sub.request_id_json]

    def _subscribe(self, req: Subscribe, pattern: DestinationPattern | None = None) -> Step:
        rid = req.request_id
        if rid is None:
            return Step(Error(errors.NO_REQUEST_ID))
        if not request_id_ok(rid):
            return Step(Error(errors.INVALID_MESSAGE, rid, "requestId must be a string or number"))
        if not self.identity.rule.can_subscribe:
            return Step(Error(errors.PROFILE_CANNOT_SUBSCRIBE, rid))
        try:
            room = self.identity.local_room(parse_room(req.room))
        except InvalidRoom as exc:
            return Step(Error(errors.INVALID_ROOM, rid, str(exc)))
        since = req.since
        if since is not None and not valid_offset(since):
            return Step(Error(errors.INVALID_MESSAGE, rid,
                              "since must be an offset (a non-negative integer)"))
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
        if pattern is not None and sum(s.pattern is not None for s in
                                       self.subscriptions.values()) >= MAX_REGEX_WATCHES:
            return Step(Error(errors.TOO_MANY_SUBSCRIPTIONS, rid,
                              f"at most {MAX_REGEX_WATCHES} regular-expression watches"))
        sub = Subscription(rid, key, room, pattern=pattern)
        self.subscriptions[key] = sub
        rule = self.history.rule_for(room)
        if rule is None:
            # No history to replay (a wildcard room, or one no BROKER_HISTORY rule covers):
            # a ``since`` cannot be honoured, and the reply says so.
            return Step(Success(rid, {"recovered": False} if since is not None else None),
                        JoinRoom(sub))
        # The driver answers: it reads the room's offset (and the replay after ``since``).
        return Step(Success(rid), JoinRoom(sub, rule, since))

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
        # the address of the one client it names, in the sender's realm (broker.identity)
        to = resolve_destination(self.identity.realm, req.to)
        if to is None:
            return Step(Error(errors.DESTINATION_NOT_FOUND, rid, "not a client destination"))
        if not isinstance(req.ack, bool):
            return Step(Error(errors.INVALID_MESSAGE, rid, "'ack' must be a boolean"))
        return Step(Success(rid), SendDirect(to, dump_json(req.data), req.text, req.ack,
                                             req.content_type))

    def _publish(self, req: Publish) -> Step:
        rid = req.request_id
        if not isinstance(req.rooms, list) or not req.rooms:
            return Step(Error(errors.INVALID_MESSAGE, rid, "'rooms' must be a non-empty list"))
        try:
            rooms = [self.identity.local_room(parse_room(r)) for r in req.rooms]
        except InvalidRoom as exc:
            return Step(Error(errors.INVALID_ROOM, rid, str(exc)))
        if not all(self.identity.may_publish(r) for r in rooms):
            return Step(Error(errors.ROOM_NOT_ALLOWED, rid))
        if not isinstance(req.history, bool):
            return Step(Error(errors.INVALID_MESSAGE, rid, "'history' must be a boolean"))
        return Step(Success(rid), PublishRooms(rooms, dump_json(req.data), req.history))

    def _history(self, req: History) -> Step:
        """A room's history is readable by whoever may subscribe to that room."""
        rid = req.request_id
        if rid is not None and not request_id_ok(rid):
            return Step(Error(errors.INVALID_MESSAGE, rid, "requestId must be a string or number"))
        if not self.identity.rule.can_subscribe:
            return Step(Error(errors.PROFILE_CANNOT_SUBSCRIBE, rid))
        try:
            room = self.identity.local_room(parse_room(req.room))
        except InvalidRoom as exc:
            return Step(Error(errors.INVALID_ROOM, rid, str(exc)))
        if not self.identity.may_subscribe(room):
            return Step(Error(errors.ROOM_NOT_FOUND, rid))
        rule = self.history.rule_for(room)
        if rule is None:
            detail = ("history is kept per concrete room" if not room.is_concrete
                      else "no BROKER_HISTORY rule covers this room")
            return Step(Error(errors.HISTORY_NOT_ENABLED, rid, detail))
        limit = rule.size if req.limit is None else req.limit
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            return Step(Error(errors.INVALID_MESSAGE, rid, "limit must be a positive integer"))
        if req.since is not None and not valid_offset(req.since):
            return Step(Error(errors.INVALID_MESSAGE, rid,
                              "since must be an offset (a non-negative integer)"))
        return Step(None, ReadHistory(room, min(limit, rule.size), req.since))

    def _confirm(self, req: Confirm) -> Step:
        rid = req.request_id
        if rid is not None and not request_id_ok(rid):
            return Step(Error(errors.INVALID_MESSAGE, rid, "requestId must be a string or number"))
        mid = req.message_id
        if not isinstance(mid, str) or not mid or len(mid) > 128:
            return Step(Error(errors.INVALID_MESSAGE, rid, "'id' must be a message id"))
        if self.identity.destination is None:
            # Acknowledged messages go to client destinations: without a login, none is ours.
            return Step(Success(rid))
        return Step(Success(rid), ConfirmMessage(mid))

    def _admin(self, req: Admin) -> Step:
        if not self.identity.rule.admin:
            return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED, req.request_id))
        if not isinstance(req.action, str) or req.action not in ADMIN_ACTIONS:
            return Step(Error(errors.UNKNOWN_ACTION, req.request_id,
                              f"actions: {sorted(ADMIN_ACTIONS)}"))
        return Step(None, AdminAction(str(req.action), req.args))
