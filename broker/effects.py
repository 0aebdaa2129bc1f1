"""What the session asks its driver to carry out with I/O (session -> driver), and the results.

Each effect names one piece of I/O against the router or the stores. The driver
(broker.connection, with broker.execute) carries it out and hands the session back its raw
result (``Session.effect_done``), or the error it ended in (``Session.effect_failed``); the
session builds the reply. The result of each effect:

=====================  =============================================================
effect                 result handed back
=====================  =============================================================
JoinRoom               the history page read after ``since`` (None: no history room);
                       ``persist`` over its bound raises ``errors.PersistentRefused``
LeaveRooms             None
PublishRooms           the trigger's id
SendDirect             the message's id; None: no such destination is connected
ReadHistory            the history page
ReadPresence           the room's members and their connections (member -> count)
ConfirmMessage         None
QueryStatus            ``Counts``
ListConnections        the registry's entries
ListRooms              (room keys, whether there were more)
ReadStats              ``Stats``
Kick                   the ids of the connections told to close (empty: none matched)
=====================  =============================================================

Acknowledged messages and resume state are effects too, run by the driver outside a request:
``HoldAck``/``CompleteAck`` (in delivery order), ``TakeResume`` and ``SaveResume``; so is
reading a login's persistent subscriptions at the open (``LoadPersistent``: the entries, by
request id), and forgetting those a restore refused for good (``ForgetPersistent``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooms import Room

from .filters import Scalar
from .history import HistoryRule
from .subscription import Subscription

@dataclass(slots=True)
class JoinRoom:
    subscription: Subscription
    # A history room's rule (None: the room keeps no history), and the offset to replay after.
    history: HistoryRule | None = None
    since: int | None = None
    # A persistent subscribe: kept for the login once joined (refused over its bound).
    persist: KeepPersistent | None = None


@dataclass(slots=True)
class LeaveRooms:
    subscriptions: list[Subscription]
    # Persistent subscriptions among them: forgotten for the login too.
    forget: ForgetPersistent | None = None


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
    tags: dict[str, Scalar] | None = None  # what subscriptions' filters match


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
class ListConnections:
    pass


@dataclass(slots=True)
class ListRooms:
    """Up to ``limit`` rooms with a subscription anywhere in the cluster (admin ``rooms``)."""

    limit: int


@dataclass(slots=True)
class ReadStats:
    pass


@dataclass(slots=True)
class Kick:
    """Close every connection with this id, or of this login (at least one is set)."""

    connection_id: str | None
    login_id: str | None


@dataclass(slots=True)
class ReadPresence:
    room: Room
    stats: bool = False
    admin: bool = False  # the admin console's (answered as an admin result)


Effect = (JoinRoom | LeaveRooms | SendDirect | PublishRooms | QueryStatus | ListConnections
          | ListRooms
          | ReadStats | Kick | ReadHistory | ConfirmMessage | ReadPresence)


@dataclass(frozen=True, slots=True)
class Counts:
    """The cluster's open connections and rooms, and since when this process serves."""

    connections: int
    rooms: int
    online_since: str


@dataclass(frozen=True, slots=True)
class Stats:
    """Every process's registry statistics, and the cluster's counts."""

    processes: list[dict[str, Any]]
    connections: int
    rooms: int


# ---------------------------------------------------------------- outside a request


@dataclass(frozen=True, slots=True)
class HoldAck:
    """Record that this connection holds acknowledged message ``message_id`` (it owes a
    confirmation), then hand ``frame`` back to ``Session.hold_recorded``: the message is shown
    only once its hold is recorded, so no other connection's confirmation can complete it
    meanwhile."""

    message_id: str
    frame: str | bytes


@dataclass(frozen=True, slots=True)
class CompleteAck:
    """This connection has confirmed acknowledged message ``message_id`` (or queued it, on a
    protocol without confirmations)."""

    message_id: str


AckUpdate = HoldAck | CompleteAck


@dataclass(frozen=True, slots=True)
class TakeResume:
    """Take (once) the resume state saved under ``key`` for an identity with ``fingerprint``."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class SaveResume:
    """Save ``state`` under ``key`` for ``ttl`` seconds (see broker.resume)."""

    key: str
    fingerprint: str
    state: str
    ttl: float


@dataclass(frozen=True, slots=True)
class KeepPersistent:
    """Keep ``entry`` (broker.persistent) under ``request_id_json`` for the login at
    ``owner``, unless it already keeps ``limit`` others; the login's entries live ``ttl``
    seconds from now."""

    owner: str
    request_id_json: str
    entry: str
    limit: int
    ttl: float


@dataclass(frozen=True, slots=True)
class ForgetPersistent:
    """Forget these request ids' persistent subscriptions of the login at ``owner``."""

    owner: str
    request_ids_json: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LoadPersistent:
    """Read the persistent subscriptions of the login at ``owner`` (request id's JSON ->
    entry), and keep them ``ttl`` seconds from now."""

    owner: str
    ttl: float
