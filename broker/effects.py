"""What the session asks its driver to carry out with I/O (session -> driver)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooms import Room

from .history import HistoryRule
from .subscription import Subscription

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
