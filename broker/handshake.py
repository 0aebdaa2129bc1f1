"""What a WebSocket handshake says about its client: the ASGI scope's headers and query.

- ``credentials_from_scope``: the ``Credentials`` the JSON dialects log in with (the auth API's
  cookie and headers, ``?token=``, a static key: ``?app_key=&login_id=&profile_key=``,
  PROTOCOL §2.2, or a connection ticket: ``?ticket=``, broker.tickets), and the client's
  address. STOMP over WebSocket reads its credentials from its CONNECT frame instead
  (``Codec.connect``).
- ``resume_token_from_scope``: ``?resume=`` (or ``?resume_token=``), an earlier connection's
  resume token; with the resume cookie on (BROKER_RESUME_COOKIE), the cookie's when no query
  names one (``broker.resumecookie``).
- ``secure_scope``: the handshake came over TLS, or a trusted proxy said so (the scope's
  ``scheme``, which uvicorn's proxy headers set from ``X-Forwarded-Proto``).
- ``origin_allowed_by``: the ``Origin`` header, judged by ``limits.origin_allowed`` against
  BROKER_ALLOWED_ORIGINS (a refused one is logged).

Pure functions of the scope: the WebSocket adapter (``broker.consumers``) calls them.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from . import resumecookie
from .credentials import Credentials
from .limits import origin_allowed

log = logging.getLogger("broker.ws")

Scope = dict[str, Any]


def _query(scope: Scope) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


def credentials_from_scope(scope: Scope, *, resume_cookie: bool = False) -> Credentials:
    """``resume_cookie``: the resume cookie is the broker's own, never forwarded to the auth
    API (``broker.resumecookie.without``)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        # UTF-8 text (a cookie set by another app may be "café"); any other byte survives as
        # an escape, so broker.auth.wire_value forwards exactly the bytes the client sent.
        value = raw_value.decode("utf-8", "surrogateescape")
        if name == "cookie" and name in headers:  # HTTP/2 may split cookies into several
            value = f"{headers[name]}; {value}"
        headers[name] = value
    if resume_cookie and "cookie" in headers:
        rest = resumecookie.without(headers["cookie"])
        if rest:
            headers["cookie"] = rest
        else:
            del headers["cookie"]
    query = _query(scope)
    client = scope.get("client")

    def first(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    # Static-key login (PROTOCOL §2.2) over WebSocket: ?app_key=&login_id=&profile_key=
    return Credentials(headers=headers, token=first("token"),
                       remote_addr=client[0] if client else None,
                       app_key=first("app_key"), login_id=first("login_id"),
                       profile_key=first("profile_key"), ticket=first("ticket"))


def resume_token_from_scope(scope: Scope, *, resume_cookie: bool = False) -> str | None:
    """``?resume=<token>`` (also ``?resume_token=``): an earlier connection's resume token;
    else, with ``resume_cookie``, the resume cookie's."""
    query = _query(scope)
    values = query.get("resume") or query.get("resume_token")
    if values:
        return values[0]
    if not resume_cookie:
        return None
    cookies = "; ".join(v.decode("latin-1") for k, v in scope.get("headers", [])
                        if k.lower() == b"cookie")
    return resumecookie.read(cookies)


def secure_scope(scope: Scope) -> bool:
    """The handshake came over TLS (``wss``), or a trusted proxy said so."""
    return scope.get("scheme") in ("wss", "https")


def origin_allowed_by(scope: Scope, allowed: tuple[str, ...]) -> bool:
    """The handshake's first ``Origin`` header is allowed (``limits.origin_allowed``); a
    refused one is logged."""
    origin = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                   if k.lower() == b"origin"), None)
    if origin_allowed(origin, allowed):
        return True
    log.warning("origin %r not in BROKER_ALLOWED_ORIGINS", (origin or "")[:200])
    return False
