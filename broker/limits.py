"""Per-process and per-connection limits that are not about sizes: who may connect, how often
a connection may ask. Pure Python, no I/O; the serve loop and ``broker.session`` apply them.

- ``Admission``: the connections one process serves (BROKER_MAX_CONNECTIONS), and whether it
  still takes new ones at all (not once it is shutting down). A transport admits a connection
  before it authenticates it and releases it exactly once when it is gone.
- ``TokenBucket``: the request rate of one connection (BROKER_RATE_LIMIT, BROKER_RATE_BURST).
- ``origin_allowed``: the WebSocket Origin allow-list (BROKER_ALLOWED_ORIGINS).

What each limit bounds is written in docs/operations.md ("Limits").
"""

from __future__ import annotations

import enum
import fnmatch
import time
from collections.abc import Callable

from . import errors


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    LIMITED = "limited"  # answer rate-limited, do not carry the request out
    EXCEEDED = "exceeded"  # kept sending while limited: close with 4029


class TokenBucket:
    """A token bucket that may run into debt.

    It holds at most ``burst`` tokens and gains ``rate`` per second. A request takes one token.
    With none left the request is LIMITED, and still takes one: the bucket goes into debt, so
    a client that ignores the answers pays for them. Once the debt reaches ``burst`` (the client
    sent ``burst`` requests while limited, faster than the refill) the verdict is EXCEEDED.
    Invariant: ``-burst <= tokens <= burst`` after every ``take``.
    """

    __slots__ = ("rate", "burst", "tokens", "_clock", "_last")

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(int(burst), 1)
        self.tokens = float(self.burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> Verdict:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1 - 1e-9:  # a client at exactly the rate: float rounding is no debt
            self.tokens -= 1
            return Verdict.ALLOWED
        self.tokens -= 1
        if self.tokens <= -self.burst:
            self.tokens = -self.burst
            return Verdict.EXCEEDED
        return Verdict.LIMITED


def make_bucket(rate: float, burst: int) -> TokenBucket | None:
    """The bucket for one connection, or None when BROKER_RATE_LIMIT is 0 (no limit)."""
    return TokenBucket(rate, burst) if rate > 0 else None


class Admission:
    """Counts the connections of this process; refuses beyond ``limit`` or while stopping.

    ``admit()`` returns None when the connection may proceed (the caller must ``release()``
    it exactly once later), else the refusal reason: ``errors.OVER_CAPACITY`` or
    ``errors.SHUTTING_DOWN``. Runs in the event loop thread only, so no lock.
    """

    def __init__(self) -> None:
        self.count = 0
        self.shutting_down = False

    def admit(self, limit: int) -> str | None:
        if self.shutting_down:
            return errors.SHUTTING_DOWN
        if limit > 0 and self.count >= limit:
            return errors.OVER_CAPACITY
        self.count += 1
        return None

    def release(self) -> None:
        self.count = max(self.count - 1, 0)


admission = Admission()


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """True when ``allowed`` is empty, the handshake carried no Origin (not a browser: it
    could claim any), or the Origin matches an entry. Entries are ``scheme://host[:port]``,
    compared case-insensitively; ``*`` matches any run of characters (``https://*.example.com``)
    and an entry ``*`` allows every origin."""
    if not allowed or origin is None:
        return True
    value = origin.strip().lower().rstrip("/")
    for entry in allowed:
        pattern = entry.strip().lower().rstrip("/")
        if pattern == value or ("*" in pattern and fnmatch.fnmatchcase(value, pattern)):
            return True
    return False
