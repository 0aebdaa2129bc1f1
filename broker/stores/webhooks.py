"""The webhook queue: lifecycle events waiting to be POSTed to the backend, in order, and the
lease that lets one process at a time send them (broker.webhooks sends; this module keeps).

The queue is bounded (``max_pending``): ``push`` stores the events that fit and refuses the
rest, which are counted (``combroker_webhook_dropped_total{cause="full"}``) and logged, once
per burst of refusals (a warning when refusing starts, a line when pushes fit again): an event
is never lost without a trace.

Only the holder of the lease takes events off the head: ``lease`` takes it when it is free or
renews it when the caller's token holds it; ``peek`` reads the first events; ``remove`` takes
off exactly the first ``n`` only if the caller's token still holds the lease, so a process
that lost its lease (it stalled past the lease's expiry and another took over) cannot remove
events it did not send. ``release`` gives the lease back at once (a process that stops).

Two implementations of ``WebhookQueue``:

- ``RedisWebhookQueue``: shared by every process on one Redis. Keys (``P`` =
  BROKER_KEY_PREFIX):
    P:hooks        list    the pending events, one JSON object each, oldest first
    P:hooks:lease  string  the lease holder's random token, with the lease's expiry (PX)
  Push, lease, remove and release are each one Lua script.
- ``MemoryWebhookQueue``: the same in one process's memory, for the in-memory deployment (one
  process). Pending events are lost when the process stops or restarts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any, Protocol

from .. import metrics
from .redis import RedisClient, text

log = logging.getLogger("broker.webhooks")

# KEYS[1] the list; ARGV[1] the bound, ARGV[2..] the events. Stores those that fit, in order.
_PUSH = """
local room = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[1])
local n = math.min(math.max(room, 0), #ARGV - 1)
for i = 2, n + 1, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, n + 1)))
end
return n
"""

# KEYS[1] the lease; ARGV[1] the token, ARGV[2] its ttl in ms. Take it if free, renew if ours.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] the lease, KEYS[2] the list; ARGV[1] the token, ARGV[2] how many to remove.
_REMOVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class WebhookQueue(Protocol):
    """Pending webhook events and the sender's lease; ``MemoryWebhookQueue`` is the reference."""

    async def push(self, events: list[dict[str, Any]]) -> int:
        """Append ``events`` (JSON objects) in order; return how many were stored: those that
        fit under the bound, from the first. The others are counted and logged, not stored."""
        ...

    async def pending(self) -> int:
        """Events waiting."""
        ...

    async def lease(self, token: str, ttl: float) -> bool:
        """Hold the lease for ``ttl`` seconds from now: take it if free, renew it if ``token``
        holds it. False: another token holds it."""
        ...

    async def peek(self, n: int) -> list[Any]:
        """The first ``n`` events, oldest first (an entry that is not JSON is None)."""
        ...

    async def remove(self, token: str, n: int) -> bool:
        """Remove the first ``n`` events if ``token`` holds the lease (True), else nothing."""
        ...

    async def release(self, token: str) -> None:
        """Give the lease back if ``token`` holds it."""
        ...


class _Refusals:
    """The count and the log of refused events: one warning per burst."""

    __slots__ = ("_bound", "_burst")

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._burst = 0  # events refused since refusing started; 0: not refusing

    def after_push(self, offered: int, stored: int) -> None:
        refused = offered - stored
        if refused:
            metrics.webhook_dropped("full", refused)
            if not self._burst:
                log.warning("webhook queue full (BROKER_WEBHOOK_MAX_PENDING=%d): refusing "
                            "events until it drains", self._bound)
            self._burst += refused
        elif self._burst and offered:
            log.warning("webhook queue accepting events again; %d were refused", self._burst)
            self._burst = 0


def _decode(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class MemoryWebhookQueue:
    """One process's queue; its events are lost when the process stops."""

    def __init__(self, max_pending: int = 100_000) -> None:
        self.max_pending = max_pending
        self._events: deque[str] = deque()
        self._holder: tuple[str, float] | None = None  # token, monotonic expiry
        self._refusals = _Refusals(max_pending)

    async def push(self, events: list[dict[str, Any]]) -> int:
        room = max(self.max_pending - len(self._events), 0)
        stored = events[:room]
        self._events.extend(json.dumps(e, separators=(",", ":")) for e in stored)
        self._refusals.after_push(len(events), len(stored))
        return len(stored)

    async def pending(self) -> int:
        return len(self._events)

    def _holds(self, token: str) -> bool:
        return (self._holder is not None and self._holder[0] == token
                and self._holder[1] > time.monotonic())

    async def lease(self, token: str, ttl: float) -> bool:
        holder = self._holder
        if holder is not None and holder[0] != token and holder[1] > time.monotonic():
            return False
        self._holder = (token, time.monotonic() + ttl)
        return True

    async def peek(self, n: int) -> list[Any]:
        return [_decode(e) for e, _ in zip(self._events, range(n))]

    async def remove(self, token: str, n: int) -> bool:
        if not self._holds(token):
            return False
        for _ in range(min(n, len(self._events))):
            self._events.popleft()
        return True

    async def release(self, token: str) -> None:
        if self._holds(token):
            self._holder = None


class RedisWebhookQueue:
    def __init__(self, client: RedisClient, max_pending: int = 100_000) -> None:
        self.client = client
        self.max_pending = max_pending
        self._list = client.key("hooks")
        self._lease_key = client.key("hooks", "lease")
        self._push = client.script(_PUSH)
        self._lease = client.script(_LEASE)
        self._remove = client.script(_REMOVE)
        self._release = client.script(_RELEASE)
        self._refusals = _Refusals(max_pending)

    async def push(self, events: list[dict[str, Any]]) -> int:
        if not events:
            return 0
        encoded = [json.dumps(e, separators=(",", ":")) for e in events]
        stored = int(await self.client.call(self._push(
            keys=[self._list], args=[self.max_pending, *encoded])))
        self._refusals.after_push(len(events), stored)
        return stored

    async def pending(self) -> int:
        return int(await self.client.call(self.client.redis.llen(self._list)))

    async def lease(self, token: str, ttl: float) -> bool:
        return bool(await self.client.call(self._lease(
            keys=[self._lease_key], args=[token, max(int(ttl * 1000), 1)])))

    async def peek(self, n: int) -> list[Any]:
        if n <= 0:
            return []
        raw = await self.client.call(self.client.redis.lrange(self._list, 0, n - 1))
        return [_decode(text(e)) for e in raw]

    async def remove(self, token: str, n: int) -> bool:
        return bool(await self.client.call(self._remove(
            keys=[self._lease_key, self._list], args=[token, n])))

    async def release(self, token: str) -> None:
        await self.client.call(self._release(keys=[self._lease_key], args=[token]))
