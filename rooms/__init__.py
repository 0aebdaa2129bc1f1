"""rooms: the room model of the broker (PROTOCOL.md §1), pure Python with no I/O.

Owns room validation and canonical keys (`parse_room`, `Room`), the Match and Permission
relations (`matches`, `permits`, `permitted`) and the process-local `SubscriptionIndex`.
"""

from .index import SubscriptionIndex
from .room import (
    MAX_KEYS,
    MAX_ROOM_BYTES,
    WILDCARD,
    InvalidRoom,
    Room,
    Scalar,
    matches,
    parse_room,
    permits,
    permitted,
)

__all__ = [
    "MAX_KEYS",
    "MAX_ROOM_BYTES",
    "WILDCARD",
    "InvalidRoom",
    "Room",
    "Scalar",
    "SubscriptionIndex",
    "matches",
    "parse_room",
    "permits",
    "permitted",
]
