"""What the session answers a request with (session -> codec)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooms import Room

from .history import HistoryEntry

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
class PresenceResult:
    """A room's members and their connection counts (``broker.presence.member_view``;
    ``ANONYMOUS``: connections without a login); ``stats``: shown as counts only."""

    request_id: Any
    room: Room
    members: dict[str, int]
    stats: bool = False


@dataclass(slots=True)
class HistoryResult:
    """The answer to History: ``top`` is the room's last offset (0: nothing recorded);
    ``recovered`` is set when the request had ``since`` (see broker.history.recovered)."""

    request_id: Any
    room: Room
    top: int
    entries: list[HistoryEntry]
    recovered: bool | None = None


Reply = Success | Error | Pong | StatusInfo | AdminResult | HistoryResult | PresenceResult
