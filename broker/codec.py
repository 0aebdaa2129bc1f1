"""What the serve loop and the driver need from a codec: the ``Codec`` protocol and its values.

A codec (broker.codecs.jsoncodec, broker.codecs.stomp) turns inbound frames into session
requests and the session's answers and the hub's deliveries into frames. It does no I/O, and
keeps no session state: what it needs of a request to answer it travels with that request as
its context (``Request.meta``, opaque to everyone but the codec that made it), and what the
connect negotiated is a value the serve loop is handed (``Connecting``), never an attribute
read afterwards.

What a wire protocol allows is declared once, as data (``Capabilities``), instead of being
found by ``hasattr`` on the codec or read from a flag it sets: the driver asks
``codec.caps.resumable``, never ``getattr(codec, "rich")``. Whether a reply ends the
connection is part of the answer to that reply (``Answer.ending``), not a mutable attribute
read afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from .credentials import Credentials
from .disconnect import Disconnect
from .identity import Identity
from .messages import Confirmed, DirectMessage, PresenceEvent
from .replies import Reply
from .requests import CodecContext, Request
from .subscription import Subscription


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a wire protocol (one codec, one dialect) can carry.

    ``resumable``: the welcome hands out a resume token, and a connection may present one
    (the rich JSON dialect). ``confirms``: the client confirms acknowledged messages itself
    (a ``confirm`` request); without it, queued for writing counts as confirmed (STOMP).
    ``ends_on_error``: every error reply ends the connection (standard STOMP)."""

    resumable: bool = False
    confirms: bool = False
    ends_on_error: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply as the wire shows it: the frame (None: the protocol answers nothing) and, when
    the protocol ends the connection after it (STOMP: DISCONNECT, an ERROR), why."""

    frame: str | bytes | None
    ending: Disconnect | None = None


@dataclass(frozen=True, slots=True)
class Heartbeats:
    """The heart-beat periods a connect negotiated, in ms (0: none that way; broker.heartbeat).

    ``out_ms``: the server writes at least this often; ``in_ms``: the client promised to."""

    out_ms: int = 0
    in_ms: int = 0


NO_HEARTBEATS = Heartbeats()


@dataclass(frozen=True, slots=True)
class Connecting:
    """What a connect frame carries (a STOMP CONNECT, a JSON-lines ``connect`` line): the
    credentials, an earlier connection's resume token, and the heart-beats it negotiated."""

    credentials: Credentials
    resume_token: str | None = None
    heartbeats: Heartbeats = NO_HEARTBEATS


class BadConnect(ValueError):
    """The first frame does not carry credentials; its text is the refusal's reason."""


class ParsedFrame(Protocol):
    """A frame its framing already cut and parsed (``broker.codecs.stompframe.Frame``, from the
    TCP gate's STOMP parsers): only the codec of that framing is handed one."""

    command: str
    headers: dict[str, str]
    body: bytes


# What a codec decodes: a whole text or binary frame, a parsed frame, or None for a binary
# frame handed to a text-only codec (it is not text).
Wire: TypeAlias = "str | bytes | ParsedFrame | None"


class Codec(Protocol):
    """Every codec call the serve loop (broker.serve), the heart-beats and the driver make.

    The TCP gate holds its ``StompCodec`` by its type for the one call only it makes
    (``closing_frame``: a STOMP ERROR says why it closes where no close code can)."""

    caps: Capabilities

    # ---- connecting (broker.serve)

    def connect(self, data: Wire, remote_addr: str | None) -> Connecting:
        """The connect frame read first where no handshake carries credentials (a STOMP
        CONNECT, a JSON-lines ``connect`` line); raises BadConnect for anything else."""
        ...

    def refused(self, reason: str, detail: str | None = None) -> str | bytes:
        """The frame refusing a connection for ``reason``; ``detail``: a longer text, where
        the protocol has room for one (a STOMP ERROR's body)."""
        ...

    def heartbeat(self) -> str | bytes | None:
        """The frame of a heart-beat (None: the protocol has none)."""
        ...

    # ---- inbound (broker.serve's receive loop)

    def decode(self, data: Wire) -> Request: ...

    def malformed(self, detail: str) -> Request:
        """A request for input the framing could not cut (a broken STOMP byte stream)."""
        ...

    # ---- replies and deliveries (the driver)

    def answer(self, reply: Reply, context: CodecContext = None) -> Answer:
        """``context``: the request's own codec context (``Request.meta``)."""
        ...

    def welcome(self, identity: Identity, connection_id: str, resume_token: str | None,
                resumed: bool | None = None, restored: list[dict[str, Any]] | None = None,
                persistent: list[dict[str, Any]] | None = None,
                *, resume_ttl: float | None = None) -> str | bytes:
        """``persistent``: the login's persistent subscriptions restored at the open
        (``requestId``, ``room``, and a history room's ``offset``) and refused (``refused``:
        the error code), None when it keeps none. ``resume_ttl``: the seconds a closed
        connection's state is kept for its ``resume_token`` (shown with the token)."""
        ...

    def publish(self, sub: Subscription, data_json: str, room_key: str, trigger_id: str,
                offset: int | None = None) -> str | bytes: ...

    def message(self, message: DirectMessage) -> str | bytes: ...

    def watched(self, sub: Subscription, message: DirectMessage) -> str | bytes: ...

    def presence(self, sub: Subscription, event: PresenceEvent) -> str | bytes | None:
        """``event.member`` (``broker.presence``) joined or left the room of ``sub``, which
        asked to be told; None: the protocol cannot show it."""
        ...

    def confirmed(self, event: Confirmed) -> str | bytes | None:
        """None: the protocol does not tell senders (``caps.confirms`` is False)."""
        ...

    def resync(self, recovered: list[dict[str, Any]] | None = None) -> str | bytes | None: ...

    # ---- the server API's frames (broker.api)

    def server_message(self, identity: Identity, message_id: str, data_json: str
                       ) -> str | bytes:
        """Data the backend sent to this client's login (``publish_to_users``)."""
        ...

    def broadcast(self, message_id: str, data_json: str) -> str | bytes:
        """Data the backend sent to every connection (``broadcast``)."""
        ...

    def unsubscribed(self, sub: Subscription, reason: str) -> str | bytes | None:
        """The broker ended ``sub`` (the server API's ``unsubscribe``, or a re-check);
        None: the protocol has no frame for it."""
        ...
