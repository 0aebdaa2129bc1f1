"""The server API from Python: what the backend asks of the broker beside triggers.

The same operations as ``POST /api/<operation>`` (docs/protocol.md "Server API"; the HTTP
answers are ``broker.serverapi``'s, from these functions), async and, for sync code,
``_sync`` (run as ``broker.publish``'s sync calls are):

- ``publish_to_users(logins, data)``: to every connection of each login, on any process;
- ``broadcast(data)``: to every connection of the cluster, whatever it subscribed to;
- ``disconnect(login=..., connection_id=..., reason=...)``: close them, with that reason;
- ``unsubscribe(login, rooms)``: end that login's subscriptions to exactly those rooms;
- ``recheck(login)``: each of its connections asks the auth API again and drops what the
  answer no longer allows (closed with ``revoked`` when it no longer admits them);
- ``history(room, limit=None, since=None)``: a room's history, as the client request reads it,
  with no permission check;
- ``connections(login=None)``: the cluster's connections (the admin console's list);
- ``presence(room)``, ``presence_stats(room)``: a room's members (docs/protocol.md
  "Presence"), with no permission check; ``presence-not-enabled`` where presence is off.

Logins are the auth API's (the backend's users): a static-key login of the same name is
another client and is not reached, except by ``disconnect``, which closes a login in every
realm as the admin ``kick`` does. Everything that reaches connections is one message on the
control group every process listens on (``broker.messages``); the answer cannot know which
connections it reached without a round trip to every process, so the functions that name a
login return the connections the cluster's registry lists for it when the message is sent.

Bad input raises ``InvalidRequest`` (its ``code`` names the rule); ``BrokerUnavailable`` when
Redis is down (nothing is known to have been done).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from rooms import InvalidRoom, Room, parse_room

from . import disconnect as closes
from . import errors
from .conf import conf
from .fanout.router import CONTROL_GROUP
from .history import HistoryPage, recovered, valid_offset
from .identity import InvalidIdentity, validate_login
from .jsontext import dump_json
from .messages import Close, DropRooms, Message, Notify, Recheck
from .presence import presence_counts
from .publish import _router, _run

__all__ = ["InvalidRequest", "broadcast", "broadcast_sync", "connections", "connections_sync",
           "disconnect", "disconnect_sync", "history", "history_sync", "presence",
           "presence_stats", "presence_stats_sync", "presence_sync", "publish_to_users",
           "publish_to_users_sync", "recheck", "recheck_sync", "unsubscribe",
           "unsubscribe_sync"]


class InvalidRequest(ValueError):
    """A server API call whose arguments break a rule: ``code`` names it (the HTTP API's
    400 ``error``), the message says more (its ``detail``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# Codes of InvalidRequest (the HTTP API's 400 answers).
INVALID_LOGIN = "invalid-login"
INVALID_LOGINS = "invalid-logins"
INVALID_ROOMS = "invalid-rooms"
INVALID_ROOM = errors.INVALID_ROOM
INVALID_DATA = "invalid-data"
INVALID_REASON = "invalid-reason"
INVALID_CONNECTION_ID = "invalid-connection-id"
NO_TARGET = "no-target"
INVALID_LIMIT = "invalid-limit"
INVALID_SINCE = "invalid-since"
HISTORY_NOT_ENABLED = errors.HISTORY_NOT_ENABLED
PRESENCE_NOT_ENABLED = errors.PRESENCE_NOT_ENABLED

MAX_REASON_CHARS = 100  # within a WebSocket close frame's 123 bytes for any ASCII reason


# ---------------------------------------------------------------- checks (the caller's thread)


def check_login(value: Any) -> str:
    try:
        return validate_login(value)
    except InvalidIdentity:
        raise InvalidRequest(INVALID_LOGIN, "login must be a login id (a non-empty string of "
                                            "at most 256 printable characters, no '/' or '*')"
                             ) from None


def check_logins(value: Any) -> list[str]:
    most = conf().BROKER_MAX_TRIGGER_BATCH
    if not isinstance(value, list) or not value or len(value) > most:
        raise InvalidRequest(INVALID_LOGINS, f"logins must be a list of 1 to {most} login ids "
                                             "(BROKER_MAX_TRIGGER_BATCH)")
    return list(dict.fromkeys(check_login(v) for v in value))


def check_rooms(value: Any) -> list[Room]:
    most = conf().BROKER_MAX_TRIGGER_BATCH
    if not isinstance(value, list) or not value or len(value) > most:
        raise InvalidRequest(INVALID_ROOMS, f"rooms must be a list of 1 to {most} rooms "
                                            "(BROKER_MAX_TRIGGER_BATCH)")
    return [check_room(r) for r in value]


def check_room(value: Any) -> Room:
    try:
        return parse_room(value)
    except InvalidRoom as exc:
        raise InvalidRequest(INVALID_ROOM, f"invalid room: {exc}") from None


def check_data(data: Any) -> str:
    try:
        return dump_json(data)
    except ValueError as exc:  # not JSON, or nested deeper than the broker sends
        raise InvalidRequest(INVALID_DATA, f"data is not JSON the broker sends: {exc}") from None


def check_reason(value: Any) -> str | None:
    """None, or a close reason: 1 to MAX_REASON_CHARS printable ASCII characters (a STOMP
    ERROR header and a WebSocket close frame carry it as it is)."""
    if value is None:
        return None
    if (not isinstance(value, str) or not 0 < len(value) <= MAX_REASON_CHARS
            or not all(" " <= ch <= "~" for ch in value)):
        raise InvalidRequest(INVALID_REASON, f"reason must be 1 to {MAX_REASON_CHARS} "
                                             "printable ASCII characters")
    return value


def check_connection_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise InvalidRequest(INVALID_CONNECTION_ID, "connection_id must be a connection id")
    return value


# ---------------------------------------------------------------- the operations


async def _send(message: Message) -> None:
    await _router().send({CONTROL_GROUP}, message)


async def _listed(login: str | None, every_realm: bool = False) -> list[dict[str, Any]]:
    """The registry's connections (of ``login``: the auth API's, or with ``every_realm``
    any realm's)."""
    entries = await _router().stores.registry.connections()
    if login is None:
        return entries
    return [e for e in entries if e.get("login_id") == login
            and (every_realm or e.get("realm") == "api")]


async def _ids_then_send(login: str, message: Message) -> list[str]:
    ids = [str(e.get("id")) for e in await _listed(login)]
    await _send(message)
    return ids


async def publish_to_users(logins: list[str], data: Any) -> str:
    """Send ``data`` to every connection of each of ``logins`` (the auth API's logins), on
    every process: the JSON dialects get a ``message`` frame ``from`` null, STOMP a MESSAGE to
    the client's own destination. Returns the message id the frames carry."""
    return await _publish_to_users(check_logins(logins), check_data(data))


async def _publish_to_users(logins: list[str], data_json: str) -> str:
    message_id = uuid.uuid4().hex
    await _send(Notify(message_id, data_json, logins))
    return message_id


async def broadcast(data: Any) -> str:
    """Send ``data`` to every connection of the cluster, whatever it subscribed to (the JSON
    dialects: a ``broadcast`` frame; STOMP: a MESSAGE to ``/broadcast``). Returns its id."""
    return await _broadcast(check_data(data))


async def _broadcast(data_json: str) -> str:
    message_id = uuid.uuid4().hex
    await _send(Notify(message_id, data_json))
    return message_id


async def disconnect(*, login: str | None = None, connection_id: str | None = None,
                     reason: str | None = None) -> list[str]:
    """Close the connection ``connection_id``, or every connection of ``login`` (in every
    realm, as the admin ``kick``), with close code 4010 and ``reason`` (``kicked`` when
    None). Returns the ids the registry listed for them."""
    target = _target(login, connection_id)
    return await _disconnect(*target, check_reason(reason))


def _target(login: Any, connection_id: Any) -> tuple[str | None, str | None]:
    if login is None and connection_id is None:
        raise InvalidRequest(NO_TARGET, "disconnect needs login or connection_id")
    return (None if login is None else check_login(login)), check_connection_id(connection_id)


async def _disconnect(login: str | None, connection_id: str | None,
                      reason: str | None) -> list[str]:
    ids = [str(e.get("id")) for e in await _listed(None)
           if e.get("id") == connection_id or (login is not None and e.get("login_id") == login)]
    # Sent whatever the registry lists: a connection registered a moment from now is closed too.
    await _router().close(Close(closes.told(reason), conn_id=connection_id, login_id=login))
    return ids


async def unsubscribe(login: str, rooms: list[Any]) -> list[str]:
    """End every subscription of ``login``'s connections to exactly one of ``rooms`` (a
    wildcard subscription only when its own wildcard room is named); each is told (the rich
    dialect: an ``unsubscribed`` frame). Returns the ids of the login's connections the
    registry lists."""
    return await _unsubscribe(check_login(login), check_rooms(rooms))


async def _unsubscribe(login: str, rooms: list[Room]) -> list[str]:
    return await _ids_then_send(login, DropRooms(login, [r.key for r in rooms]))


async def recheck(login: str) -> list[str]:
    """Each connection of ``login`` asks the auth API again with the credentials it connected
    with, and ends the subscriptions the answer no longer allows (told as ``unsubscribe``
    tells them); one the API no longer admits, or that it answers as another login or
    profile, is closed with 4003 ``revoked``. Returns the ids the registry lists."""
    return await _recheck(check_login(login))


async def _recheck(login: str) -> list[str]:
    return await _ids_then_send(login, Recheck(login))


async def history(room: Any, limit: int | None = None, since: int | None = None
                  ) -> dict[str, Any]:
    """A room's history, as a client's ``history`` request reads it but with no permission
    check: ``{"room", "offset" (its last), "recovered" (only with since), "messages": [{
    "offset", "id", "data"}, ...]}``, oldest first: the latest ``limit`` (default and at most
    the rule's size), or the first ``limit`` after ``since``."""
    return await _history(*check_history(room, limit, since))


def check_history(room: Any, limit: Any, since: Any) -> tuple[Room, int, int | None]:
    parsed = check_room(room)
    rule = conf().history_policy.rule_for(parsed)
    if rule is None:
        raise InvalidRequest(HISTORY_NOT_ENABLED, "history is kept per concrete room"
                             if not parsed.is_concrete
                             else "no BROKER_HISTORY rule covers this room")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise InvalidRequest(INVALID_LIMIT, "limit must be a positive integer")
    if since is not None and not valid_offset(since):
        raise InvalidRequest(INVALID_SINCE, "since must be an offset (a non-negative integer)")
    return parsed, min(rule.size if limit is None else limit, rule.size), since


async def _history(room: Room, limit: int, since: int | None) -> dict[str, Any]:
    page: HistoryPage = await _router().stores.history.read(room.key, since=since, limit=limit)
    answer: dict[str, Any] = {"room": room.original, "offset": page.top}
    if since is not None:
        answer["recovered"] = recovered(since, page)
    answer["messages"] = [{"offset": e.offset, "id": e.id, "data": json.loads(e.data_json)}
                          for e in page.entries]
    return answer


async def presence(room: Any) -> dict[str, Any]:
    """``{"room", "members": [{"login", "profile", "connections"}, ...], "anonymous"}``."""
    return await _presence(check_presence(room), stats=False)


async def presence_stats(room: Any) -> dict[str, Any]:
    """``{"room", "members": <how many>, "connections": <how many, anonymous included>}``."""
    return await _presence(check_presence(room), stats=True)


def check_presence(room: Any) -> Room:
    parsed = check_room(room)
    if not conf().presence_policy.tracked(parsed):
        raise InvalidRequest(PRESENCE_NOT_ENABLED, "presence is off for this room "
                             "(BROKER_PRESENCE, BROKER_PRESENCE_OFF)")
    return parsed


async def _presence(room: Room, stats: bool) -> dict[str, Any]:
    counts = await _router().stores.presence.members(room.key)
    return {"room": room.original, **presence_counts(counts, stats)}


async def connections(login: str | None = None) -> list[dict[str, Any]]:
    """The cluster's connections as the registry lists them (the admin console's list:
    id, login_id, profile, realm, transport, remote_addr, connected_at, subscriptions), or
    those of ``login`` (in every realm: each entry says its realm)."""
    return await _listed(None if login is None else check_login(login), every_realm=True)


# ---------------------------------------------------------------- for sync code


def publish_to_users_sync(logins: list[str], data: Any, timeout: float = 10.0) -> str:
    return _run(_publish_to_users(check_logins(logins), check_data(data)), timeout)


def broadcast_sync(data: Any, timeout: float = 10.0) -> str:
    return _run(_broadcast(check_data(data)), timeout)


def disconnect_sync(*, login: str | None = None, connection_id: str | None = None,
                    reason: str | None = None, timeout: float = 10.0) -> list[str]:
    target = _target(login, connection_id)
    return _run(_disconnect(*target, check_reason(reason)), timeout)


def unsubscribe_sync(login: str, rooms: list[Any], timeout: float = 10.0) -> list[str]:
    return _run(_unsubscribe(check_login(login), check_rooms(rooms)), timeout)


def recheck_sync(login: str, timeout: float = 10.0) -> list[str]:
    return _run(_recheck(check_login(login)), timeout)


def history_sync(room: Any, limit: int | None = None, since: int | None = None,
                 timeout: float = 10.0) -> dict[str, Any]:
    return _run(_history(*check_history(room, limit, since)), timeout)


def presence_sync(room: Any, timeout: float = 10.0) -> dict[str, Any]:
    return _run(_presence(check_presence(room), stats=False), timeout)


def presence_stats_sync(room: Any, timeout: float = 10.0) -> dict[str, Any]:
    return _run(_presence(check_presence(room), stats=True), timeout)


def connections_sync(login: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    checked = None if login is None else check_login(login)
    return _run(_listed(checked, every_realm=True), timeout)
