"""What the cluster knows beyond fan-out: the registry of connections and rooms, wildcard masks.

Two implementations of one interface:

- ``RedisCluster``: shared by every broker and TCP gate process on one Redis (the first URL of
  BROKER_REDIS_URL). Each process writes its own keys and refreshes a heartbeat; entries of a
  process that stops heartbeating are ignored once older than BROKER_REGISTRY_TTL and expire
  from Redis soon after, so a crashed process leaves no ghosts.
- ``MemoryCluster``: the same, inside one process, for the in-memory channel layer.

Keys (``P`` = BROKER_KEY_PREFIX, ``proc`` = a process id):
  P:procs           zset  proc -> last heartbeat (Redis TIME, seconds with microseconds)
  P:conns:<proc>    hash  connection id -> JSON info (login, profile, transport, ...)
  P:rooms:<proc>    set   canonical keys of rooms with >=1 subscription in that process
  P:dest:<dest>     set   procs holding a connection that owns client destination <dest>
  P:masks:<shape>   set   wildcard masks ever subscribed for a room shape (see hub.py)

Masks are only ever added: a stale mask costs one PUBLISH nobody hears, never a lost message.

Room history, resume states and acknowledged messages are stored by the same two classes; that
part (its keys and scripts) is ``broker.store``'s, mixed in here.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from .errors import BrokerUnavailable
from .store import MemoryStore, RedisStore, Store

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


class Cluster(Store):
    """The interface; MemoryCluster is the reference implementation."""

    proc_id: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def masks(self, shape_keys: list[str]) -> dict[str, set[int]]: raise NotImplementedError
    async def add_mask(self, shape_key: str, mask: int) -> None: ...
    async def register(self, conn_id: str, info: dict[str, Any], destination: str | None,
                       first_for_destination: bool) -> None: ...
    async def unregister(self, conn_id: str, destination: str | None,
                         last_for_destination: bool) -> None: ...
    async def update(self, infos: dict[str, dict[str, Any]], stats: dict[str, Any]) -> None:
        """Rewrite the given connections' entries and this process's stats."""
    async def room_added(self, room_key: str) -> None: ...
    async def room_removed(self, room_key: str) -> None: ...
    async def destination_exists(self, destination: str) -> bool: raise NotImplementedError
    async def status(self) -> tuple[int, int]: raise NotImplementedError
    async def connections(self) -> list[dict[str, Any]]: raise NotImplementedError
    async def heartbeat(self, infos: dict[str, dict[str, Any]], rooms: list[str],
                        destinations: list[str], stats: dict[str, Any],
                        masks: list[tuple[str, int]]) -> bool:
        """Refresh this process's entries; False when Redis had lost them (restarted or
        flushed), which means fan-out messages may have been lost too."""
        raise NotImplementedError
    async def stats(self) -> list[dict[str, Any]]: raise NotImplementedError
    async def ping(self) -> bool: return True


class MemoryCluster(MemoryStore, Cluster):
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

    async def register(self, conn_id: str, info: dict[str, Any], destination: str | None,
                       first_for_destination: bool) -> None:
        self._conns[conn_id] = info
        if destination:
            self._dests[destination] += 1

    async def unregister(self, conn_id: str, destination: str | None,
                         last_for_destination: bool) -> None:
        self._conns.pop(conn_id, None)
        if destination:
            self._dests[destination] -= 1
            if self._dests[destination] <= 0:
                del self._dests[destination]

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

    async def heartbeat(self, infos: dict[str, dict[str, Any]], rooms: list[str],
                        destinations: list[str], stats: dict[str, Any],
                        masks: list[tuple[str, int]]) -> bool:
        # The hub clears its dirty set on a heartbeat: take the fresh entries (subscription
        # counts) here too, as the Redis cluster does.
        for conn_id, info in infos.items():
            if conn_id in self._conns:
                self._conns[conn_id] = info
        self._stats = stats
        return True

    async def stats(self) -> list[dict[str, Any]]:
        return [self._stats] if self._stats else []


class RedisCluster(RedisStore, Cluster):
    def __init__(self, proc_id: str, url: str, prefix: str, ttl: float) -> None:
        self.proc_id = proc_id
        self.prefix = prefix
        self.ttl = ttl
        self.redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        self._k_procs = f"{prefix}:procs"
        self._k_conns = f"{prefix}:conns:{proc_id}"
        self._k_rooms = f"{prefix}:rooms:{proc_id}"
        self._k_stats = f"{prefix}:stats"
        self._live = self.redis.register_script(_LIVE_PROCS)
        self._status = self.redis.register_script(_STATUS)
        self._dest_exists = self.redis.register_script(_DEST_EXISTS)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._expire = max(int(ttl * 2), 2)

    def _dest_key(self, destination: str) -> str:
        return f"{self.prefix}:dest:{destination}"

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis: {type(exc).__name__}: {exc}") from None

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def stop(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(self._k_procs, self.proc_id)
            pipe.delete(self._k_conns, self._k_rooms)
            pipe.hdel(self._k_stats, self.proc_id)
            await pipe.execute()
        except (RedisError, OSError):
            pass
        await self.redis.aclose()

    async def masks(self, shape_keys: list[str]) -> dict[str, set[int]]:
        pipe = self.redis.pipeline(transaction=False)
        for s in shape_keys:
            pipe.smembers(f"{self.prefix}:masks:{s}")
        found = await self._call(pipe.execute())
        return {s: {int(m) for m in ms} | {0} for s, ms in zip(shape_keys, found)}

    async def add_mask(self, shape_key: str, mask: int) -> None:
        await self._call(self.redis.sadd(f"{self.prefix}:masks:{shape_key}", mask))

    async def register(self, conn_id: str, info: dict[str, Any], destination: str | None,
                       first_for_destination: bool) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self._k_conns, conn_id, json.dumps(info))
        pipe.expire(self._k_conns, self._expire)
        if destination and first_for_destination:
            pipe.sadd(self._dest_key(destination), self.proc_id)
            pipe.expire(self._dest_key(destination), self._expire)
        await self._call(pipe.execute())

    async def unregister(self, conn_id: str, destination: str | None,
                         last_for_destination: bool) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self._k_conns, conn_id)
        if destination and last_for_destination:
            pipe.srem(self._dest_key(destination), self.proc_id)
        await self._call(pipe.execute())

    async def update(self, infos: dict[str, dict[str, Any]], stats: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        if infos:
            pipe.hset(self._k_conns, mapping={k: json.dumps(v) for k, v in infos.items()})
        pipe.hset(self._k_stats, self.proc_id, json.dumps(stats))
        await self._call(pipe.execute())

    async def room_added(self, room_key: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self._k_rooms, room_key)
        pipe.expire(self._k_rooms, self._expire)
        await self._call(pipe.execute())

    async def room_removed(self, room_key: str) -> None:
        await self._call(self.redis.srem(self._k_rooms, room_key))

    async def destination_exists(self, destination: str) -> bool:
        found = await self._call(self._dest_exists(
            keys=[self._dest_key(destination), self._k_procs], args=[self.ttl]))
        return bool(found)

    async def status(self) -> tuple[int, int]:
        conns, rooms = await self._call(self._status(
            keys=[self._k_procs], args=[self.ttl, self.prefix]))
        return int(conns), int(rooms)

    async def _live_procs(self) -> list[str]:
        procs = await self._call(self._live(keys=[self._k_procs], args=[self.ttl]))
        return [p.decode() if isinstance(p, bytes) else p for p in procs]

    async def connections(self) -> list[dict[str, Any]]:
        procs = await self._live_procs()
        pipe = self.redis.pipeline(transaction=False)
        for p in procs:
            pipe.hvals(f"{self.prefix}:conns:{p}")
        out: list[dict[str, Any]] = []
        for values in await self._call(pipe.execute()):
            out.extend(json.loads(v) for v in values)
        return out

    async def heartbeat(self, infos: dict[str, dict[str, Any]], rooms: list[str],
                        destinations: list[str], stats: dict[str, Any],
                        masks: list[tuple[str, int]]) -> bool:
        """Refresh liveness and re-assert this process's whole state, masks included: a Redis
        that restarted empty is whole again within one heartbeat."""
        known = await self._call(
            self._heartbeat(keys=[self._k_procs], args=[self.proc_id, self.ttl]))
        pipe = self.redis.pipeline(transaction=True)
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
            pipe.sadd(f"{self.prefix}:masks:{shape_key}", mask)
        pipe.hset(self._k_stats, self.proc_id, json.dumps(stats))
        await self._call(pipe.execute())
        return bool(known)

    async def stats(self) -> list[dict[str, Any]]:
        procs = set(await self._live_procs())
        raw = await self._call(self.redis.hgetall(self._k_stats))
        out = []
        for proc, value in raw.items():
            proc = proc.decode() if isinstance(proc, bytes) else proc
            if proc in procs:
                out.append(json.loads(value))
        return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
