"""Signing a body with a shared secret, and checking such a signature (HMAC-SHA256 with a
timestamp against replay, in the manner of Stripe's webhook signatures).

What is signed is ``f"{timestamp}.".encode() + body``: the timestamp (integer unix seconds)
is part of the signed bytes, so it cannot be changed without the secret, and ``verify``
refuses a timestamp further than ``tolerance`` seconds from now either way, so a captured
request cannot be replayed later. The signature is ``"v1=<hex digest>"``; a header may carry
several ``v1=`` values separated by commas (while a secret is rotated, one per secret), and
it matches if any of them does. Unknown schemes (``v0=...``) are ignored.

Pure: no I/O, no Django, no setting. The broker signs its webhooks with it (broker.webhooks);
a backend checks them with ``verify``::

    from broker.signature import SignatureError, verify

    try:
        verify(request.body, request.headers["X-Combroker-Timestamp"],
               request.headers["X-Combroker-Signature"], settings.COMBROKER_WEBHOOK_SECRET)
    except (KeyError, SignatureError):
        return HttpResponse(status=400)
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["BadSignature", "SCHEME", "SignatureError", "StaleSignature", "sign", "verify"]

SCHEME = "v1"


class SignatureError(ValueError):
    """The signed request is not to be trusted."""


class BadSignature(SignatureError):
    """No signature matches: forged or altered body or timestamp, another secret, or a
    missing or malformed header."""


class StaleSignature(SignatureError):
    """The timestamp is further from now than the tolerance (a replay, or a clock skew)."""


def _digest(body: bytes, secret: str, timestamp: int) -> str:
    message = b"%d." % timestamp + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """``"v1=<hex>"``: HMAC-SHA256 with ``secret`` over ``f"{timestamp}.".encode() + body``."""
    if not secret:
        raise ValueError("empty secret")
    return f"{SCHEME}={_digest(body, secret, timestamp)}"


def verify(body: bytes, timestamp: str, signature: str, secret: str, *,
           tolerance: float = 300, now: float | None = None) -> None:
    """Return if ``signature`` (a header: one or more ``v1=<hex>`` separated by commas) signs
    ``body`` at ``timestamp`` (a header: integer unix seconds) with ``secret``. Raises
    ``BadSignature`` if none matches or a header is malformed, ``StaleSignature`` if it matches
    but ``timestamp`` is more than ``tolerance`` seconds before or after ``now`` (default: the
    clock). Every candidate is compared in constant time."""
    if not secret:
        raise ValueError("empty secret")
    stamp = timestamp.strip() if isinstance(timestamp, str) else ""
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 15:
        raise BadSignature("malformed timestamp")
    if not isinstance(signature, str):
        raise BadSignature("malformed signature")
    candidates = []
    for part in signature.split(","):
        scheme, sep, value = part.strip().partition("=")
        if sep and scheme == SCHEME and value:
            candidates.append(value.strip())
    if not candidates:
        raise BadSignature("no v1 signature")
    expected = _digest(body, secret, int(stamp)).encode()
    matched = False
    for candidate in candidates:  # every one compared: the time says nothing of which
        matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    if not matched:
        raise BadSignature("no signature matches")
    skew = abs((time.time() if now is None else now) - int(stamp))
    if skew > tolerance:
        raise StaleSignature(f"timestamp {skew:.0f} s away from now (tolerance {tolerance} s)")
