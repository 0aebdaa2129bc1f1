"""Connection tickets: a short-lived, single-use credential the backend mints for a logged-in
user, which the broker verifies locally (no auth API round trip, docs/protocol.md
"Connection tickets").

A ticket is ``<issued>.<payload>.<mac>``:

- ``issued``: integer unix seconds;
- ``payload``: base64url (no padding) of the JSON object ``{"v": 1, "id": <random, the replay
  key>, "exp": <integer unix seconds>, "identity": <the auth API's answer>}``;
- ``mac``: HMAC-SHA256 in hex over ``f"{issued}.{payload}"`` with ``BROKER_TICKET_SECRET``
  (``broker.signature``: the same signing as the webhooks').

``encode`` and ``verify`` are pure (secrets and clock passed in); the identity in a ticket is
read by ``identity.identity_from_api``, the one reader of the auth API's answer, at minting and
at verifying. ``verify`` checks, in order: the size (before any crypto), the shape, the MAC
against every secret (rotation: mint with the first, accept any), the payload, the expiry (with
``CLOCK_SKEW``). That a ticket is used once is the ticket store's (``broker.stores.tickets``),
asked by ``broker.auth``.

``mint(request)`` is for the backend's Django code (and ``{% combroker_ticket %}``,
``broker.templatetags.combroker``): it reads the settings and, without an explicit identity,
asks the callable named by ``BROKER_TICKET_IDENTITY``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import errors, signature
from .conf import conf
from .identity import Identity, InvalidIdentity, InvalidLogin, identity_from_api
from .jsontext import load_json

__all__ = ["CLOCK_SKEW", "MAX_TICKET_CHARS", "MAX_TTL", "MintRefused", "Ticket",
           "TicketRefused", "VERSION", "encode", "mint", "verify"]

VERSION = 1
# The longest ticket, in characters, minted or read: it rides in a URL (the WebSocket request
# line, 8 KiB in websockets' parser, holds it with room to spare). Longer is refused before any
# crypto; an identity too large for it cannot be minted (connect through the auth API).
MAX_TICKET_CHARS = 4096
# The longest life a ticket may have (seconds from issued to expiry): what a used ticket's id
# is kept for at most.
MAX_TTL = 3600.0
# Seconds a ticket is still accepted after its expiry, for clocks that differ a little.
CLOCK_SKEW = 5
_ID_BYTES = 16
_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = frozenset("0123456789abcdef")


class MintRefused(Exception):
    """No ticket can be minted: no secret, no identity (an anonymous request), an identity the
    auth API's reader refuses, a ttl out of range, or an identity too large for a ticket."""


class TicketRefused(Exception):
    """A ticket the broker does not accept; ``reason`` is its refusal (``errors.TICKET_*``, or
    ``errors.INVALID_LOGIN`` for a login ``identity.validate_login`` refuses)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Ticket:
    """A verified ticket: its replay key, times (unix seconds) and identity."""

    id: str
    issued: int
    expires: int
    identity: Identity

    def remaining(self, now: float) -> float:
        """Seconds this ticket is still accepted for (its id must be kept that long)."""
        return max(self.expires + CLOCK_SKEW - now, 0.0)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode(identity: Mapping[str, Any], secret: str, ttl: float,
           now: float | None = None) -> str:
    """A ticket for ``identity`` (the auth API's answer, checked by its reader), signed with
    ``secret``, expiring ``ttl`` seconds from ``now``. Raises MintRefused."""
    if not secret:
        raise MintRefused("no secret: BROKER_TICKET_SECRET is empty")
    if not (0 < ttl <= MAX_TTL):
        raise MintRefused(f"ttl {ttl!r} is not within (0, {MAX_TTL:g}] seconds")
    if not isinstance(identity, Mapping):
        raise MintRefused(f"an identity is a mapping, not a {type(identity).__name__}")
    try:
        identity_from_api(dict(identity))
        body = json.dumps(dict(identity), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (InvalidIdentity, TypeError, ValueError) as exc:
        raise MintRefused(f"not an identity the auth API could answer: {exc}") from None
    issued = int(time.time() if now is None else now)
    payload = _b64(b'{"v":%d,"id":"%s","exp":%d,"identity":%s}' % (
        VERSION, _b64(secrets.token_bytes(_ID_BYTES)).encode(), issued + math.ceil(ttl),
        body.encode("utf-8")))
    mac = signature.sign(payload.encode("ascii"), secret, issued).partition("=")[2]
    ticket = f"{issued}.{payload}.{mac}"
    if len(ticket) > MAX_TICKET_CHARS:
        raise MintRefused(f"the identity makes a ticket of {len(ticket)} characters, over "
                          f"{MAX_TICKET_CHARS}: connect through the auth API instead")
    return ticket


def _invalid(detail: str) -> TicketRefused:
    return TicketRefused(errors.TICKET_INVALID, detail)


def verify(ticket: str, keys: Sequence[str], now: float | None = None) -> Ticket:
    """The ticket ``ticket`` if one of ``keys`` signed it and it has not expired. Raises
    TicketRefused (``ticket-invalid``: oversize, malformed, tampered, another secret, or
    unreadable; ``ticket-expired``; ``invalid-login``). Whether it was used before is not
    known here (``broker.stores.tickets``)."""
    if not keys:
        raise _invalid("tickets are off (BROKER_TICKET_SECRET is empty)")
    if len(ticket) > MAX_TICKET_CHARS:
        raise _invalid(f"longer than {MAX_TICKET_CHARS} characters")
    parts = ticket.split(".")
    if len(parts) != 3:
        raise _invalid("not <issued>.<payload>.<mac>")
    issued, payload, mac = parts
    if not (payload and set(payload) <= _B64 and len(mac) == 64 and set(mac) <= _HEX):
        raise _invalid("not <issued>.<payload>.<mac>")
    signed = payload.encode("ascii")
    matched = False
    for key in keys:  # every secret tried: the time says nothing of which one matched
        try:
            signature.verify(signed, issued, f"{signature.SCHEME}={mac}", key,
                             tolerance=math.inf)
        except signature.SignatureError:
            continue
        matched = True
    if not matched:
        raise _invalid("no secret signs it")
    try:
        body = load_json(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise _invalid(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise _invalid(f"not a version {VERSION} ticket")
    tid, expires = body.get("id"), body.get("exp")
    if not (isinstance(tid, str) and 0 < len(tid) <= 64 and type(expires) is int):
        raise _invalid("no id or expiry")
    stamp = int(issued)
    if not (stamp < expires <= stamp + MAX_TTL):
        raise _invalid(f"life {expires - stamp} s is not within (0, {MAX_TTL:g}]")
    clock = time.time() if now is None else now
    if clock > expires + CLOCK_SKEW:
        raise TicketRefused(errors.TICKET_EXPIRED, f"expired {clock - expires:.0f} s ago")
    try:
        identity = identity_from_api(body.get("identity"))
    except InvalidLogin:
        raise TicketRefused(errors.INVALID_LOGIN, "the identity's login") from None
    except InvalidIdentity as exc:
        raise _invalid(f"identity: {exc}") from None
    return Ticket(tid, stamp, expires, identity)


def _identity_of(request: Any) -> Mapping[str, Any]:
    """What BROKER_TICKET_IDENTITY answers for ``request`` (the auth API view's answer)."""
    from django.utils.module_loading import import_string

    user = getattr(request, "user", None)
    if user is not None and not getattr(user, "is_authenticated", False):
        raise MintRefused("an anonymous request has no identity to put in a ticket")
    path = conf().BROKER_TICKET_IDENTITY
    if not path:
        raise MintRefused("no identity given and BROKER_TICKET_IDENTITY is not set")
    try:
        source = import_string(path)
    except ImportError as exc:
        raise MintRefused(f"BROKER_TICKET_IDENTITY {path!r}: {exc}") from None
    found = source(request)
    if not isinstance(found, Mapping):
        raise MintRefused(f"BROKER_TICKET_IDENTITY {path!r} answered no identity "
                          f"(a {type(found).__name__}) for this request")
    return found


def mint(request: Any, identity: Mapping[str, Any] | None = None, *,
         ttl: float | None = None) -> str:
    """A ticket for ``request``'s user: ``identity`` (the JSON object the auth API answers:
    ``login_id``, ``allowed_rooms``, ``profile``, ``publish_rooms``) or, when None, what the
    callable named by BROKER_TICKET_IDENTITY answers for ``request``. It expires after ``ttl``
    seconds (BROKER_TICKET_TTL by default). Raises MintRefused."""
    c = conf()
    if not c.BROKER_TICKET_SECRET:
        raise MintRefused("no secret: BROKER_TICKET_SECRET is empty")
    if identity is None:
        identity = _identity_of(request)
    return encode(identity, c.BROKER_TICKET_SECRET[0],
                  c.BROKER_TICKET_TTL if ttl is None else ttl)
