"""The framing of a WebSocket connection, chosen by its subprotocol (both WebSocket adapters).

``v12.stomp``/``v11.stomp`` standard STOMP with heart-beats (its credentials in its CONNECT
frame), ``stomp`` the Communication Broker's JS client (STOMP without heart-beats),
``combroker.v1`` the rich JSON dialect, none the plain (High-templar) JSON dialect. The JSON
dialects' credentials, resume token and Origin are read from the handshake
(``broker.handshake``). With BROKER_RESUME_COOKIE, a rich connection's resume token is minted
here, since the accept that sets it in the resume cookie is written before the welcome
(``resume_cookie``).
"""

from __future__ import annotations

from . import resume, resumecookie, serve
from .codecs.jsoncodec import RICH_SUBPROTOCOL, JsonCodec
from .codecs.stomp import CB_SUBPROTOCOL, STOMP_SUBPROTOCOLS, StompCodec
from .conf import Settings
from .handshake import (
    Scope,
    credentials_from_scope,
    origin_allowed_by,
    resume_token_from_scope,
    secure_scope,
)


def websocket_framing(scope: Scope, c: Settings) -> tuple[serve.Framing, str | None]:
    """The framing of the connection ``scope`` describes, and the subprotocol to accept."""
    offered = scope.get("subprotocols") or []
    stomp = next((p for p in STOMP_SUBPROTOCOLS if p in offered), None)
    if stomp is not None:
        # Standard STOMP offers heart-beats as the TCP gate does; the Communication Broker's
        # JS client (the ``stomp`` subprotocol) has none.
        cb = stomp == CB_SUBPROTOCOL
        codec = StompCodec(cb=cb, text=True, heartbeat_ms=0 if cb else c.BROKER_STOMP_HEARTBEAT_MS)
        framing = serve.Framing(codec, explicit_refusal=True, binary=True,
                                max_bytes=c.BROKER_MAX_MESSAGE_BYTES, connect_frame=True)
    else:
        rich = RICH_SUBPROTOCOL in offered
        cookie = rich and c.BROKER_RESUME_COOKIE
        framing = serve.Framing(JsonCodec(rich=rich), explicit_refusal=rich,
                                max_bytes=c.BROKER_MAX_MESSAGE_BYTES,
                                credentials=credentials_from_scope(scope, resume_cookie=cookie),
                                resume_token=resume_token_from_scope(scope,
                                                                     resume_cookie=cookie))
        if cookie:
            framing.issued_resume_token, framing.set_cookie = resume_cookie(scope, c)
        stomp = RICH_SUBPROTOCOL if rich else None
    framing.origin_allowed = origin_allowed_by(scope, c.BROKER_ALLOWED_ORIGINS)
    return framing, stomp


def resume_cookie(scope: Scope, c: Settings) -> tuple[str, str]:
    """A fresh resume token for the welcome, and the ``Set-Cookie`` value of the accept that
    keeps it (``broker.resumecookie``): Secure under TLS or a trusted ``https`` proxy, the
    Path of this handshake unless BROKER_RESUME_COOKIE_PATH says otherwise."""
    token = resume.new_token()
    path = c.BROKER_RESUME_COOKIE_PATH or str(scope.get("path") or "/")  # ASGI: the full path
    return token, resumecookie.header(token, path=path, secure=secure_scope(scope),
                                      same_site=c.BROKER_RESUME_COOKIE_SAMESITE)
