"""The rules of each request: what a request may do, and what its effect's result answers.

Plain functions of the request and of the connection that asks (``Requester``: its identity,
its subscription table, its settings), called by the session (broker.session), which owns that
state and the order things happen in:

- ``decide(request, requester)`` checks the request against the identity (profile, rooms,
  realm), the subscription table and the settings, and returns a ``Step``: the reply to queue at
  once, or the one ``Effect`` the driver must carry out first (with the reply to use if the
  result adds nothing). A subscribe records its subscription in the table here; the session
  takes it back if the effect fails.
- ``result_reply(effect, request_id, result)`` is the reply an effect's result makes (None: the
  step's own reply), by the result table of broker.effects.

Nothing here does I/O, keeps state or reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rooms import InvalidRoom, Room, parse_room

from . import errors
from .effects import (
    ConfirmMessage,
    Counts,
    Effect,
    ForgetPersistent,
    JoinRoom,
    KeepPersistent,
    Kick,
    LeaveRooms,
    ListConnections,
    ListRooms,
    PublishRooms,
    QueryStatus,
    ReadHistory,
    ReadPresence,
    ReadStats,
    SendDirect,
    Stats,
)
from .filters import InvalidFilter, InvalidTags, check_tags, compile_filter
from .history import HistoryPolicy, recovered, valid_offset
from .identity import Identity, Profile, resolve_destination
from .jsontext import dump_json
from .persistent import MAX_ENTRY_CHARS, entry_of
from .presence import PresencePolicy, presence_members
from .replies import (
    AdminResult,
    Error,
    HistoryResult,
    Pong,
    PresenceResult,
    Reply,
    StatusInfo,
    Success,
)
from .requests import (
    MAX_REQUEST_ID_CHARS,
    Admin,
    Confirm,
    Goodbye,
    History,
    Invalid,
    Ping,
    PresenceQuery,
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
from .subscription import Subscription

# Regex watches (STOMP destination-type:1) one connection may hold: each may keep its engine's
# memory (RE2: up to broker.codecs.stomp.PATTERN_MAX_MEM) and is matched against every direct
# message to its profile.
MAX_REGEX_WATCHES = 16
ADMIN_ACTIONS = ("connections", "kick", "presence", "rooms", "stats")
MAX_ADMIN_ROOMS = 1000  # rooms one admin ``rooms`` answer lists at most
STATS_TOTALS = ("connections", "triggers_per_s", "deliveries_per_s", "drops_per_s",
                "triggers", "deliveries", "drops")


class RuleSettings(Protocol):
    """The settings the rules read (broker.session.SessionSettings)."""

    @property
    def max_subscriptions(self) -> int: ...
    @property
    def public_status(self) -> bool: ...
    @property
    def history(self) -> HistoryPolicy: ...
    @property
    def presence(self) -> PresencePolicy: ...
    @property
    def max_persistent(self) -> int: ...
    @property
    def persistent_ttl(self) -> float: ...


class Requester(Protocol):
    """The connection that asks (broker.session.Session): ``subscriptions`` maps a request
    id's canonical JSON text to its Subscription, and subscribe/unsubscribe change it."""

    identity: Identity
    subscriptions: dict[str, Subscription]

    @property
    def settings(self) -> RuleSettings: ...


@dataclass(slots=True)
class Step:
    """A request's outcome: the reply, and the effect to carry out before it (if any)."""

    reply: Reply | None
    effect: Effect | None = None


def decide(req: Request, s: Requester) -> Step:
    """The rule of one request: its reply, or the one effect to carry out first."""
    rid = req.request_id
    if rid is not None and not request_id_short(rid):
        # Not echoed: the bound is what keeps ids out of memory (and out of replies).
        return Step(Error(errors.REQUEST_ID_TOO_LONG, None,
                          f"requestId: at most {MAX_REQUEST_ID_CHARS} characters"))
    match req:
        case Subscribe():
            return _subscribe(req, s)
        case Unsubscribe():
            return _unsubscribe(req, s)
        case UnsubscribeAll():
            subs = list(s.subscriptions.values())
            s.subscriptions.clear()
            return Step(Success(req.request_id),
                        LeaveRooms(subs, _forget(subs, s)) if subs else None)
        case Ping():
            return Step(Pong(req.request_id, req.text))
        case Status():
            if not (s.settings.public_status or s.identity.rule.admin):
                return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED, req.request_id))
            return Step(None, QueryStatus())
        case Send():
            return _send(req, s)
        case Publish():
            return _publish(req, s)
        case Admin():
            return _admin(req, s)
        case Goodbye():
            return Step(Success(req.request_id))
        case History():
            return _history(req, s)
        case Confirm():
            return _confirm(req, s)
        case PresenceQuery():
            return _presence(req, s)
        case Invalid():
            return Step(Error(req.code, req.request_id, req.detail))
    return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED))  # pragma: no cover


def _subscribe(req: Subscribe, s: Requester) -> Step:
    rid, pattern = req.request_id, req.pattern
    room_value = req.room
    if pattern is not None and room_value is None:
        # A regex watch without a /<profile>/ prefix watches the one profile this identity
        # may watch (none: agents, refused below as room-not-found).
        watches = s.identity.rule.watches
        if len(watches) > 1:
            return Step(Error(errors.INVALID_PATTERN, rid,
                              "start the regular expression with /<profile>/"))
        room_value = {"client": "*",
                      "profile": str(watches[0] if watches else Profile.AGENT)}
    if rid is None:
        return Step(Error(errors.NO_REQUEST_ID))
    room = _named_room(room_value, rid, s)
    if isinstance(room, Step):
        return room
    since = req.since
    if (bad := _bad_since(since, rid)) is not None:
        return bad
    if not isinstance(req.presence, bool):
        return Step(Error(errors.INVALID_MESSAGE, rid, "'presence' must be a boolean"))
    keep = _keep(req, rid, s)
    if isinstance(keep, Step):
        return keep
    key = dump_json(rid)
    existing = s.subscriptions.get(key)
    if existing is not None:
        if existing.room == room:
            return Step(Success(rid))
        return Step(Error(errors.REQUEST_ID_IN_USE, rid))
    if not s.identity.may_subscribe(room):
        return Step(Error(errors.ROOM_NOT_FOUND, rid))
    if req.presence and not s.settings.presence.tracked(room):
        return Step(Error(errors.PRESENCE_NOT_ENABLED, rid))
    event_filter = None
    if req.filter is not None:
        try:
            event_filter = compile_filter(req.filter)  # once per subscription
        except InvalidFilter as exc:
            return Step(Error(exc.code, rid, exc.detail))
    if len(s.subscriptions) >= s.settings.max_subscriptions:
        return Step(Error(errors.TOO_MANY_SUBSCRIPTIONS, rid))
    if pattern is not None and sum(other.pattern is not None for other in
                                   s.subscriptions.values()) >= MAX_REGEX_WATCHES:
        return Step(Error(errors.TOO_MANY_SUBSCRIPTIONS, rid,
                          f"at most {MAX_REGEX_WATCHES} regular-expression watches"))
    sub = Subscription(rid, key, room, pattern=pattern, presence=req.presence,
                       filter=event_filter, persistent=keep is not None)
    s.subscriptions[key] = sub
    rule = s.settings.history.rule_for(room)
    if rule is None:
        # No history to replay (a wildcard room, or one no BROKER_HISTORY rule covers):
        # a ``since`` cannot be honoured, and the reply says so.
        return Step(Success(rid, {"recovered": False} if since is not None else None),
                    JoinRoom(sub, persist=keep))
    # The driver answers: it reads the room's offset (and the replay after ``since``).
    return Step(Success(rid), JoinRoom(sub, rule, since, keep))


def _keep(req: Subscribe, rid: Any, s: Requester) -> KeepPersistent | Step | None:
    """A persistent subscribe: what to keep for the login (broker.persistent), or the
    refusal; None: not persistent."""
    if not isinstance(req.persistent, bool):
        return Step(Error(errors.INVALID_MESSAGE, rid, "'persistent' must be a boolean"))
    if not req.persistent:
        return None
    owner = s.identity.destination
    if owner is None:
        return Step(Error(errors.PERSISTENT_NEEDS_LOGIN, rid,
                          "only a connection with a login keeps subscriptions"))
    if req.pattern is not None:
        return Step(Error(errors.PERSISTENT_NOT_ALLOWED, rid,
                          "a regular-expression watch cannot be persistent"))
    entry = entry_of(req)
    if len(entry) > MAX_ENTRY_CHARS:
        return Step(Error(errors.PERSISTENT_TOO_LARGE, rid,
                          f"a persistent subscription keeps at most {MAX_ENTRY_CHARS} "
                          "characters"))
    return KeepPersistent(owner, dump_json(rid), entry, s.settings.max_persistent,
                          s.settings.persistent_ttl)


def _forget(subs: list[Subscription], s: Requester) -> ForgetPersistent | None:
    """The persistent ones among ``subs``, which the client unsubscribed: forgotten for the
    login too (None: none is persistent)."""
    rids = tuple(sub.request_id_json for sub in subs if sub.persistent)
    owner = s.identity.destination
    return ForgetPersistent(owner, rids) if rids and owner is not None else None


def _unsubscribe(req: Unsubscribe, s: Requester) -> Step:
    rid = req.request_id
    if rid is None:
        return Step(Error(errors.NO_REQUEST_ID))
    if (bad := _bad_request_id(rid)) is not None:
        return bad
    sub = s.subscriptions.pop(dump_json(rid), None)
    if sub is None:
        return Step(Error(errors.NOT_SUBSCRIBED, rid))
    return Step(Success(rid), LeaveRooms([sub], _forget([sub], s)))


def _send(req: Send, s: Requester) -> Step:
    rid = req.request_id
    if not isinstance(req.to, str):
        return Step(Error(errors.INVALID_MESSAGE, rid, "'to' must be a destination string"))
    # the address of the one client it names, in the sender's realm (broker.identity)
    to = resolve_destination(s.identity.realm, req.to)
    if to is None:
        return Step(Error(errors.DESTINATION_NOT_FOUND, rid, "not a client destination"))
    if not isinstance(req.ack, bool):
        return Step(Error(errors.INVALID_MESSAGE, rid, "'ack' must be a boolean"))
    return Step(Success(rid), SendDirect(to, dump_json(req.data), req.text, req.ack,
                                         req.content_type))


def _publish(req: Publish, s: Requester) -> Step:
    rid = req.request_id
    if not isinstance(req.rooms, list) or not req.rooms:
        return Step(Error(errors.INVALID_MESSAGE, rid, "'rooms' must be a non-empty list"))
    try:
        rooms = [s.identity.local_room(parse_room(r)) for r in req.rooms]
    except InvalidRoom as exc:
        return Step(Error(errors.INVALID_ROOM, rid, str(exc)))
    if not all(s.identity.may_publish(r) for r in rooms):
        return Step(Error(errors.ROOM_NOT_ALLOWED, rid))
    if not isinstance(req.history, bool):
        return Step(Error(errors.INVALID_MESSAGE, rid, "'history' must be a boolean"))
    try:
        tags = check_tags(req.tags)
    except InvalidTags as exc:
        return Step(Error(errors.INVALID_TAGS, rid, exc.detail))
    return Step(Success(rid), PublishRooms(rooms, dump_json(req.data), req.history, tags))


def _history(req: History, s: Requester) -> Step:
    """A room's history is readable by whoever may subscribe to that room."""
    rid = req.request_id
    room = _readable(req.room, rid, s)
    if isinstance(room, Step):
        return room
    rule = s.settings.history.rule_for(room)
    if rule is None:
        detail = ("history is kept per concrete room" if not room.is_concrete
                  else "no BROKER_HISTORY rule covers this room")
        return Step(Error(errors.HISTORY_NOT_ENABLED, rid, detail))
    limit = rule.size if req.limit is None else req.limit
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return Step(Error(errors.INVALID_MESSAGE, rid, "limit must be a positive integer"))
    if (bad := _bad_since(req.since, rid)) is not None:
        return bad
    return Step(None, ReadHistory(room, min(limit, rule.size), req.since))


def _presence(req: PresenceQuery, s: Requester) -> Step:
    """A room's presence is seen by whoever may subscribe to that room, unless presence is
    off for it (BROKER_PRESENCE, BROKER_PRESENCE_OFF)."""
    rid = req.request_id
    room = _readable(req.room, rid, s)
    if isinstance(room, Step):
        return room
    if not s.settings.presence.tracked(room):
        return Step(Error(errors.PRESENCE_NOT_ENABLED, rid))
    return Step(None, ReadPresence(room, req.stats))


def _confirm(req: Confirm, s: Requester) -> Step:
    rid = req.request_id
    if (bad := _bad_request_id(rid)) is not None:
        return bad
    mid = req.message_id
    if not isinstance(mid, str) or not mid or len(mid) > 128:
        return Step(Error(errors.INVALID_MESSAGE, rid, "'id' must be a message id"))
    if s.identity.destination is None:
        # Acknowledged messages go to client destinations: without a login, none is ours.
        return Step(Success(rid))
    return Step(Success(rid), ConfirmMessage(mid))


def _admin(req: Admin, s: Requester) -> Step:
    rid = req.request_id
    if not s.identity.rule.admin:
        return Step(Error(errors.MESSAGE_TYPE_NOT_ALLOWED, rid))
    match req.action:
        case "connections":
            return Step(None, ListConnections())
        case "stats":
            return Step(None, ReadStats())
        case "rooms":
            limit = req.args.get("limit", 100)
            if (not isinstance(limit, int) or isinstance(limit, bool)
                    or not 1 <= limit <= MAX_ADMIN_ROOMS):
                return Step(Error(errors.INVALID_MESSAGE, rid,
                                  f"limit must be an integer from 1 to {MAX_ADMIN_ROOMS}"))
            return Step(None, ListRooms(limit))
        case "presence":
            # any room: the admin console watches the broker, it does not subscribe
            try:
                room = parse_room(req.args.get("room"))
            except InvalidRoom as exc:
                return Step(Error(errors.INVALID_ROOM, rid, str(exc)))
            if not s.settings.presence.tracked(room):
                return Step(Error(errors.PRESENCE_NOT_ENABLED, rid))
            return Step(None, ReadPresence(room, admin=True))
        case "kick":
            conn_id, login_id = req.args.get("connection_id"), req.args.get("login_id")
            if not isinstance(conn_id, str) and not isinstance(login_id, str):
                return Step(Error(errors.INVALID_MESSAGE, rid,
                                  "kick needs connection_id or login_id"))
            return Step(None, Kick(conn_id if isinstance(conn_id, str) else None,
                                   login_id if isinstance(login_id, str) else None))
    return Step(Error(errors.UNKNOWN_ACTION, rid, f"actions: {sorted(ADMIN_ACTIONS)}"))


def _named_room(room_value: Any, rid: Any, s: Requester) -> Room | Step:
    """The room a subscribe, history or presence request names, read in the client's realm;
    else the refusal (a bad request id, a profile that cannot subscribe, an invalid room)."""
    if (bad := _bad_request_id(rid)) is not None:
        return bad
    if not s.identity.rule.can_subscribe:
        return Step(Error(errors.PROFILE_CANNOT_SUBSCRIBE, rid))
    try:
        return s.identity.local_room(parse_room(room_value))
    except InvalidRoom as exc:
        return Step(Error(errors.INVALID_ROOM, rid, str(exc)))


def _readable(room_value: Any, rid: Any, s: Requester) -> Room | Step:
    """The room a history or presence request names, when the client may subscribe to it
    (what it may read); else the refusal."""
    room = _named_room(room_value, rid, s)
    if not isinstance(room, Step) and not s.identity.may_subscribe(room):
        return Step(Error(errors.ROOM_NOT_FOUND, rid))
    return room


def _bad_request_id(rid: Any) -> Step | None:
    """A given id that is neither a string nor a number (a missing one is the caller's)."""
    if rid is None or request_id_ok(rid):
        return None
    return Step(Error(errors.INVALID_MESSAGE, rid, "requestId must be a string or number"))


def _bad_since(since: Any, rid: Any) -> Step | None:
    """A ``since`` given that is not an offset."""
    if since is None or valid_offset(since):
        return None
    return Step(Error(errors.INVALID_MESSAGE, rid,
                      "since must be an offset (a non-negative integer)"))


def result_reply(effect: Effect, rid: Any, result: Any) -> Reply | None:
    """The reply ``effect``'s ``result`` makes (None: the step's own reply). A history room's
    join is the session's (broker.delivery answers it, with its replay)."""
    match effect:
        case PublishRooms():
            return Success(rid, {"id": result})
        case SendDirect():
            if result is None:
                return Error(errors.DESTINATION_NOT_FOUND, rid)
            return Success(rid, {"id": result})
        case ReadPresence(admin=True):
            return AdminResult(rid, {"action": "presence", "room": effect.room.original,
                                     "members": presence_members(result)})
        case ReadPresence():
            return PresenceResult(rid, effect.room, result, effect.stats)
        case ReadHistory():
            return HistoryResult(rid, effect.room, result.top, list(result.entries),
                                 None if effect.since is None
                                 else recovered(effect.since, result))
        case QueryStatus():
            counts: Counts = result
            return StatusInfo(rid, counts.connections, counts.rooms, counts.online_since)
        case ListConnections():
            return AdminResult(rid, {"action": "connections", "connections": result})
        case ListRooms():
            keys, more = result
            return AdminResult(rid, {"action": "rooms", "more": more,
                                     # as stored (a static-realm room keeps its realm
                                     # key): what the admin ``presence`` action takes
                                     "rooms": [Room.from_key(k).original for k in keys]})
        case ReadStats():
            stats: Stats = result
            totals = {k: sum(p.get(k, 0) for p in stats.processes) for k in STATS_TOTALS}
            totals.update(connections=stats.connections, rooms=stats.rooms)
            return AdminResult(rid, {"action": "stats", "stats": totals,
                                     "processes": stats.processes})
        case Kick():
            if not result:
                return Error(errors.CONNECTION_NOT_FOUND, rid)
            return AdminResult(rid, {"action": "kick", "kicked": result})
    return None


# ---------------------------------------------------------------- the server API (broker.api)


def in_rooms(subscriptions: list[Subscription], room_keys: list[str]) -> list[Subscription]:
    """The subscriptions the server API's ``unsubscribe`` ends: those to exactly one of these
    rooms (canonical keys; a wildcard subscription ends only when its own wildcard room is
    named, never because a concrete room it matches is)."""
    keys = set(room_keys)
    return [sub for sub in subscriptions if sub.room.key in keys]


def no_longer_allowed(subscriptions: list[Subscription], identity: Identity
                      ) -> list[Subscription]:
    """The subscriptions a re-check ends: those ``identity`` (the auth API's new answer) may
    no longer subscribe to, by the rule a subscribe is checked with."""
    return [sub for sub in subscriptions if not identity.may_subscribe(sub.room)]


def same_client(before: Identity, after: Identity) -> bool:
    """A re-check's answer still names the client that connected (its login, profile and
    realm: what the hub and the registry keyed it by). Otherwise the connection is closed."""
    return (before.login_id == after.login_id and before.profile == after.profile
            and before.realm == after.realm)
