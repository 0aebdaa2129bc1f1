"""What a codec hands the session: one value per client request (codec -> session).

A request's ``meta`` is its codec context (``CodecContext``): what the codec that made it needs
to answer it (STOMP: ``broker.codecs.stomp.StompContext``, its ``receipt`` and ``transaction``
headers), handed back with its reply (``Codec.answer(reply, request.meta)``); the session never
reads it. Request ids are bounded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .jsontext import dump_json
from .subscription import DestinationPattern

RequestId = str | int | float
# A request's codec context: opaque here and to the session; only the codec that made it reads
# it back, narrowed to its own type (the JSON codec has none: None).
CodecContext: TypeAlias = object
# A request id is a string of at most this many characters, or a number written in at most
# this many: the session keeps it per subscription, and resume state saves it again.
MAX_REQUEST_ID_CHARS = 128


def request_id_ok(value: object) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


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
    meta: CodecContext = None  # travels to this request's reply (Codec.answer)
    # The last offset the client has of this (history) room: replay what came after it.
    since: Any = None
    # Tell this subscription who joins and leaves its room (broker.presence).
    presence: Any = False
    # The event filter (a JSON value; broker.filters compiles it): None = every trigger.
    filter: Any = None
    # Keep it for the login: every later connection of that login gets it back
    # (broker.persistent).
    persistent: Any = False


@dataclass(slots=True)
class Unsubscribe:
    request_id: Any
    meta: CodecContext = None


@dataclass(slots=True)
class UnsubscribeAll:
    request_id: Any = None
    meta: CodecContext = None


@dataclass(slots=True)
class Ping:
    request_id: Any = None
    text: bool = False  # High-templar's bare "ping" text frame
    meta: CodecContext = None


@dataclass(slots=True)
class Status:
    request_id: Any = None
    meta: CodecContext = None


@dataclass(slots=True)
class Send:
    request_id: Any
    to: Any
    data: Any
    text: str | None = None  # the exact text a STOMP client sent, kept for STOMP receivers
    content_type: str | None = None  # and its content-type (STOMP receivers see it)
    meta: CodecContext = None
    ack: Any = False  # acknowledged delivery: stored until the recipient confirms


@dataclass(slots=True)
class Publish:
    request_id: Any
    rooms: Any
    data: Any
    meta: CodecContext = None
    history: Any = False  # record the trigger in its rooms' history (BROKER_HISTORY)
    tags: Any = None  # the trigger's tags (broker.filters.check_tags)


@dataclass(slots=True)
class History:
    """``{"type":"history","room":R,"limit":n,"since":s}``: a room's recorded triggers."""

    request_id: Any
    room: Any
    limit: Any = None
    since: Any = None
    meta: CodecContext = None


@dataclass(slots=True)
class PresenceQuery:
    """``{"type":"presence"|"presence_stats","room":R}``: a room's members (or counts)."""

    request_id: Any
    room: Any
    stats: bool = False
    meta: CodecContext = None


@dataclass(slots=True)
class Confirm:
    """``{"type":"confirm","id":M}``: this connection has processed acknowledged message M."""

    request_id: Any
    message_id: Any
    meta: CodecContext = None


@dataclass(slots=True)
class Admin:
    request_id: Any
    action: Any
    args: dict[str, Any] = field(default_factory=dict)
    meta: CodecContext = None


@dataclass(slots=True)
class Goodbye:
    """The client ends the session (STOMP DISCONNECT); answered with success, then closed."""

    request_id: Any = None
    meta: CodecContext = None


@dataclass(slots=True)
class Invalid:
    """A frame the codec could not turn into a request; answered with ``code``."""

    code: str
    request_id: Any = None
    detail: str | None = None
    meta: CodecContext = None


Request = (Subscribe | Unsubscribe | UnsubscribeAll | Ping | Status | Send | Publish | Admin
           | Goodbye | Invalid | History | Confirm | PresenceQuery)
