"""What the cluster stores beyond the registry (issue 8): room history, resume states, and
acknowledged direct messages. Mixed into ``broker.cluster``'s two implementations.

- ``RedisStore`` (on the registry's Redis, the first BROKER_REDIS_URL), keys under ``P`` =
  BROKER_KEY_PREFIX, ``h(x)`` a short hash:

    P:h:<h(room)>    stream  one room's recorded triggers; entry id ``<offset>-0``, fields
                             ``i`` (trigger id) and ``d`` (data JSON); XADD MAXLEN ~size,
                             expires ``ttl`` after the last trigger
    P:hm:<h(room)>   hash    that room's sequence: ``base`` (where it started), ``top`` (its
                             last offset); expires BROKER_HISTORY_META_TTL (>= ttl) after the
                             last trigger, so "recovered" stays exact after the stream expired
    P:resume:<sha>   hash    ``fp`` (identity fingerprint), ``state`` (saved subscriptions)
    P:ack:m:<id>     hash    an acknowledged message: ``m`` (the routed message as JSON),
                             ``to``, ``from``, ``c`` ("1" once some connection confirmed)
    P:ack:h:<id>     set     connection ids that received it and have not confirmed
    P:ack:in:<dest>  zset    pending message ids of a destination, scored by expiry time

  Every operation that must not interleave with another process's (assigning an offset and
  appending, taking a resume state, completing a confirmation) is one Lua script.

- ``MemoryStore``: the same semantics in one process's memory (the in-memory layer).

Offsets and the recovery rule are ``broker.history``'s; the acknowledged-delivery rules are
documented in docs/guarantees.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .history import HistoryEntry, HistoryPage, HistoryRule

PENDING_MAX = 1000  # acknowledged messages handed to one connection when it opens

_HISTORY_APPEND = """
local t = redis.call('TIME')
local seed = t[1] .. string.format('%06d', tonumber(t[2]))
local out = {}
for i = 1, #KEYS / 2 do
  local s, m = KEYS[2 * i - 1], KEYS[2 * i]
  local j = 3 * (i - 1) + 3
  if redis.call('HSETNX', m, 'base', seed) == 1 then redis.call('HSET', m, 'top', seed) end
  local top = redis.call('HINCRBY', m, 'top', 1)
  redis.call('XADD', s, 'MAXLEN', '~', ARGV[j], string.format('%.0f', top) .. '-0',
             'i', ARGV[1], 'd', ARGV[2])
  redis.call('PEXPIRE', s, ARGV[j + 1])
  redis.call('PEXPIRE', m, ARGV[j + 2])
  out[i] = top
end
return out
"""

_RESUME_TAKE = """
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then return false end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1])
return state
"""

_ACK_HOLD = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

_ACK_CONFIRM = """
if redis.call('HGET', KEYS[1], 'to') ~= ARGV[2] then return {0, ''} end
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'c', '1')
if redis.call('SCARD', KEYS[2]) > 0 then return {1, ''} end
local sender = redis.call('HGET', KEYS[1], 'from') or ''
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return {2, sender}
"""

_ACK_RELEASE = """
local out = {}
for i = 1, (#KEYS - 1) / 2 do
  local m, h = KEYS[2 * i], KEYS[2 * i + 1]
  redis.call('SREM', h, ARGV[1])
  if redis.call('SCARD', h) == 0 and redis.call('HGET', m, 'c') == '1' then
    local sender = redis.call('HGET', m, 'from') or ''
    redis.call('DEL', m, h)
    redis.call('ZREM', KEYS[1], ARGV[i + 1])
    table.insert(out, ARGV[i + 1])
    table.insert(out, sender)
  end
end
return out
"""


def _h(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """The interface (``MemoryStore`` is the reference implementation)."""

    async def history_append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                             data_json: str, meta_ttl: float) -> dict[str, int]:
        """Record one trigger in each room; returns each room key's new offset."""
        raise NotImplementedError

    async def history_read(self, room_key: str, *, since: int | None, limit: int | None
                           ) -> HistoryPage:
        """``since`` None: the latest ``limit`` entries; else the first ``limit`` after it.
        ``limit`` 0: none (the room's offsets only); None: all."""
        raise NotImplementedError

    async def resume_save(self, key: str, fingerprint: str, state: str, ttl: float) -> None:
        raise NotImplementedError

    async def resume_take(self, key: str, fingerprint: str) -> str | None:
        """The saved state, once, and only for the same fingerprint."""
        raise NotImplementedError

    async def ack_store(self, message: dict[str, Any], ttl: float) -> None:
        raise NotImplementedError

    async def ack_pending(self, destination: str) -> list[dict[str, Any]]:
        """Unexpired, uncompleted messages for ``destination``, oldest first."""
        raise NotImplementedError

    async def ack_hold(self, message_id: str, conn_id: str) -> None:
        """``conn_id`` received the message and owes a confirmation."""
        raise NotImplementedError

    async def ack_confirm(self, message_id: str, destination: str, conn_id: str
                          ) -> tuple[bool, str | None]:
        """Record a confirmation; ``(True, sender)`` when it completed the message."""
        raise NotImplementedError

    async def ack_release(self, conn_id: str, destination: str, message_ids: list[str]
                          ) -> list[tuple[str, str | None]]:
        """``conn_id`` closed without confirming these; returns the messages this completed
        (others confirmed them already) with their senders."""
        raise NotImplementedError


# ---------------------------------------------------------------- in memory


@dataclass
class _Room:
    base: int
    top: int
    entries: deque[HistoryEntry]
    expires: float  # the entries'
    meta_expires: float  # the sequence's


@dataclass
class _Acked:
    message: dict[str, Any]
    expires: float
    holders: set[str] = field(default_factory=set)
    confirmed: bool = False


class MemoryStore(Store):
    def _store(self) -> dict[str, Any]:
        store = self.__dict__.get("_mem_store")
        if store is None:
            store = self.__dict__["_mem_store"] = {"rooms": {}, "resume": {}, "acks": {}}
        return store

    async def history_append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                             data_json: str, meta_ttl: float) -> dict[str, int]:
        now, table = time.monotonic(), self._store()["rooms"]
        out: dict[str, int] = {}
        for key, rule in rooms:
            room = table.get(key)
            if room is not None and room.meta_expires <= now:
                room = None
            if room is None:
                base = time.time_ns() // 1000
                room = table[key] = _Room(base, base, deque(), 0.0, 0.0)
            if room.expires <= now:
                room.entries.clear()
            room.top += 1
            room.entries.append(HistoryEntry(room.top, trigger_id, data_json))
            while len(room.entries) > rule.size:
                room.entries.popleft()
            room.expires = now + rule.ttl
            room.meta_expires = now + max(meta_ttl, rule.ttl)
            out[key] = room.top
        return out

    async def history_read(self, room_key: str, *, since: int | None, limit: int | None
                           ) -> HistoryPage:
        now = time.monotonic()
        room = self._store()["rooms"].get(room_key)
        if room is None or room.meta_expires <= now:
            return HistoryPage(0, 0, ())
        entries = list(room.entries) if room.expires > now and limit != 0 else []
        if since is None:
            picked = entries if limit is None else entries[max(len(entries) - limit, 0):]
        else:
            picked = [e for e in entries if e.offset > since][:limit]
        return HistoryPage(room.top, room.base, tuple(picked))

    async def resume_save(self, key: str, fingerprint: str, state: str, ttl: float) -> None:
        table = self._store()["resume"]
        now = time.monotonic()
        for k in [k for k, v in table.items() if v[2] <= now]:
            del table[k]
        table[key] = (fingerprint, state, now + ttl)

    async def resume_take(self, key: str, fingerprint: str) -> str | None:
        table = self._store()["resume"]
        found = table.get(key)
        if found is None or found[0] != fingerprint or found[2] <= time.monotonic():
            return None
        del table[key]
        return str(found[1])

    def _acks(self) -> dict[str, _Acked]:
        table: dict[str, _Acked] = self._store()["acks"]
        now = time.monotonic()
        for k in [k for k, v in table.items() if v.expires <= now]:
            del table[k]
        return table

    async def ack_store(self, message: dict[str, Any], ttl: float) -> None:
        self._acks()[message["id"]] = _Acked(dict(message), time.monotonic() + ttl)

    async def ack_pending(self, destination: str) -> list[dict[str, Any]]:
        return [a.message for a in self._acks().values()
                if a.message["to"] == destination][:PENDING_MAX]

    async def ack_hold(self, message_id: str, conn_id: str) -> None:
        acked = self._acks().get(message_id)
        if acked is not None:
            acked.holders.add(conn_id)

    async def ack_confirm(self, message_id: str, destination: str, conn_id: str
                          ) -> tuple[bool, str | None]:
        table = self._acks()
        acked = table.get(message_id)
        if acked is None or acked.message["to"] != destination:
            return False, None
        acked.holders.discard(conn_id)
        acked.confirmed = True
        if acked.holders:
            return False, None
        del table[message_id]
        return True, acked.message.get("from")

    async def ack_release(self, conn_id: str, destination: str, message_ids: list[str]
                          ) -> list[tuple[str, str | None]]:
        table = self._acks()
        done: list[tuple[str, str | None]] = []
        for mid in message_ids:
            acked = table.get(mid)
            if acked is None:
                continue
            acked.holders.discard(conn_id)
            if not acked.holders and acked.confirmed:
                del table[mid]
                done.append((mid, acked.message.get("from")))
        return done


# ---------------------------------------------------------------- Redis


class RedisStore(Store):
    """Needs ``self.redis``, ``self.prefix`` and ``self._call`` (``broker.cluster``)."""

    redis: Any
    prefix: str

    async def _call(self, coro: Any) -> Any:  # pragma: no cover - RedisCluster's
        raise NotImplementedError

    def _script(self, name: str, source: str) -> Any:
        scripts = self.__dict__.setdefault("_store_scripts", {})
        if name not in scripts:
            scripts[name] = self.redis.register_script(source)
        return scripts[name]

    def _hist_keys(self, room_key: str) -> tuple[str, str]:
        h = _h(room_key)
        return f"{self.prefix}:h:{h}", f"{self.prefix}:hm:{h}"

    def _ack_keys(self, message_id: str) -> tuple[str, str]:
        return f"{self.prefix}:ack:m:{message_id}", f"{self.prefix}:ack:h:{message_id}"

    def _inbox(self, destination: str) -> str:
        return f"{self.prefix}:ack:in:{destination}"

    async def history_append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                             data_json: str, meta_ttl: float) -> dict[str, int]:
        keys: list[str] = []
        args: list[Any] = [trigger_id, data_json]
        for key, rule in rooms:
            keys.extend(self._hist_keys(key))
            args.extend([rule.size, int(rule.ttl * 1000), int(max(meta_ttl, rule.ttl) * 1000)])
        offsets = await self._call(self._script("append", _HISTORY_APPEND)(keys=keys, args=args))
        return {key: int(o) for (key, _rule), o in zip(rooms, offsets)}

    async def history_read(self, room_key: str, *, since: int | None, limit: int | None
                           ) -> HistoryPage:
        stream, meta = self._hist_keys(room_key)
        if limit == 0:
            base, top = await self._call(self.redis.hmget(meta, "base", "top"))
            return HistoryPage(int(top), int(base or 0), ()) if top is not None \
                else HistoryPage(0, 0, ())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hmget(meta, "base", "top")
        if since is None:
            pipe.xrevrange(stream, "+", "-", count=limit)
        else:
            pipe.xrange(stream, f"{since + 1}-0", "+", count=limit)
        (base, top), raw = await self._call(pipe.execute())
        if since is None:
            raw = list(reversed(raw))
        entries = tuple(HistoryEntry(int(_s(eid).split("-", 1)[0]), _s(f[b"i"]), _s(f[b"d"]))
                        for eid, f in raw)
        if top is None:
            return HistoryPage(0, 0, ())
        return HistoryPage(int(top), int(base or 0), entries)

    async def resume_save(self, key: str, fingerprint: str, state: str, ttl: float) -> None:
        name = f"{self.prefix}:resume:{key}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(name, mapping={"fp": fingerprint, "state": state})
        pipe.pexpire(name, max(int(ttl * 1000), 1))
        await self._call(pipe.execute())

    async def resume_take(self, key: str, fingerprint: str) -> str | None:
        found = await self._call(self._script("take", _RESUME_TAKE)(
            keys=[f"{self.prefix}:resume:{key}"], args=[fingerprint]))
        return None if found is None else _s(found)

    async def ack_store(self, message: dict[str, Any], ttl: float) -> None:
        m, _h_key = self._ack_keys(message["id"])
        inbox = self._inbox(message["to"])
        ttl_ms = max(int(ttl * 1000), 1)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(m, mapping={"m": json.dumps(message), "to": message["to"],
                              "from": message.get("from") or "", "c": "0"})
        pipe.pexpire(m, ttl_ms)
        pipe.zadd(inbox, {message["id"]: time.time() + ttl})
        pipe.pexpire(inbox, ttl_ms)
        await self._call(pipe.execute())

    async def ack_pending(self, destination: str) -> list[dict[str, Any]]:
        inbox = self._inbox(destination)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(inbox, "-inf", time.time())
        pipe.zrange(inbox, 0, PENDING_MAX - 1)
        _removed, ids = await self._call(pipe.execute())
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for mid in ids:
            pipe.hget(self._ack_keys(_s(mid))[0], "m")
        out = []
        for raw in await self._call(pipe.execute()):
            if raw is not None:
                out.append(json.loads(raw))
        return out

    async def ack_hold(self, message_id: str, conn_id: str) -> None:
        await self._call(self._script("hold", _ACK_HOLD)(
            keys=list(self._ack_keys(message_id)), args=[conn_id]))

    async def ack_confirm(self, message_id: str, destination: str, conn_id: str
                          ) -> tuple[bool, str | None]:
        m, h = self._ack_keys(message_id)
        status, sender = await self._call(self._script("confirm", _ACK_CONFIRM)(
            keys=[m, h, self._inbox(destination)], args=[message_id, destination, conn_id]))
        return int(status) == 2, (_s(sender) or None)

    async def ack_release(self, conn_id: str, destination: str, message_ids: list[str]
                          ) -> list[tuple[str, str | None]]:
        if not message_ids:
            return []
        keys = [self._inbox(destination)]
        for mid in message_ids:
            keys.extend(self._ack_keys(mid))
        flat = await self._call(self._script("release", _ACK_RELEASE)(
            keys=keys, args=[conn_id, *message_ids]))
        flat = [_s(x) for x in flat]
        return [(flat[i], flat[i + 1] or None) for i in range(0, len(flat), 2)]
