"""The history store: each recorded room's triggers and its offset sequence (issue 8).

Offsets, rules and the recovery rule are ``broker.history``'s (pure); this module keeps the
entries. Two implementations of ``HistoryStore``:

- ``RedisHistory``, keys under ``P`` = BROKER_KEY_PREFIX, ``h(x)`` a short hash:

    P:h:<h(room)>    stream  one room's recorded triggers; entry id ``<offset>-0``, fields
                             ``i`` (trigger id), ``d`` (data JSON) and, for a trigger with
                             tags, ``t`` (tags JSON; broker.filters); XADD MAXLEN ~size,
                             expires ``ttl`` after the last trigger
    P:hm:<h(room)>   hash    that room's sequence: ``base`` (where it started), ``top`` (its
                             last offset); expires BROKER_HISTORY_META_TTL (>= ttl) after the
                             last trigger, so "recovered" stays exact after the stream expired
    P:hid:<h(id)>    hash    a client-supplied trigger id's record: stream key -> the offset
                             it got there (BROKER_TRIGGER_ID_TTL), so a retry is not recorded
                             again

  Assigning offsets and appending is one Lua script: concurrent publishers (any process) get
  consecutive offsets, and no reader sees an offset before its entry.
- ``MemoryHistory``: the same semantics in one process's memory (the in-memory layer).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from ..filters import Tags, check_tags
from ..history import HistoryEntry, HistoryPage, HistoryRule
from ..jsontext import dump_json, load_json
from .redis import RedisClient, short_hash, text

# KEYS: (stream, sequence) per room, then optionally the trigger id's record (``once``): a
# hash stream -> offset of the rooms that id was recorded in; a room found there is not
# appended again and its offset is returned as it was. ARGV: id, data, tags JSON ('' for
# none), then (size, ttl ms, meta ttl ms) per room, then the record's ttl ms when there is one.
_HISTORY_APPEND = """
local t = redis.call('TIME')
local seed = t[1] .. string.format('%06d', tonumber(t[2]))
local n = math.floor(#KEYS / 2)
local once = nil
if #KEYS % 2 == 1 then once = KEYS[#KEYS] end
local fields = {'i', ARGV[1], 'd', ARGV[2]}
if ARGV[3] ~= '' then fields[5] = 't'; fields[6] = ARGV[3] end
local out = {}
for i = 1, n do
  local s, m = KEYS[2 * i - 1], KEYS[2 * i]
  local j = 3 * (i - 1) + 4
  local done = once and redis.call('HGET', once, s)
  if done then
    out[i] = tonumber(done)
  else
    if redis.call('HSETNX', m, 'base', seed) == 1 then redis.call('HSET', m, 'top', seed) end
    local top = redis.call('HINCRBY', m, 'top', 1)
    redis.call('XADD', s, 'MAXLEN', '~', ARGV[j], string.format('%.0f', top) .. '-0',
               unpack(fields))
    redis.call('PEXPIRE', s, ARGV[j + 1])
    redis.call('PEXPIRE', m, ARGV[j + 2])
    if once then redis.call('HSET', once, s, top) end
    out[i] = top
  end
end
if once then redis.call('PEXPIRE', once, ARGV[#ARGV]) end
return out
"""


class HistoryStore(Protocol):
    async def append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                     data_json: str, meta_ttl: float, once_ttl: float = 0,
                     tags: Tags | None = None) -> dict[str, int]:
        """Record one trigger (with its ``tags``) in each room; returns each room key's new
        offset.

        ``once_ttl`` > 0 (a client-supplied trigger id): for that many seconds, a room this
        trigger id was already recorded in is not recorded again; its first offset is
        returned (a retry after a failed send)."""
        ...

    async def read(self, room_key: str, *, since: int | None, limit: int | None
                   ) -> HistoryPage:
        """``since`` None: the latest ``limit`` entries; else the first ``limit`` after it.
        ``limit`` 0: none (the room's offsets only); None: all."""
        ...


@dataclass
class _Room:
    base: int
    top: int
    entries: deque[HistoryEntry]
    expires: float  # the entries'
    meta_expires: float  # the sequence's


class MemoryHistory:
    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        # trigger id -> (room key -> offset, expiry): ``once_ttl``'s record
        self._once: dict[str, tuple[dict[str, int], float]] = {}

    async def append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                     data_json: str, meta_ttl: float, once_ttl: float = 0,
                     tags: Tags | None = None) -> dict[str, int]:
        now = time.monotonic()
        out: dict[str, int] = {}
        for k in [k for k, v in self._once.items() if v[1] <= now]:
            del self._once[k]
        done: dict[str, int] = {}
        if once_ttl > 0:
            done = self._once.setdefault(trigger_id, ({}, 0.0))[0]
            self._once[trigger_id] = (done, now + once_ttl)
        for key, rule in rooms:
            if key in done:
                out[key] = done[key]
                continue
            room = self._rooms.get(key)
            if room is not None and room.meta_expires <= now:
                room = None
            if room is None:
                base = time.time_ns() // 1000
                room = self._rooms[key] = _Room(base, base, deque(), 0.0, 0.0)
            if room.expires <= now:
                room.entries.clear()
            room.top += 1
            room.entries.append(HistoryEntry(room.top, trigger_id, data_json, tags))
            while len(room.entries) > rule.size:
                room.entries.popleft()
            room.expires = now + rule.ttl
            room.meta_expires = now + max(meta_ttl, rule.ttl)
            out[key] = room.top
            if once_ttl > 0:
                done[key] = room.top
        return out

    async def read(self, room_key: str, *, since: int | None, limit: int | None
                   ) -> HistoryPage:
        now = time.monotonic()
        room = self._rooms.get(room_key)
        if room is None or room.meta_expires <= now:
            return HistoryPage(0, 0, ())
        entries = list(room.entries) if room.expires > now and limit != 0 else []
        if since is None:
            picked = entries if limit is None else entries[max(len(entries) - limit, 0):]
        else:
            picked = [e for e in entries if e.offset > since][:limit]
        return HistoryPage(room.top, room.base, tuple(picked))


class RedisHistory:
    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._append = client.script(_HISTORY_APPEND)

    def _keys(self, room_key: str) -> tuple[str, str]:
        h = short_hash(room_key)
        return self.client.key("h", h), self.client.key("hm", h)

    async def append(self, rooms: list[tuple[str, HistoryRule]], trigger_id: str,
                     data_json: str, meta_ttl: float, once_ttl: float = 0,
                     tags: Tags | None = None) -> dict[str, int]:
        keys: list[str] = []
        args: list[Any] = [trigger_id, data_json, dump_json(tags) if tags else ""]
        for key, rule in rooms:
            keys.extend(self._keys(key))
            args.extend([rule.size, int(rule.ttl * 1000), int(max(meta_ttl, rule.ttl) * 1000)])
        if once_ttl > 0:
            keys.append(self.client.key("hid", short_hash(trigger_id)))
            args.append(max(int(once_ttl * 1000), 1))
        offsets = await self.client.call(self._append(keys=keys, args=args))
        return {key: int(o) for (key, _rule), o in zip(rooms, offsets, strict=True)}

    async def read(self, room_key: str, *, since: int | None, limit: int | None
                   ) -> HistoryPage:
        stream, meta = self._keys(room_key)
        redis = self.client.redis
        if limit == 0:
            base, top = await self.client.call(redis.hmget(meta, "base", "top"))
            return HistoryPage(int(top), int(base or 0), ()) if top is not None \
                else HistoryPage(0, 0, ())
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(meta, "base", "top")
        if since is None:
            pipe.xrevrange(stream, "+", "-", count=limit)
        else:
            pipe.xrange(stream, f"{since + 1}-0", "+", count=limit)
        (base, top), raw = await self.client.call(pipe.execute())
        if since is None:
            raw = list(reversed(raw))
        entries = tuple(HistoryEntry(int(text(eid).split("-", 1)[0]), text(f[b"i"]),
                                     text(f[b"d"]), _tags(f.get(b"t"))) for eid, f in raw)
        if top is None:
            return HistoryPage(0, 0, ())
        return HistoryPage(int(top), int(base or 0), entries)


def _tags(raw: bytes | None) -> Tags | None:
    """An entry's tags as recorded (``t``; absent for one without tags, or recorded by an
    earlier version)."""
    return None if raw is None else check_tags(load_json(raw))
