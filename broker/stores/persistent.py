"""The persistent subscription store: each login's kept subscribes (broker.persistent), by
request id, bounded per login and kept a ttl from their last use.

What an entry is and when one is kept, restored or forgotten is ``broker.persistent``'s and the
session's; this module keeps them. ``RedisPersistent`` keeps ``P:persist:<address>`` (a hash:
the request id's JSON -> the entry's JSON; the address is ``Identity.destination``, realm,
profile and login). Keeping is one Lua script (refused when the login already keeps ``limit``
other request ids; the same id is replaced), and every keep and every load sets the hash's
expiry ``ttl`` from now, so an abandoned login's entries go. Every connection of a login reads
its entries at the open, so the loads made meanwhile share one pipeline (``Coalesced``): a
storm of connects costs a round trip per batch, not per connection, as the join probes do
(``broker.fanout.membership``). ``MemoryPersistent``: the same in one process's memory.
"""

from __future__ import annotations

import time
from typing import Protocol

from ..coalesce import Coalesced
from .redis import RedisClient, text

_PERSISTENT_KEEP = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


class PersistentStore(Protocol):
    async def keep(self, owner: str, request_id_json: str, entry: str, limit: int,
                   ttl: float) -> bool:
        """Keep ``entry`` under ``request_id_json``; False: ``owner`` keeps ``limit`` others."""
        ...

    async def load(self, owner: str, ttl: float) -> dict[str, str]:
        """Every entry of ``owner`` (request id's JSON -> entry), kept ``ttl`` from now."""
        ...

    async def forget(self, owner: str, request_ids_json: tuple[str, ...]) -> None: ...


def _ms(ttl: float) -> int:
    return max(int(ttl * 1000), 1)


# Seconds between two sweeps of the memory store's expired logins (every open reads it).
SWEEP_EVERY = 60.0


class MemoryPersistent:
    def __init__(self) -> None:
        self._logins: dict[str, tuple[dict[str, str], float]] = {}  # entries, expiry
        self._next_sweep = 0.0

    def _entries(self, owner: str, ttl: float) -> dict[str, str]:
        """``owner``'s entries (made if none), kept ``ttl`` from now."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            for gone in [k for k, (_, expiry) in self._logins.items() if expiry <= now]:
                del self._logins[gone]
        found = self._logins.get(owner)
        entries = found[0] if found is not None and found[1] > now else {}
        self._logins[owner] = (entries, now + ttl)
        return entries

    async def keep(self, owner: str, request_id_json: str, entry: str, limit: int,
                   ttl: float) -> bool:
        entries = self._entries(owner, ttl)
        if request_id_json not in entries and len(entries) >= limit:
            return False
        entries[request_id_json] = entry
        return True

    async def load(self, owner: str, ttl: float) -> dict[str, str]:
        entries = self._entries(owner, ttl)
        if not entries:
            del self._logins[owner]
        return dict(entries)

    async def forget(self, owner: str, request_ids_json: tuple[str, ...]) -> None:
        found = self._logins.get(owner)
        if found is None:
            return
        for rid in request_ids_json:
            found[0].pop(rid, None)
        if not found[0]:
            del self._logins[owner]


class RedisPersistent:
    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._keep = client.script(_PERSISTENT_KEEP)
        self._loads: Coalesced[tuple[str, float], dict[str, str]] = Coalesced(self._load_many)

    def _name(self, owner: str) -> str:
        return self.client.key("persist", owner)

    async def keep(self, owner: str, request_id_json: str, entry: str, limit: int,
                   ttl: float) -> bool:
        kept = await self.client.call(self._keep(keys=[self._name(owner)],
                                                 args=[request_id_json, entry, limit, _ms(ttl)]))
        return bool(kept)

    async def load(self, owner: str, ttl: float) -> dict[str, str]:
        return await self._loads((owner, ttl))

    async def _load_many(self, batch: list[tuple[str, float]]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for owner, ttl in batch:
            pipe.hgetall(self._name(owner))
            pipe.pexpire(self._name(owner), _ms(ttl))
        answers = await self.client.call(pipe.execute())
        return [{text(k): text(v) for k, v in found.items()} for found in answers[::2]]

    async def forget(self, owner: str, request_ids_json: tuple[str, ...]) -> None:
        if request_ids_json:
            await self.client.call(self.client.redis.hdel(self._name(owner), *request_ids_json))
