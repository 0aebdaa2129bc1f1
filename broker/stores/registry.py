"""The cluster registry: which connections, rooms and destinations each process holds, each
process's stats, and the wildcard masks in use (``broker.fanout.router`` routes by them).

Two implementations of ``Registry``:

- ``RedisRegistry``: shared by every broker and TCP gate process on one Redis. Each process
  writes its own keys and refreshes a heartbeat; entries of a process that stops heartbeating
  are ignored once older than BROKER_REGISTRY_TTL and expire from Redis soon after, so a
  crashed process leaves no ghosts.
- ``MemoryRegistry``: the same, inside one process, for the in-memory channel layer.

Keys (``P`` = BROKER_KEY_PREFIX, ``proc`` = a process id):
  P:procs           zset  proc -> last heartbeat (Redis TIME, seconds with microseconds)
  P:conns:<proc>    hash  connection id -> JSON info (login, profile, transport, ...)
  P:rooms:<proc>    set   canonical keys of rooms with >=1 subscription in that process
  P:dest:<dest>     set   procs holding a connection that owns client destination <dest>
  P:masks:<shape>   set   wildcard masks ever subscribed for a room shape
  P:stats           hash  proc -> JSON stats (the monitor console's)

Masks are only ever added: a stale mask costs one PUBLISH nobody hears, never a lost message.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from .redis import RedisClient, text

_LIVE_PROCS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""

_STATUS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local procs = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
local conns = 0
local roomkeys = {}
for _, p in ipairs(procs) do
  conns = conns + redis.call('HLEN', ARGV[2] .. ':conns:' .. p)
  table.insert(roomkeys, ARGV[2] .. ':rooms:' .. p)
end
local rooms = 0
if #roomkeys > 0 then rooms = #redis.call('SUNION', unpack(roomkeys)) end
return {conns, rooms}
"""

# ARGV: TTL, prefix, limit. Up to ``limit`` distinct room keys of live processes, and 1 when
# there were more (SSCAN, so a large set is read a page at a time).
_ROOMS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[3])
local seen, out = {}, {}
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')) do
  local cursor = '0'
  repeat
    local page = redis.call('SSCAN', ARGV[2] .. ':rooms:' .. p, cursor, 'COUNT', 100)
    cursor = page[1]
    for _, key in ipairs(page[2]) do
      if not seen[key] then
        if #out >= limit then return {out, 1} end
        seen[key] = true
        table.insert(out, key)
      end
    end
  until cursor == '0'
end
return {out, 0}
"""

_DEST_EXISTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local procs = redis.call('SMEMBERS', KEYS[1])
for _, p in ipairs(procs) do
  local seen = redis.call('ZSCORE', KEYS[2], p)
  if seen and tonumber(seen) >= now - tonumber(ARGV[1]) then return 1 end
end
return 0
"""

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local known = redis.call('ZADD', KEYS[1], now, ARGV[1]) == 0
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
return known and 1 or 0
"""


@dataclass(frozen=True, slots=True)
class Change:
    """One connection's registry change: registered with ``info``, or gone (``info`` None).
    ``edge``: it is the first (registered) or the last (gone) connection of this process that
    owns ``destination``."""

    conn_id: str
    info: dict[str, Any] | None
    destination: str | None
    edge: bool


class Registry(Protocol):
    """What the cluster knows of its processes; ``MemoryRegistry`` is the reference."""

    proc_id: str

    async def masks(self, shape_keys: list[str]) -> dict[str, set[int]]:
        """The wildcard masks in use per shape, mask 0 (the room itself) always included."""
        ...

    async def add_mask(self, shape_key: str, mask: int) -> None: ...

    async def write(self, changes: list[Change]) -> None:
        """Apply connections' registrations and departures, in order (one round trip)."""
        ...

    async def update(self, infos: dict[str, dict[str, Any]], stats: dict[str, Any]) -> None:
        """Rewrite the given connections' entries and this process's stats."""
        ...

    async def room_added(self, room_key: str) -> None: ...

    async def room_removed(self, room_key: str) -> None: ...

    async def destination_exists(self, destination: str) -> bool:
        """Some live process holds a connection owning ``destination``."""
        ...

    async def status(self) -> tuple[int, int]:
        """Connections and distinct rooms of the live processes."""
        ...

    async def connections(self) -> list[dict[str, Any]]: ...

    async def rooms(self, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` keys of rooms with a subscription in the cluster, and whether there
        were more."""
        ...

    async def heartbeat(self, infos: dict[str, dict[str, Any]], rooms: list[str],
                        destinations: list[str], stats: dict[str, Any],
                        masks: list[tuple[str, int]]) -> bool:
        """Refresh this process's entries; False when the registry had lost them (Redis
        restarted or flushed), which means fan-out messages may have been lost too."""
        ...

    async def stats(self) -> list[dict[str, Any]]:
        """Each live process's last stats."""
        ...

    async def leave(self) -> None:
        """Remove this process's entries now (a stopping process), not after the TTL."""
        ...


class MemoryRegistry:
    def __init__(self, proc_id: str) -> None:
        self.proc_id = proc_id
        self._masks: dict[str, set[int]] = {}
        self._conns: dict[str, dict[str, Any]] = {}
        self._rooms: Counter[str] = Counter()
        self._dests: Counter[str] = Counter()
        self._stats: dict[str, Any] = {}

    async def masks(self, shape_keys: list[str]) -> dict[str, set[int]]:
        return {s: self._masks.get(s, set()) | {0} for s in shape_keys}

    async def add_mask(self, shape_key: str, mask: int) -> None:
        self._masks.setdefault(shape_key, set()).add(mask)

    async def write(self, changes: list[Change]) -> None:
        for c in changes:
            if c.info is not None:
                self._conns[c.conn_id] = c.info
                if c.destination:
                    self._dests[c.destination] += 1
                continue
            self._conns.pop(c.conn_id, None)
            if c.destination:
                self._dests[c.destination] -= 1
                if self._dests[c.destination] <= 0:
                    del self._dests[c.destination]

    async def update(self, infos: dict[str, dict[str, Any]], stats: dict[str, Any]) -> None:
        for conn_id, info in infos.items():
            if conn_id in self._conns:
                self._conns[conn_id] = info
        self._stats = stats

    async def room_added(self, room_key: str) -> None:
        self._rooms[room_key] += 1

    async def room_removed(self, room_key: str) -> None:
        self._rooms[room_key] -= 1
        if self._rooms[room_key] <= 0:
            del self._rooms[room_key]

    async def destination_exists(self, destination: str) -> bool:
        return self._dests.get(destination, 0) > 0

    async def status(self) -> tuple[int, int]:
        return len(self._conns), len(self._rooms)

    async def connections(self) -> list[dict[str, Any]]:
        return list(self._conns.values())

    async def rooms(self, limit: int) -> tuple[list[str], bool]:
        return sorted(self._rooms)[:limit], len(self._rooms) > limit

    async def heartbeat(self, infos: dict[str, dict[str, Any]], rooms: list[str],
                        destinations: list[str], stats: dict[str, Any],
                        masks: list[tuple[str, int]]) -> bool:
        # The hub clears its dirty set on a heartbeat: take the fresh entries (subscription
        # counts) here too, as the Redis registry does.
        await self.update(infos, stats)
        return True

    async def stats(self) -> list[dict[str, Any]]:
        return [self._stats] if self._stats else []

    async def leave(self) -> None:
        return None


class RedisRegistry:
    def __init__(self, client: RedisClient, proc_id: str, ttl: float) -> None:
        self.client = client
        self.proc_id = proc_id
        self.ttl = ttl
        self._k_procs = client.key("procs")
        self._k_conns = client.key("conns", proc_id)
        self._k_rooms = client.key("rooms", proc_id)
        self._k_stats = client.key("stats")
        self._live = client.script(_LIVE_PROCS)
        self._status = client.script(_STATUS)
        self._rooms = client.script(_ROOMS)
        self._dest_exists = client.script(_DEST_EXISTS)
        self._heartbeat = client.script(_HEARTBEAT)
        self._expire = max(int(ttl * 2), 2)

    def _dest_key(self, destination: str) -> str:
        return self.client.key("dest", destination)

    def _masks_key(self, shape_key: str) -> str:
        return self.client.key("masks", shape_key)

    async def masks(self, shape_keys: list[str]) -> dict[str, set[int]]:
        if len(shape_keys) == 1:  # the common case, without a pipeline's cost
            found = [await self.client.call(
                self.client.redis.smembers(self._masks_key(shape_keys[0])))]
        else:
            pipe = self.client.pipeline(transaction=False)
            for s in shape_keys:
                pipe.smembers(self._masks_key(s))
            found = await self.client.call(pipe.execute())
        return {s: {int(m) for m in ms} | {0} for s, ms in zip(shape_keys, found, strict=True)}

    async def add_mask(self, shape_key: str, mask: int) -> None:
        await self.client.call(self.client.redis.sadd(self._masks_key(shape_key), mask))

    async def write(self, changes: list[Change]) -> None:
        pipe = self.client.pipeline(transaction=False)
        registered = False
        for c in changes:
            dest_key = self._dest_key(c.destination) if c.destination and c.edge else None
            if c.info is not None:
                registered = True
                pipe.hset(self._k_conns, c.conn_id, json.dumps(c.info))
                if dest_key is not None:
                    pipe.sadd(dest_key, self.proc_id)
                    pipe.expire(dest_key, self._expire)
            else:
                pipe.hdel(self._k_conns, c.conn_id)
                if dest_key is not None:
                    pipe.srem(dest_key, self.proc_id)
        if registered:
            pipe.expire(self._k_conns, self._expire)
        await self.client.call(pipe.execute())

    async def update(self, infos: dict[str, dict[str, Any]], stats: dict[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        if infos:
            pipe.hset(self._k_conns, mapping={k: json.dumps(v) for k, v in infos.items()})
        pipe.hset(self._k_stats, self.proc_id, json.dumps(stats))
        await self.client.call(pipe.execute())

    async def room_added(self, room_key: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(self._k_rooms, room_key)
        pipe.expire(self._k_rooms, self._expire)
        await self.client.call(pipe.execute())

    async def room_removed(self, room_key: str) -> None:
        await self.client.call(self.client.redis.srem(self._k_rooms, room_key))

    async def destination_exists(self, destination: str) -> bool:
        found = await self.client.call(self._dest_exists(
            keys=[self._dest_key(destination), self._k_procs], args=[self.ttl]))
        return bool(found)

    async def status(self) -> tuple[int, int]:
        conns, rooms = await self.client.call(self._status(
            keys=[self._k_procs], args=[self.ttl, self.client.prefix]))
        return int(conns), int(rooms)

    async def rooms(self, limit: int) -> tuple[list[str], bool]:
        keys, more = await self.client.call(self._rooms(
            keys=[self._k_procs], args=[self.ttl, self.client.prefix, limit]))
        return sorted(text(k) for k in keys), bool(more)

    async def _live_procs(self) -> list[str]:
        procs = await self.client.call(self._live(keys=[self._k_procs], args=[self.ttl]))
        return [text(p) for p in procs]

    async def connections(self) -> list[dict[str, Any]]:
        procs = await self._live_procs()
        pipe = self.client.pipeline(transaction=False)
        for p in procs:
            pipe.hvals(self.client.key("conns", p))
        out: list[dict[str, Any]] = []
        for values in await self.client.call(pipe.execute()):
            out.extend(json.loads(v) for v in values)
        return out

    async def heartbeat(self, infos: dict[str, dict[str, Any]], rooms: list[str],
                        destinations: list[str], stats: dict[str, Any],
                        masks: list[tuple[str, int]]) -> bool:
        """Refresh liveness and re-assert this process's whole state, masks included: a Redis
        that restarted empty is whole again within one heartbeat."""
        known = await self.client.call(
            self._heartbeat(keys=[self._k_procs], args=[self.proc_id, self.ttl]))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._k_conns, self._k_rooms)
        if infos:
            pipe.hset(self._k_conns, mapping={k: json.dumps(v) for k, v in infos.items()})
        if rooms:
            pipe.sadd(self._k_rooms, *rooms)
        pipe.expire(self._k_conns, self._expire)
        pipe.expire(self._k_rooms, self._expire)
        for d in destinations:
            pipe.sadd(self._dest_key(d), self.proc_id)
            pipe.expire(self._dest_key(d), self._expire)
        for shape_key, mask in masks:
            pipe.sadd(self._masks_key(shape_key), mask)
        pipe.hset(self._k_stats, self.proc_id, json.dumps(stats))
        await self.client.call(pipe.execute())
        return bool(known)

    async def stats(self) -> list[dict[str, Any]]:
        procs = set(await self._live_procs())
        raw = await self.client.call(self.client.redis.hgetall(self._k_stats))
        return [json.loads(value) for proc, value in raw.items() if text(proc) in procs]

    async def leave(self) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self._k_procs, self.proc_id)
            pipe.delete(self._k_conns, self._k_rooms)
            pipe.hdel(self._k_stats, self.proc_id)
            await pipe.execute()
        except (RedisError, OSError):
            pass  # entries of a process that stopped heartbeating are ignored after the TTL
