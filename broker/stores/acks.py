"""The ack store: acknowledged direct messages, from the send until every connection of the
recipient that got one confirmed it (docs/guarantees.md "Acknowledged delivery").

A stored message is a ``broker.messages.DirectMessage``, kept as its channel-layer form
(``to_wire``, as JSON): the same bytes processes of earlier versions store, so a rolling
upgrade shares one store.

- ``RedisAcks``, keys under ``P`` = BROKER_KEY_PREFIX:

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
                             has its holds released by a live one (``sweep``)

  Every step that must not interleave with another process's (checking the quota and
  storing, completing a confirmation, releasing) is one Lua script.
- ``MemoryAcks``: the same semantics in one process's memory (the in-memory layer).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import errors, metrics
from ..errors import AckRefused
from ..messages import DirectMessage, from_wire
from .redis import RedisClient, text

log = logging.getLogger("broker.stores")

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


def _refused(which: str, quota: AckQuota) -> AckRefused:
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


def _stored(message: DirectMessage) -> str:
    """What is kept of a message: its channel-layer form as JSON."""
    return json.dumps(message.to_wire())


def _loaded(message_id: str, raw: Any) -> DirectMessage | None:
    """The stored message; None (logged and counted as ``ack-unreadable``) when Redis gives
    back something that is not one: it must not keep its recipient from connecting."""
    try:
        message = from_wire(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        message = None
        reason = f"{type(exc).__name__}: {exc}"[:200]
    else:
        reason = "not a direct message"
    if isinstance(message, DirectMessage):
        return message
    metrics.drop("ack-unreadable")
    log.warning("acknowledged message %s unreadable, skipped: %s", message_id, reason)
    return None


class AckStore(Protocol):
    async def put(self, message: DirectMessage, ttl: float, quota: AckQuota) -> None:
        """Store it, or raise ``AckRefused`` when it does not fit ``quota`` (checked and
        stored in one step, so concurrent senders cannot overshoot)."""
        ...

    async def pending(self, destination: str) -> list[DirectMessage]:
        """Unexpired, uncompleted messages for ``destination``, oldest first."""
        ...

    async def hold(self, message_id: str, conn_id: str) -> None:
        """``conn_id`` received the message and owes a confirmation."""
        ...

    async def confirm(self, message_id: str, destination: str, conn_id: str
                      ) -> tuple[bool, str | None]:
        """Record a confirmation; ``(True, sender)`` when it completed the message."""
        ...

    async def release(self, conn_id: str, destination: str, message_ids: list[str]
                      ) -> list[tuple[str, str | None]]:
        """``conn_id`` closed without confirming these; returns the messages this completed
        (others confirmed them already) with their senders."""
        ...

    async def sweep(self) -> list[tuple[str, str | None, str]]:
        """Release the holds of connections whose process stopped heartbeating (killed);
        returns the messages this completed: (id, sender, recipient)."""
        ...


# ---------------------------------------------------------------- in memory


@dataclass
class _Acked:
    message: DirectMessage
    expires: float
    size: int
    holders: set[str] = field(default_factory=set)
    confirmed: bool = False


class MemoryAcks:
    def __init__(self) -> None:
        self._table: dict[str, _Acked] = {}

    def _live(self) -> dict[str, _Acked]:
        table, now = self._table, time.monotonic()
        for k in [k for k, v in table.items() if v.expires <= now]:
            del table[k]
        return table

    async def put(self, message: DirectMessage, ttl: float, quota: AckQuota) -> None:
        table = self._live()
        size = len(_stored(message).encode()) + ACK_OVERHEAD
        to, sender = message.to, message.sender or ""
        mine = [a for a in table.values() if a.message.to == to]
        if _over(len(mine), sum(a.size for a in mine), quota.per_recipient,
                 quota.recipient_bytes, size):
            raise _refused("recipient", quota)
        mine = [a for a in table.values() if (a.message.sender or "") == sender]
        if _over(len(mine), sum(a.size for a in mine), quota.per_sender, quota.sender_bytes,
                 size):
            raise _refused("sender", quota)
        if _over(0, sum(a.size for a in table.values()), 0, quota.total_bytes, size):
            raise _refused("total", quota)
        table[message.id] = _Acked(message, time.monotonic() + ttl, size)

    async def pending(self, destination: str) -> list[DirectMessage]:
        return [a.message for a in self._live().values()
                if a.message.to == destination][:PENDING_MAX]

    async def hold(self, message_id: str, conn_id: str) -> None:
        acked = self._live().get(message_id)
        if acked is not None:
            acked.holders.add(conn_id)

    async def confirm(self, message_id: str, destination: str, conn_id: str
                      ) -> tuple[bool, str | None]:
        table = self._live()
        acked = table.get(message_id)
        if acked is None or acked.message.to != destination:
            return False, None
        acked.holders.discard(conn_id)
        acked.confirmed = True
        if acked.holders:
            return False, None
        del table[message_id]
        return True, acked.message.sender

    async def release(self, conn_id: str, destination: str, message_ids: list[str]
                      ) -> list[tuple[str, str | None]]:
        table = self._live()
        done: list[tuple[str, str | None]] = []
        for mid in message_ids:
            acked = table.get(mid)
            if acked is None:
                continue
            acked.holders.discard(conn_id)
            if not acked.holders and acked.confirmed:
                del table[mid]
                done.append((mid, acked.message.sender))
        return done

    async def sweep(self) -> list[tuple[str, str | None, str]]:
        return []  # one process: its connections release their holds when they close


# ---------------------------------------------------------------- Redis

# Each stored message is counted in three ledgers: its recipient's (``in``: the inbox), its
# sender's (``out``) and the store's (``all``). A ledger is a zset (message id -> expiry in
# seconds, as the inbox always was) and a hash (message id -> counted bytes, "_" -> their
# sum); expired entries are dropped from both whenever the ledger is read, so the sums stay
# exact. A hold is also recorded per process (``hp``), so that the holds of a process that
# stopped heartbeating can be released by the live ones (``_SWEEP``). Keys are built from the
# prefix (ARGV[1]): these scripts run on the registry's single Redis.
_LIB = """
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
_PUT = _LIB + """
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
_HOLD = _LIB + """
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
_CONFIRM = _LIB + """
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
_RELEASE = _LIB + """
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
_SWEEP = _LIB + """
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


class RedisAcks:
    """``proc_id`` and ``registry_ttl``: the registry's, whose liveness ``sweep`` reads."""

    def __init__(self, client: RedisClient, proc_id: str, registry_ttl: float) -> None:
        self.client = client
        self.proc_id = proc_id
        self.registry_ttl = registry_ttl

    async def _run(self, source: str, *args: Any) -> Any:
        script = self.client.script(source)
        return await self.client.call(script(keys=[], args=[self.client.prefix, *args]))

    async def put(self, message: DirectMessage, ttl: float, quota: AckQuota) -> None:
        stored = _stored(message)
        outcome = text(await self._run(
            _PUT, message.id, stored, message.to, message.sender or "",
            max(int(ttl * 1000), 1), len(stored.encode()) + ACK_OVERHEAD,
            quota.per_recipient, quota.recipient_bytes, quota.per_sender, quota.sender_bytes,
            quota.total_bytes))
        if outcome != "ok":
            raise _refused(outcome, quota)

    async def pending(self, destination: str) -> list[DirectMessage]:
        redis = self.client.redis
        ids = await self.client.call(redis.zrangebyscore(
            self.client.key("ack", "in", destination), time.time(), "+inf", 0, PENDING_MAX))
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for mid in ids:
            pipe.hget(self.client.key("ack", "m", text(mid)), "m")
        out: list[DirectMessage] = []
        for mid, raw in zip(ids, await self.client.call(pipe.execute())):
            message = None if raw is None else _loaded(text(mid), raw)
            if message is not None:
                out.append(message)
        return out

    async def hold(self, message_id: str, conn_id: str) -> None:
        await self._run(_HOLD, message_id, conn_id, self.proc_id)

    async def confirm(self, message_id: str, destination: str, conn_id: str
                      ) -> tuple[bool, str | None]:
        status, sender = await self._run(_CONFIRM, message_id, destination, conn_id,
                                         self.proc_id)
        return int(status) == 2, (text(sender) or None)

    async def release(self, conn_id: str, destination: str, message_ids: list[str]
                      ) -> list[tuple[str, str | None]]:
        if not message_ids:
            return []
        flat = [text(x) for x in await self._run(_RELEASE, conn_id, self.proc_id,
                                                 *message_ids)]
        return [(flat[i], flat[i + 1] or None) for i in range(0, len(flat), 2)]

    async def sweep(self) -> list[tuple[str, str | None, str]]:
        flat = [text(x) for x in await self._run(_SWEEP, self.registry_ttl)]
        return [(flat[i], flat[i + 1] or None, flat[i + 2]) for i in range(0, len(flat), 3)]
