"""The resume cookie (BROKER_RESUME_COOKIE, issue 15): a rich connection's resume token kept by
the browser, in a cookie the broker sets itself, so a page that cannot keep the token (or
whose script must not see it) resumes after a reload all the same.

- ``header``: the ``Set-Cookie`` value the WebSocket accept carries: ``HttpOnly`` (no script
  reads it), ``SameSite`` as configured, ``Path`` the broker's, ``Secure`` when the handshake
  came over TLS (or a trusted proxy said ``https``). No ``Max-Age``: the token is minted at the
  handshake, while its state is kept BROKER_RESUME_TTL from the close, which no lifetime fixed
  at the handshake can say; a cookie that outlives its state only gets ``"resumed": false``.
- ``read``: the token a ``Cookie`` header carries (presented when no ``?resume=`` is);
  ``without``: that header minus the resume cookie (what the auth API is forwarded: a fresh
  token per connection would make every connect's auth request different).

Pure functions of header text; ``broker.wsframing`` and ``broker.handshake`` call them.
"""

from __future__ import annotations

from typing import Final

NAME: Final = "combroker_resume"

# What ``header`` writes for each BROKER_RESUME_COOKIE_SAMESITE (conf checks the choice).
_SAME_SITE: Final = {"lax": "Lax", "strict": "Strict", "none": "None"}


def header(token: str, *, path: str, secure: bool, same_site: str = "lax") -> str:
    """The ``Set-Cookie`` value that keeps ``token`` (``secrets.token_urlsafe``: no character
    needs quoting)."""
    if not _plain_path(path):
        path = "/"  # a path that would break the header (it names the request's own path)
    parts = [f"{NAME}={token}", f"Path={path}", "HttpOnly",
             f"SameSite={_SAME_SITE.get(same_site.lower(), 'Lax')}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def _plain_path(path: str) -> bool:
    """Printable ASCII from ``/``, with nothing that ends or quotes an attribute."""
    return (path.startswith("/") and path.isascii() and path.isprintable()
            and not any(ch in path for ch in ';,"\\'))


def _pairs(cookie: str) -> list[tuple[str, str]]:
    out = []
    for part in cookie.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            out.append((name.strip(), value.strip()))
    return out


def read(cookie: str | None) -> str | None:
    """The resume token of a ``Cookie`` header (the first of the name), None without one."""
    if not cookie or NAME not in cookie:
        return None
    return next((value for name, value in _pairs(cookie) if name == NAME and value), None)


def without(cookie: str) -> str:
    """``cookie`` without the resume cookie ("" when it was the only one)."""
    if NAME not in cookie:
        return cookie
    return "; ".join(part.strip() for part in cookie.split(";")
                     if part.partition("=")[0].strip() != NAME and part.strip())
