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
import math
import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol

from rooms import InvalidRoom, Room, parse_room

from . import errors
from .history import HistoryEntry, HistoryPolicy, HistoryRule, valid_offset
from .identity import Identity, resolve_destination

RequestId = str | int | float
# Regex watches (STOMP destination-type:1) one connection may hold: each may keep its engine's
# memory (RE2: up to broker.codecs.stomp.PATTERN_MAX_MEM) and is matched against every direct
# message to its profile.
MAX_REGEX_WATCHES = 16

# Bounds on client JSON (docs/protocol.md "Bounds"). Data nested deeper than MAX_JSON_DEPTH
# (arrays and objects, the frame itself counted) is refused by ``load_json`` and never produced
# by ``dump_json``, so whatever the decoder lets in the encoder can write, on any stack.
MAX_JSON_DEPTH = 128
# A request id is a string of at most this many characters, or a number written in at most
# this many: the session keeps it per subscription, and resume state saves it again.
MAX_REQUEST_ID_CHARS = 128


def request_id_ok(value: object) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


class DestinationPattern(Protocol):
    """What the core needs of a regex watch's pattern (STOMP ``destination-type:1``): its
    source text, and whether it fully matches a client destination (truthy) or not. The engine
    is the codec's choice; the hub calls ``fullmatch`` on the event loop, so it must be cheap
    whatever the pattern (broker.codecs.stomp: RE2, linear time, bounded sizes)."""

    @property
    def pattern(self) -> str: ...

    def fullmatch(self, destination: str) -> object: ...


def request_id_short(value: object) -> bool:
    """A request id within MAX_REQUEST_ID_CHARS (a string's characters, else its JSON text)."""
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID_CHARS
    if isinstance(value, int) and not isinstance(value, bool):
        # bit_length first: writing a 4,000-digit int out only to measure it costs
        return value.bit_length() <= 4 * MAX_REQUEST_ID_CHARS and \
            len(str(value)) <= MAX_REQUEST_ID_CHARS
    try:
        return len(dump_json(value)) <= MAX_REQUEST_ID_CHARS
    except ValueError:
        return False


# ---------------------------------------------------------------- requests (codec -> session)


@dataclass(slots=True)
class Subscribe:
    request_id: Any
    room: Any
    # A pattern limiting a client-room watch to the destinations it fully matches
    # (STOMP destination-type:1); it becomes Subscription.pattern.
    pattern: DestinationPattern | None = None
    meta: Any = None  # codec state that travels to this request's reply (see Connection)
    # The last offset the client has of this (history) room: replay what came after it.
    since: Any = None


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
    content_type: str | None = None  # and its content-type (STOMP receivers see it)
    meta: Any = None
    ack: Any = False  # acknowledged delivery: stored until the recipient confirms


@dataclass(slots=True)
class Publish:
    request_id: Any
    rooms: Any
    data: Any
    meta: Any = None
    history: Any = False  # record the trigger in its rooms' history (BROKER_HISTORY)


@dataclass(slots=True)
class History:
    """``{"type":"history","room":R,"limit":n,"since":s}``: a room's recorded triggers."""

    request_id: Any
    room: Any
    limit: Any = None
    since: Any = None
    meta: Any = None


@dataclass(slots=True)
class Confirm:
    """``{"type":"confirm","id":M}``: this connection has processed acknowledged message M."""

    request_id: Any
    message_id: Any
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


Request = (Subscribe | Unsubscribe | UnsubscribeAll | Ping | Status | Send | Publish | Admin
           | Disconnect | Invalid | History | Confirm)


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


@dataclass(slots=True)
class HistoryResult:
    """The answer to History: ``top`` is the room's last offset (0: nothing recorded);
    ``recovered`` is set when the request had ``since`` (see broker.history.recovered)."""

    request_id: Any
    room: Room
    top: int
    entries: list[HistoryEntry]
    recovered: bool | None = None


Reply = Success | Error | Pong | StatusInfo | AdminResult | HistoryResult


# ---------------------------------------------------------------- effects (session -> driver)


@dataclass(eq=False, slots=True)
class Subscription:
    """One live subscription. Hashable by identity: it is the hub index's item."""

    request_id: Any
    request_id_json: str
    room: Room
    owner: Any = None  # the driver's connection object; set by the driver
    # Client destinations a regex watch is limited to (STOMP destination-type:1); None = all.
    pattern: DestinationPattern | None = None
    # History rooms: the last offset written to the client (what a resume replays after).
    offset: int | None = None
    # While a replay is being read: live deliveries wait here as (trigger id, offset, frame)
    # and are merged after the replay (broker.history.merge_seam). None = deliver at once.
    buffer: list[tuple[str, int | None, Any]] | None = None
    # After a replay: the highest offset it covered. A live copy of a trigger that was read from
    # the history but reaches this process only after the seam was merged is dropped by it.
    replayed: int | None = None


@dataclass(slots=True)
class JoinRoom:
    subscription: Subscription
    # A history room's rule (None: the room keeps no history), and the offset to replay after.
    history: HistoryRule | None = None
    since: int | None = None


@dataclass(slots=True)
class LeaveRooms:
    subscriptions: list[Subscription]


@dataclass(slots=True)
class SendDirect:
    destination: str
    data_json: str
    text: str | None
    ack: bool = False
    content_type: str | None = None


@dataclass(slots=True)
class PublishRooms:
    rooms: list[Room]
    data_json: str
    history: bool = False


@dataclass(slots=True)
class ReadHistory:
    room: Room
    limit: int
    since: int | None


@dataclass(slots=True)
class ConfirmMessage:
    message_id: str


@dataclass(slots=True)
class QueryStatus:
    pass


@dataclass(slots=True)
class AdminAction:
    action: str
    args: dict[str, Any]


Effect = (JoinRoom | LeaveRooms | SendDirect | PublishRooms | QueryStatus | AdminAction
          | ReadHistory | ConfirmMessage)

ADMIN_ACTIONS = frozenset({"connections", "kick", "stats"})


@dataclass(slots=True)
class Step:
    reply: Reply | None
    effect: Effect | None = None


class JsonTooDeep(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH: refused with ``invalid-message`` (or 400)."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


# Escapes first, then strings: with no backslash left, ``"[^"]*"`` pairs quotes left to right,
# so even an unclosed string costs one pass (a string pattern that handles escapes itself is
# quadratic on an unclosed string full of ``\"``, retried from every quote).
_ESCAPES = re.compile(r"\\.", re.DOTALL)
_STRINGS = re.compile(r'"[^"]*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _nesting(text: str) -> tuple[int, bool]:
    """The deepest nesting of ``text``'s brackets outside strings, and whether they balance.

    Linear in the text whatever it holds: C-speed regex passes, then one running sum over the
    brackets left.
    """
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", _ESCAPES.sub("", text)))
    depths = list(accumulate(map(_STEP.__getitem__, brackets)))
    balanced = not depths or (depths[-1] == 0 and min(depths) >= 0)
    return max(depths, default=0), balanced


def _check_depth(text: str) -> None:
    """Raise JsonTooDeep when the valid JSON ``text`` nests deeper than MAX_JSON_DEPTH.

    Text with at most MAX_JSON_DEPTH brackets cannot: two C-speed counts decide most frames.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    if _nesting(text)[0] > MAX_JSON_DEPTH:
        raise JsonTooDeep()


def dump_json(value: Any) -> str:
    """The one JSON encoder for data crossing the broker (compact, UTF-8 kept).

    A string holding an unpaired surrogate (what the JSON escape ``"\\ud800"`` decodes to)
    cannot be sent as UTF-8: such a value is written with ``\\u`` escapes instead, as the
    client sent it, so every frame carrying it can still be written to every transport.
    NaN and infinities are not JSON, and nesting deeper than MAX_JSON_DEPTH is not what the
    broker reads: they raise ValueError (``JsonTooDeep``; only ``publish()`` callers can pass
    them, the codecs never decode them).
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise JsonTooDeep() from None
    _check_depth(text)
    return text


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: Python would make it inf, sent on as "Infinity"
        raise ValueError("number out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def load_json(text: str | bytes) -> Any:
    """The one JSON decoder for input from clients: RFC 8259 JSON, or ValueError.

    Python's json accepts NaN and Infinity, and turns 1e999 into inf: no client could read
    them back once forwarded (dump_json would write ``Infinity``). It also raises
    RecursionError on deep nesting, and reads bytes in UTF-16 and UTF-32 too. Here all of
    these are ValueError: bytes must be UTF-8 (``UnicodeDecodeError``), and nesting deeper
    than MAX_JSON_DEPTH is ``JsonTooDeep``.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = _decoder.decode(text)
    except RecursionError:
        # Too deep for the parser: JSON nested too deeply if its brackets close, else not
        # JSON at all (an unclosed run of ``[``).
        if not _nesting(text)[1]:
            raise ValueError("not JSON: unbalanced brackets") from None
        raise JsonTooDeep() from None
    _check_depth(text)
    return value


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
            case Disconnect():
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
