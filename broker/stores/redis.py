"""The one Redis client every Redis store shares, and what its errors mean to the broker.

All stores of a process (registry, history, resume states, acknowledged messages) live on the
registry's Redis, the first URL of BROKER_REDIS_URL, under ``P`` = BROKER_KEY_PREFIX. They
share one connection pool (``RedisClient``), so a process opens one set of sockets for its
stores whatever it stores. Each Lua script is registered once per client (``script``), by its
source: redis-py sends EVALSHA and falls back to EVAL after a restart emptied the script cache.

A failed request (a refused connection, a timeout, a Redis error) raises ``BrokerUnavailable``:
callers answer the client ``service-unavailable`` or retry on the next upkeep tick; no Redis
exception type crosses this module (``call``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import BrokerUnavailable

T = TypeVar("T")


def short_hash(text: str) -> str:
    """The short hash keys are built from (``P:h:<h(room)>``): fixed length, any text."""
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def text(value: Any) -> str:
    """A Redis reply value (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisClient:
    """One Redis connection pool, its key prefix, and its registered scripts."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.redis: Any = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10)
        self._scripts: dict[str, Any] = {}

    def key(self, *parts: str) -> str:
        """``P:part:part...``"""
        return ":".join((self.prefix, *parts))

    async def call(self, request: Awaitable[T]) -> T:
        """Await a request; Redis and socket errors become ``BrokerUnavailable``."""
        try:
            return await request
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis: {type(exc).__name__}: {exc}") from None

    def script(self, source: str) -> Any:
        """The script object for ``source`` (registered on first use)."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    def pipeline(self, transaction: bool) -> Any:
        return self.redis.pipeline(transaction=transaction)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.redis.aclose()
