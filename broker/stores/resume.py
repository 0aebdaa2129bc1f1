"""The resume store: a closed connection's subscriptions, kept for BROKER_RESUME_TTL under its
resume token's key, taken back once by a connection of the same identity (issue 8).

Tokens, fingerprints and the saved state's encoding are ``broker.resume``'s (pure); this
module keeps the states. ``RedisResume`` keeps ``P:resume:<key>`` (a hash: ``fp``, the
identity fingerprint, and ``state``); taking is one Lua script (check the fingerprint, read,
delete), so two connections presenting one token cannot both have it. ``MemoryResume``: the
same in one process's memory.
"""

from __future__ import annotations

import time
from typing import Protocol

from .redis import RedisClient, text

_RESUME_TAKE = """
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then return false end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1])
return state
"""


class ResumeStore(Protocol):
    async def save(self, key: str, fingerprint: str, state: str, ttl: float) -> None: ...

    async def take(self, key: str, fingerprint: str) -> str | None:
        """The saved state, once, and only for the same fingerprint."""
        ...


class MemoryResume:
    def __init__(self) -> None:
        self._states: dict[str, tuple[str, str, float]] = {}  # fingerprint, state, expiry

    async def save(self, key: str, fingerprint: str, state: str, ttl: float) -> None:
        now = time.monotonic()
        for k in [k for k, v in self._states.items() if v[2] <= now]:
            del self._states[k]
        self._states[key] = (fingerprint, state, now + ttl)

    async def take(self, key: str, fingerprint: str) -> str | None:
        found = self._states.get(key)
        if found is None or found[0] != fingerprint or found[2] <= time.monotonic():
            return None
        del self._states[key]
        return found[1]


class RedisResume:
    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._take = client.script(_RESUME_TAKE)

    async def save(self, key: str, fingerprint: str, state: str, ttl: float) -> None:
        name = self.client.key("resume", key)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(name, mapping={"fp": fingerprint, "state": state})
        pipe.pexpire(name, max(int(ttl * 1000), 1))
        await self.client.call(pipe.execute())

    async def take(self, key: str, fingerprint: str) -> str | None:
        found = await self.client.call(self._take(keys=[self.client.key("resume", key)],
                                                  args=[fingerprint]))
        return None if found is None else text(found)
