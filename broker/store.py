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
    P:hid:<h(id)>    hash    a client-supplied trigger id's record: stream key -> the offset
                             it got there (BROKER_TRIGGER_ID_TTL), so a retry is not recorded
                             again
    P:resume:<sha>   hash    ``fp`` (identity fingerprint), ``state`` (saved subscriptions)
    P:ack:m:<id>     hash    an acknowledged message: ``m`` (the routed message as JSON),
                             ``to``, ``from``, ``c`` ("1" once some connection confirmed)
    P:ack:h:<id>     set     connection ids that received it and have not confirmed
    P:ack:in:<dest>  zset    pending message ids of a destination, scored by expiry (s);
    P:ack:inb:<dest> hash    with the bytes each counts and their sum ("_"): the recipient's
                             ledger (quota). Likewise P:ack:out[b]:<sender> (the sender's,
                             "" for senders without a login) and P:ack:all[b]: (the store's)
    P:ack:hp:<proc>  zset    "<id> <connection id>" of the holds taken by that process's
                             connections (scored by expiry), and P:ack:hprocs the set of
                             processes that have some: a process that stops heartbeating
                             has its holds released by a live one (``ack_sweep``)

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

from . import errors
from .errors import AckRefused
from .history import HistoryEntry, HistoryPage, HistoryRule

PENDING_MAX = 1000  # acknowledged messages handed to one connection when it opens
# Bytes one stored acknowledged message counts beyond its JSON: the hash, the ledger entries.
ACK_OVERHEAD = 256


@dataclass(frozen=True)
class AckQuota:
    """Bounds on stored acknowledged messages (BROKER_ACK_MAX_*; 0 = no limit)."""

    per_recipient: int = 0
    recipient_bytes: int = 0
    per_sender: int = 0
    sender_bytes: int = 0
    total_bytes: int = 0


def _ack_refused(which: str, quota: AckQuota) -> AckRefused:
    if which == "recipient":
        return AckRefused(errors.ACK_RECIPIENT_QUOTA, (
            f"the recipient has the most pending acknowledged messages allowed "
            f"({quota.per_recipient} messages, {quota.recipient_bytes} bytes)"))
    if which == "sender":
        return AckRefused(errors.ACK_SENDER_QUOTA, (
            f"the sender has the most unconfirmed acknowledged messages allowed "
            f"({quota.per_sender} messages, {quota.sender_bytes} bytes)"))
    return AckRefused(errors.ACK_STORE_FULL, (
        f"acknowledged messages fill BROKER_ACK_MAX_TOTAL_BYTES ({quota.total_bytes})"))


def _over(count: int, size: int, max_count: int, max_bytes: int, new: int) -> bool:
    return (max_count > 0 and count >= max_count) or (max_bytes > 0 and size + new > max_bytes)

# KEYS: (stream, sequence) per room, then optionally the trigger id's record (``once``): a
# hash stream -> offset of the rooms that id was recorded in; a room found there is not
# appended again and its offset is returned as it was. ARGV: id, data, then (size, ttl ms,
# meta ttl ms) per room, then the record's ttl ms when there is one.
_HISTORY_APPEND = """
local t = redis.call('TIME')
local seed = t[1] .. string.format('%06d', tonumber(t[2]))
local n = math.floor(#KEYS / 2)
local once = nil
if #KEYS % 2 == 1 then once = KEYS[#KEYS] end
local out = {}
for i = 1, n do
  local s, m = KEYS[2 * i - 1], KEYS[2 * i]
  local j = 3 * (i - 1) + 3
  local done = once and redis.call('HGET', once, s)
  if done then
    out[i] = tonumber(done)
  else
    if redis.call('HSETNX', m, 'base', seed) == 1 then redis.call('HSET', m, 'top', seed) end
    local top = redis.call('HINCRBY', m, 'top', 1)
    redis.call('XADD', s, 'MAXLEN', '~', ARGV[j], string.format('%.0f', top) .. '-0',
               'i', ARGV[1], 'd', ARGV[2])
    redis.call('PEXPIRE', s, ARGV[j + 1])
    redis.call('PEXPIRE', m, ARGV[j + 2])
    if once then redis.call('HSET', once, s, top) end
    out[i] = top
  end
end
if once then redis.call('PEXPIRE', once, ARGV[#ARGV]) end
return out
"""

_RESUME_TAKE = """
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then return false end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1])
return state
"""

# Acknowledged messages. Each stored message is counted in three ledgers: its recipient's
# (``in``: the inbox), its sender's (``out``) and the store's (``all``). A ledger is a zset
# (message id -> expiry in seconds, as the inbox always was) and a hash (message id ->
# counted bytes, "_" -> their sum); expired entries are dropped from both whenever the
# ledger is read, so the sums stay exact.
# A hold is also recorded per process (``hp``), so that the holds of a process that stopped
# heartbeating can be released by the live ones (``_ACK_SWEEP``). Keys are built from the
# prefix (ARGV[1]): these scripts run on the registry's single Redis.
_ACK_LIB = """
local P = ARGV[1]
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function lz(kind, who) return P .. ':ack:' .. kind .. ':' .. who end
local function lb(kind, who) return P .. ':ack:' .. kind .. 'b:' .. who end
local function ledger_drop(kind, who, mid)
  if redis.call('ZREM', lz(kind, who), mid) == 1 then
    local b = lb(kind, who)
    redis.call('HINCRBY', b, '_', -tonumber(redis.call('HGET', b, mid) or '0'))
    redis.call('HDEL', b, mid)
  end
end
local function ledger_usage(kind, who, now)
  for _, mid in ipairs(redis.call('ZRANGEBYSCORE', lz(kind, who), '-inf', now)) do
    ledger_drop(kind, who, mid)
  end
  return redis.call('ZCARD', lz(kind, who)), tonumber(redis.call('HGET', lb(kind, who), '_') or '0')
end
local function ledger_add(kind, who, mid, expires, size, ttl)
  local z, b = lz(kind, who), lb(kind, who)
  redis.call('ZADD', z, expires, mid)
  redis.call('HSET', b, mid, size)
  redis.call('HINCRBY', b, '_', size)
  if redis.call('PTTL', z) < ttl then redis.call('PEXPIRE', z, ttl) end
  if redis.call('PTTL', b) < ttl then redis.call('PEXPIRE', b, ttl) end
end
local function complete(mid)
  local m = P .. ':ack:m:' .. mid
  local to, from = redis.call('HGET', m, 'to'), redis.call('HGET', m, 'from')
  if to then ledger_drop('in', to, mid) end
  if from then ledger_drop('out', from, mid) end
  ledger_drop('all', '', mid)
  redis.call('DEL', m, P .. ':ack:h:' .. mid)
  return from or '', to or ''
end
"""

# ARGV: P, id, stored JSON, to, from, ttl ms, counted bytes, then the quota: recipient count,
# recipient bytes, sender count, sender bytes, total bytes (0 = no limit). Returns "ok" or the
# ledger that refused it.
_ACK_STORE = _ACK_LIB + """
local mid, to, from = ARGV[2], ARGV[4], ARGV[5]
local ttl, size = tonumber(ARGV[6]), tonumber(ARGV[7])
local rn, rb, sn, sb, tb = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
                           tonumber(ARGV[11]), tonumber(ARGV[12])
local now = now_s()
local n, b = ledger_usage('in', to, now)
if (rn > 0 and n >= rn) or (rb > 0 and b + size > rb) then return 'recipient' end
n, b = ledger_usage('out', from, now)
if (sn > 0 and n >= sn) or (sb > 0 and b + size > sb) then return 'sender' end
n, b = ledger_usage('all', '', now)
if tb > 0 and b + size > tb then return 'total' end
local m = P .. ':ack:m:' .. mid
redis.call('HSET', m, 'm', ARGV[3], 'to', to, 'from', from, 'c', '0')
redis.call('PEXPIRE', m, ttl)
for _, l in ipairs({{'in', to}, {'out', from}, {'all', ''}}) do
  ledger_add(l[1], l[2], mid, now + ttl / 1000, size, ttl)
end
return 'ok'
"""

# ARGV: P, id, connection id, process id.
_ACK_HOLD = _ACK_LIB + """
local mid, conn = ARGV[2], ARGV[3]
local ttl = redis.call('PTTL', P .. ':ack:m:' .. mid)
if ttl <= 0 then return 0 end
local h, hp = P .. ':ack:h:' .. mid, P .. ':ack:hp:' .. ARGV[4]
redis.call('SADD', h, conn)
redis.call('PEXPIRE', h, ttl)
local now = now_s()
redis.call('ZREMRANGEBYSCORE', hp, '-inf', now)
redis.call('ZADD', hp, now + ttl / 1000, mid .. ' ' .. conn)
if redis.call('PTTL', hp) < ttl then redis.call('PEXPIRE', hp, ttl) end
redis.call('SADD', P .. ':ack:hprocs', ARGV[4])
return 1
"""

# ARGV: P, id, destination, connection id, process id.
_ACK_CONFIRM = _ACK_LIB + """
local mid, conn = ARGV[2], ARGV[4]
local m, h = P .. ':ack:m:' .. mid, P .. ':ack:h:' .. mid
if redis.call('HGET', m, 'to') ~= ARGV[3] then return {0, ''} end
redis.call('SREM', h, conn)
redis.call('ZREM', P .. ':ack:hp:' .. ARGV[5], mid .. ' ' .. conn)
redis.call('HSET', m, 'c', '1')
if redis.call('SCARD', h) > 0 then return {1, ''} end
local sender = complete(mid)
return {2, sender}
"""

# ARGV: P, connection id, process id, ids...
_ACK_RELEASE = _ACK_LIB + """
local out = {}
local conn, hp = ARGV[2], P .. ':ack:hp:' .. ARGV[3]
for i = 4, #ARGV do
  local mid = ARGV[i]
  local m, h = P .. ':ack:m:' .. mid, P .. ':ack:h:' .. mid
  redis.call('SREM', h, conn)
  redis.call('ZREM', hp, mid .. ' ' .. conn)
  if redis.call('SCARD', h) == 0 and redis.call('HGET', m, 'c') == '1' then
    local sender = complete(mid)
    table.insert(out, mid)
    table.insert(out, sender)
  end
end
return out
"""

# ARGV: P, BROKER_REGISTRY_TTL. Releases every hold of a process whose heartbeat is older than
# the registry TTL (or gone): the same liveness that hides its registry entries.
_ACK_SWEEP = _ACK_LIB + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, p in ipairs(redis.call('SMEMBERS', P .. ':ack:hprocs')) do
  local seen = redis.call('ZSCORE', P .. ':procs', p)
  if not seen or tonumber(seen) < now - tonumber(ARGV[2]) then
    local hp = P .. ':ack:hp:' .. p
    for _, e in ipairs(redis.call('ZRANGE', hp, 0, -1)) do
      local sp = string.find(e, ' ', 1, true)
      local mid, conn = string.sub(e, 1, sp - 1), string.sub(e, sp + 1)
      local m, h = P .. ':ack:m:' .. mid, P .. ':ack:h:' .. mid
      if redis.call('SREM', h, conn) == 1 and redis.call('SCARD', h) == 0
          and redis.call('HGET', m, 'c') == '1' then
        local sender, to = complete(mid)
        table.insert(out, mid)
        table.insert(out, sender)
        table.insert(out, to)
      end
    end
    redis.call('DEL', hp)
    redis.call('SREM', P .. ':ack:hprocs', p)
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
                             data_json: str, meta_ttl: float, once_ttl: float = 0
                             ) -> dict[str, int]:
        """Record one trigger in each room; returns each room key's new offset.

        ``once_ttl`` > 0 (a client-supplied trigger id): for that many seconds, a room this
        trigger id was already recorded in is not recorded again; its first offset is
        returned (a retry after a failed send)."""
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

    async def ack_store(self, message: dict[str, Any], ttl: float, quota: AckQuota) -> None:
        """Store it, or raise ``AckRefused`` when it does not fit ``quota`` (checked and
        stored in one step, so concurrent senders cannot overshoot)."""
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

    async def ack_sweep(self) -> list[tuple[str, str | None, str]]:
        """Release the holds of connections whose process stopped heartbeating (killed); returns
        the messages this completed: (id, sender, recipient)."""
        return []


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
    size: int
    holders: set[str] = field(default_factory=set)
    confirmed: bool = False


class MemoryStore(Store):
    def _store(self) -> dict[str, Any]:
        store = self.__dict__.get("_mem_store")
        if store is None:
            store = self.__dict__["_mem_store"] = {"rooms": {}, "resume": {}, "acks": {},
                                                   "once": {}}
        return store

    async def history_append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                             data_json: str, meta_ttl: float, once_ttl: float = 0
                             ) -> dict[str, int]:
        now, table = time.monotonic(), self._store()["rooms"]
        out: dict[str, int] = {}
        once_table: dict[str, tuple[dict[str, int], float]] = self._store()["once"]
        for k in [k for k, v in once_table.items() if v[1] <= now]:
            del once_table[k]
        done: dict[str, int] = {}
        if once_ttl > 0:
            done = once_table.setdefault(trigger_id, ({}, 0.0))[0]
            once_table[trigger_id] = (done, now + once_ttl)
        for key, rule in rooms:
            if key in done:
                out[key] = done[key]
                continue
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
            if once_ttl > 0:
                done[key] = room.top
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

    async def ack_store(self, message: dict[str, Any], ttl: float, quota: AckQuota) -> None:
        table = self._acks()
        size = len(json.dumps(message).encode()) + ACK_OVERHEAD
        to, sender = message["to"], message.get("from") or ""
        mine = [a for a in table.values() if a.message["to"] == to]
        if _over(len(mine), sum(a.size for a in mine), quota.per_recipient,
                 quota.recipient_bytes, size):
            raise _ack_refused("recipient", quota)
        mine = [a for a in table.values() if (a.message.get("from") or "") == sender]
        if _over(len(mine), sum(a.size for a in mine), quota.per_sender, quota.sender_bytes,
                 size):
            raise _ack_refused("sender", quota)
        if _over(0, sum(a.size for a in table.values()), 0, quota.total_bytes, size):
            raise _ack_refused("total", quota)
        table[message["id"]] = _Acked(dict(message), time.monotonic() + ttl, size)

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
    """Needs ``self.redis``, ``self.prefix``, ``self.proc_id``, ``self.ttl`` (the registry's)
    and ``self._call`` (``broker.cluster``)."""

    redis: Any
    prefix: str
    proc_id: str
    ttl: float

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

    def _inbox(self, destination: str) -> str:
        return f"{self.prefix}:ack:in:{destination}"

    async def history_append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                             data_json: str, meta_ttl: float, once_ttl: float = 0
                             ) -> dict[str, int]:
        keys: list[str] = []
        args: list[Any] = [trigger_id, data_json]
        for key, rule in rooms:
            keys.extend(self._hist_keys(key))
            args.extend([rule.size, int(rule.ttl * 1000), int(max(meta_ttl, rule.ttl) * 1000)])
        if once_ttl > 0:
            keys.append(f"{self.prefix}:hid:{_h(trigger_id)}")
            args.append(max(int(once_ttl * 1000), 1))
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

    async def _ack(self, name: str, source: str, *args: Any) -> Any:
        return await self._call(self._script(name, source)(keys=[], args=[self.prefix, *args]))

    async def ack_store(self, message: dict[str, Any], ttl: float, quota: AckQuota) -> None:
        stored = json.dumps(message)
        outcome = _s(await self._ack(
            "ack_store", _ACK_STORE, message["id"], stored, message["to"],
            message.get("from") or "", max(int(ttl * 1000), 1),
            len(stored.encode()) + ACK_OVERHEAD, quota.per_recipient, quota.recipient_bytes,
            quota.per_sender, quota.sender_bytes, quota.total_bytes))
        if outcome != "ok":
            raise _ack_refused(outcome, quota)

    async def ack_pending(self, destination: str) -> list[dict[str, Any]]:
        ids = await self._call(self.redis.zrangebyscore(
            self._inbox(destination), time.time(), "+inf", 0, PENDING_MAX))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for mid in ids:
            pipe.hget(f"{self.prefix}:ack:m:{_s(mid)}", "m")
        out = []
        for raw in await self._call(pipe.execute()):
            if raw is not None:
                out.append(json.loads(raw))
        return out

    async def ack_hold(self, message_id: str, conn_id: str) -> None:
        await self._ack("ack_hold", _ACK_HOLD, message_id, conn_id, self.proc_id)

    async def ack_confirm(self, message_id: str, destination: str, conn_id: str
                          ) -> tuple[bool, str | None]:
        status, sender = await self._ack("ack_confirm", _ACK_CONFIRM, message_id, destination,
                                         conn_id, self.proc_id)
        return int(status) == 2, (_s(sender) or None)

    async def ack_release(self, conn_id: str, destination: str, message_ids: list[str]
                          ) -> list[tuple[str, str | None]]:
        if not message_ids:
            return []
        flat = [_s(x) for x in await self._ack("ack_release", _ACK_RELEASE, conn_id,
                                               self.proc_id, *message_ids)]
        return [(flat[i], flat[i + 1] or None) for i in range(0, len(flat), 2)]

    async def ack_sweep(self) -> list[tuple[str, str | None, str]]:
        flat = [_s(x) for x in await self._ack("ack_sweep", _ACK_SWEEP, self.ttl)]
        return [(flat[i], flat[i + 1] or None, flat[i + 2]) for i in range(0, len(flat), 3)]
