"""Presence: each room's members and their connection counts, cluster-wide, and the moments
a member joins (its first connection anywhere) or leaves (its last one).

Two implementations of ``PresenceStore``:

- ``RedisPresence``: every process adds its own connections' changes (``apply``, one Lua call
  for a batch) to its own counts and to the room's totals, and is told the transitions its
  changes made. The process that ``apply`` finds stale (its heartbeat older than
  ``dead_after``) is refused (``STALE``): it must ``sync`` its whole state once its heartbeat is
  fresh again. Any process's ``sweep`` removes the counts of the processes whose heartbeat is
  older than ``dead_after`` (killed: they could not remove their own) and is told the
  ``leave`` transitions that made. Each script runs atomically, so each transition is told to
  exactly one caller.
- ``MemoryPresence``: the same, inside one process, for the in-memory channel layer.

Keys (``P`` = BROKER_KEY_PREFIX; heartbeats are the registry's ``P:procs``):
  P:pr:<room key>   hash  member -> connections, over live processes
  P:prp:<proc>      hash  "<room key> <US> <member>" -> that process's connections
  P:prprocs         set   processes whose counts P:pr:* holds

A room key is canonical JSON (or ``broker.presence.ONLINE``) and holds no unit separator
(0x1f): JSON escapes control characters.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from ..presence import JOIN, LEAVE, Transition
from .redis import RedisClient, text

STALE = None  # what ``apply`` answers when the process must ``sync`` first

Key = tuple[str, str]  # (room key, member)

# Shared by the scripts: add DELTA to ROOM's MEMBER total; append a transition if it crossed 0.
_ADD = """
local function add(prefix, room, member, delta, out)
  local key = prefix .. ':pr:' .. room
  local total = redis.call('HINCRBY', key, member, delta)
  local before = total - delta
  if total <= 0 then redis.call('HDEL', key, member) end
  if before <= 0 and total > 0 then
    table.insert(out, 'join'); table.insert(out, room); table.insert(out, member)
  elseif before > 0 and total <= 0 then
    table.insert(out, 'leave'); table.insert(out, room); table.insert(out, member)
  end
end
-- The same, for one of a process's own fields ("<room> <US> <member>").
local function add_field(prefix, field, delta, out)
  local sep = string.find(field, '\\31', 1, true)
  add(prefix, string.sub(field, 1, sep - 1), string.sub(field, sep + 1), delta, out)
end
local function fresh(prefix, proc, dead_after)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local seen = redis.call('ZSCORE', prefix .. ':procs', proc)
  return seen and tonumber(seen) >= now - dead_after, now
end
"""

# ARGV: prefix, proc, dead_after, known (1: this process's counts must be here), then
# (room, member, delta) triples.
_APPLY = _ADD + """
local prefix, proc = ARGV[1], ARGV[2]
local own = prefix .. ':prp:' .. proc
if not fresh(prefix, proc, tonumber(ARGV[3])) then return {'stale'} end
if ARGV[4] == '1' and redis.call('SISMEMBER', prefix .. ':prprocs', proc) == 0 then
  return {'stale'}
end
redis.call('SADD', prefix .. ':prprocs', proc)
local out = {}
for i = 5, #ARGV, 3 do
  local room, member, delta = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local field = room .. '\\31' .. member
  if redis.call('HINCRBY', own, field, delta) <= 0 then redis.call('HDEL', own, field) end
  add(prefix, room, member, delta, out)
end
return out
"""

# ARGV: prefix, proc, then (room, member, count) triples: this process's whole state.
_SYNC = _ADD + """
local prefix, proc = ARGV[1], ARGV[2]
local own = prefix .. ':prp:' .. proc
local old = {}
local flat = redis.call('HGETALL', own)
for i = 1, #flat, 2 do old[flat[i]] = tonumber(flat[i + 1]) end
redis.call('DEL', own)
local out = {}
for i = 3, #ARGV, 3 do
  local room, member, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local field = room .. '\\31' .. member
  local delta = count - (old[field] or 0)
  old[field] = nil
  redis.call('HSET', own, field, count)
  if delta ~= 0 then add(prefix, room, member, delta, out) end
end
for field, count in pairs(old) do add_field(prefix, field, -count, out) end
if #ARGV > 2 then redis.call('SADD', prefix .. ':prprocs', proc)
else redis.call('SREM', prefix .. ':prprocs', proc) end
return out
"""

# ARGV: prefix, dead_after, the caller's proc, known (1: its counts must be here). The first
# element answered: '1' when the caller's own counts are gone (it was swept while it stalled).
_SWEEP = _ADD + """
local prefix = ARGV[1]
local lost = ARGV[4] == '1' and redis.call('SISMEMBER', prefix .. ':prprocs', ARGV[3]) == 0
local out = {lost and '1' or '0'}
for _, proc in ipairs(redis.call('SMEMBERS', prefix .. ':prprocs')) do
  if not fresh(prefix, proc, tonumber(ARGV[2])) then
    local own = prefix .. ':prp:' .. proc
    local flat = redis.call('HGETALL', own)
    for i = 1, #flat, 2 do add_field(prefix, flat[i], -tonumber(flat[i + 1]), out) end
    redis.call('DEL', own)
    redis.call('SREM', prefix .. ':prprocs', proc)
  end
end
return out
"""


class PresenceStore(Protocol):
    async def apply(self, changes: list[tuple[str, str, int]],
                    known: bool) -> list[Transition] | None:
        """Add this process's (room key, member, +/-n) changes, in order; the transitions they
        made. ``STALE`` (None), changing nothing, when this process is not live or (``known``:
        it has counts stored) its counts were swept: ``sync`` once live again."""
        ...

    async def sync(self, state: dict[Key, int]) -> list[Transition]:
        """Make this process's stored counts ``state`` (its whole present state; {} when it
        leaves); the transitions that made."""
        ...

    async def sweep(self, known: bool) -> tuple[list[Transition], bool]:
        """Remove the counts of every process found dead; the transitions that made, and
        whether (``known``: this process has counts stored) this process's were among them
        earlier (it stalled): then it must ``sync``."""
        ...

    async def members(self, room_key: str) -> dict[str, int]:
        """The room's members and their connections (``ANONYMOUS``: connections without a
        login), over live processes and those not yet found dead."""
        ...


def _transitions(flat: list[object]) -> list[Transition]:
    return [Transition(text(flat[i]), text(flat[i + 1]), text(flat[i + 2]))
            for i in range(0, len(flat), 3)]


class RedisPresence:
    def __init__(self, client: RedisClient, proc_id: str, dead_after: float) -> None:
        self.client = client
        self.proc_id = proc_id
        self.dead_after = dead_after
        self._apply = client.script(_APPLY)
        self._sync = client.script(_SYNC)
        self._sweep = client.script(_SWEEP)

    async def apply(self, changes: list[tuple[str, str, int]],
                    known: bool) -> list[Transition] | None:
        args: list[str | int | float] = [self.client.prefix, self.proc_id, self.dead_after,
                                         1 if known else 0]
        for room, member, delta in changes:
            args += [room, member, delta]
        flat = await self.client.call(self._apply(keys=[], args=args))
        if flat and text(flat[0]) == "stale":
            return STALE
        return _transitions(flat)

    async def sync(self, state: dict[Key, int]) -> list[Transition]:
        args: list[str | int] = [self.client.prefix, self.proc_id]
        for (room, member), count in state.items():
            if count > 0:
                args += [room, member, count]
        return _transitions(await self.client.call(self._sync(keys=[], args=args)))

    async def sweep(self, known: bool) -> tuple[list[Transition], bool]:
        flat = await self.client.call(self._sweep(
            keys=[], args=[self.client.prefix, self.dead_after, self.proc_id, 1 if known else 0]))
        return _transitions(flat[1:]), text(flat[0]) == "1"

    async def members(self, room_key: str) -> dict[str, int]:
        raw = await self.client.call(
            self.client.redis.hgetall(self.client.key("pr", room_key)))
        return {text(m): int(c) for m, c in raw.items() if int(c) > 0}


class MemoryPresence:
    """One process: its counts are the totals, and nothing is ever stale or dead."""

    def __init__(self) -> None:
        self._rooms: dict[str, Counter[str]] = {}

    def _add(self, room: str, member: str, delta: int, out: list[Transition]) -> None:
        members = self._rooms.setdefault(room, Counter())
        before = members[member]
        total = before + delta
        if total > 0:
            members[member] = total
        else:
            del members[member]
            if not members:
                del self._rooms[room]
        if before <= 0 < total:
            out.append(Transition(JOIN, room, member))
        elif total <= 0 < before:
            out.append(Transition(LEAVE, room, member))

    async def apply(self, changes: list[tuple[str, str, int]],
                    known: bool) -> list[Transition] | None:
        out: list[Transition] = []
        for room, member, delta in changes:
            self._add(room, member, delta, out)
        return out

    async def sync(self, state: dict[Key, int]) -> list[Transition]:
        out: list[Transition] = []
        held = {(room, m): c for room, members in self._rooms.items()
                for m, c in members.items()}
        for key in held.keys() | state.keys():
            delta = state.get(key, 0) - held.get(key, 0)
            if delta:
                self._add(*key, delta, out)
        return out

    async def sweep(self, known: bool) -> tuple[list[Transition], bool]:
        return [], False

    async def members(self, room_key: str) -> dict[str, int]:
        return dict(self._rooms.get(room_key, {}))
