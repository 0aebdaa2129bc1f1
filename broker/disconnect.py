"""Why the broker closes a connection: one ``Disconnect`` value per reason.

A ``Disconnect`` pairs a close code (WebSocket's; PROTOCOL §3 "Close codes") with its reason,
so no call site pairs them by hand. Transports without close codes (the TCP gate) say the
reason in their own framing before closing (a STOMP ERROR, a JSON ``close`` line).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import errors


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: int
    reason: str


NORMAL = Disconnect(errors.CLOSE_NORMAL, "")
EOF = Disconnect(errors.CLOSE_NORMAL, "eof")  # the peer closed its side
SLOW = Disconnect(errors.CLOSE_SLOW, errors.SLOW)
REPLACED = Disconnect(errors.CLOSE_REPLACED, errors.REPLACED)
KICKED = Disconnect(errors.CLOSE_KICKED, errors.KICKED)
GOING_AWAY = Disconnect(errors.CLOSE_GOING_AWAY, errors.GOING_AWAY)
HEARTBEAT_TIMEOUT = Disconnect(errors.CLOSE_GOING_AWAY, errors.HEARTBEAT_TIMEOUT)
RATE_LIMITED = Disconnect(errors.CLOSE_RATE_LIMITED, errors.RATE_LIMITED)
AUTH_TIMEOUT = Disconnect(errors.CLOSE_AUTH_TIMEOUT, errors.AUTH_TIMEOUT)
TOO_BIG = Disconnect(errors.CLOSE_TOO_BIG, "message too big")
ORIGIN_NOT_ALLOWED = Disconnect(errors.CLOSE_ORIGIN, errors.ORIGIN_NOT_ALLOWED)
REVOKED = Disconnect(errors.CLOSE_REFUSED, errors.REVOKED)  # a re-check no longer admits it
INTERNAL = Disconnect(errors.CLOSE_INTERNAL, errors.INTERNAL_ERROR)  # a bug, logged


MAX_REASON_BYTES = 123  # a WebSocket close frame's reason (RFC 6455 §5.5: 125 less the code)


def told(reason: str | None) -> Disconnect:
    """The close of a connection the backend disconnects (the server API's ``disconnect``):
    the admin kick's code, with the backend's reason (``kicked`` when it gives none)."""
    return Disconnect(errors.CLOSE_KICKED, reason or errors.KICKED)
