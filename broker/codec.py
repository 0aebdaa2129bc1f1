"""What the driver needs from a codec: the ``Codec`` protocol, its ``Capabilities`` and ``Answer``.

A codec (broker.codecs.jsoncodec, broker.codecs.stomp) turns inbound frames into session
requests and the session's answers and the hub's deliveries into frames. It does no I/O.

What a wire protocol allows is declared once, as data (``Capabilities``), instead of being
found by ``hasattr`` on the codec or read from a flag it sets: the driver asks
``codec.caps.resumable``, never ``getattr(codec, "rich")``. Whether a reply ends the
connection is part of the answer to that reply (``Answer.ending``), not a mutable attribute
read afterwards. What a codec needs of a request to answer it travels with that request as
its context (``Request.meta``), opaque to everyone but the codec that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .disconnect import Disconnect
from .identity import Identity
from .messages import Confirmed, DirectMessage
from .replies import Reply
from .requests import CodecContext
from .subscription import Subscription


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a wire protocol (one codec, one dialect) can carry.

    ``resumable``: the welcome hands out a resume token, and a connection may present one
    (the rich JSON dialect). ``confirms``: the client confirms acknowledged messages itself
    (a ``confirm`` request); without it, queued for writing counts as confirmed (STOMP).
    ``resync_frames``: the client is told when live frames may have been missed (a ``resync``
    frame). ``ends_on_error``: every error reply ends the connection (standard STOMP)."""

    resumable: bool = False
    confirms: bool = False
    resync_frames: bool = False
    ends_on_error: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply as the wire shows it: the frame (None: the protocol answers nothing) and, when
    the protocol ends the connection after it (STOMP: DISCONNECT, an ERROR), why."""

    frame: str | bytes | None
    ending: Disconnect | None = None


class Codec(Protocol):
    """The codec calls the driver makes (transports call a few more: see broker.consumers
    and tcpgate.server)."""

    caps: Capabilities

    def answer(self, reply: Reply, context: CodecContext = None) -> Answer:
        """``context``: the request's own codec context (``Request.meta``)."""
        ...

    def welcome(self, identity: Identity, connection_id: str, resume_token: str | None,
                resumed: bool | None = None, restored: list[dict[str, Any]] | None = None
                ) -> str | bytes: ...

    def publish(self, sub: Subscription, data_json: str, room_key: str, trigger_id: str,
                offset: int | None = None) -> str | bytes: ...

    def message(self, message: DirectMessage) -> str | bytes: ...

    def watched(self, sub: Subscription, message: DirectMessage) -> str | bytes: ...

    def confirmed(self, event: Confirmed) -> str | bytes | None:
        """None: the protocol does not tell senders (``caps.confirms`` is False)."""
        ...

    def resync(self, recovered: list[dict[str, Any]] | None = None) -> str | bytes | None: ...
