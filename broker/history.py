"""Room history: which rooms keep it, what an offset is, and when a recovery is complete.

Pure, no I/O: the storage is the cluster's (``RedisCluster``: Redis Streams;
``MemoryCluster``: the same in memory), the seam between replay and live delivery is the
driver's (``broker.connection``). This module owns the rules both follow.

- **Which rooms.** ``BROKER_HISTORY`` is a list of ``{"room": <pattern>, "size": n, "ttl": s}``;
  the first pattern that permits a concrete trigger room (same keys, ``"*"`` matches any value)
  decides that room's history. A trigger is recorded only when it asks for it
  (``"history": true``) and only in its concrete rooms that a pattern covers; a trigger room
  that holds ``"*"`` is never recorded.
- **Offsets.** Every recorded room has its own sequence. Its first offset is the clock in
  microseconds when the sequence starts (its ``base``) plus one, then +1 per recorded trigger.
  So offsets of one room are dense (``n+1`` follows ``n``), and a sequence that restarts (its
  state expired) starts above every offset the old one handed out. Offsets stay below 2**53:
  exact in JavaScript numbers.
- **Recovery.** ``since`` is the last offset a client has. The window reaches back when
  every offset after ``since`` up to the room's top is still stored: the first stored entry
  after ``since`` is ``since + 1`` (``base + 1`` for ``since == 0``, "from the start"). Anything
  else (trimmed by size, expired by ttl, a restarted sequence, an offset the room never issued)
  is ``recovered: false``. ``recovered: true`` is a proof, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rooms import InvalidRoom, Room, parse_room, permits

from .filters import Scalar


@dataclass(frozen=True, slots=True)
class HistoryRule:
    """One ``BROKER_HISTORY`` entry: rooms the pattern permits keep ``size`` triggers for
    ``ttl`` seconds after the last one."""

    room: Room
    size: int
    ttl: float


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    offset: int
    id: str  # the trigger id
    data_json: str  # the trigger's data, encoded once
    # its tags (broker.filters): a filtered subscription's replay is filtered as live frames are
    tags: Mapping[str, Scalar] | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """What the store holds for one room: ``top`` is its last offset (0: no sequence, i.e. never
    recorded or expired), ``base`` the offset its sequence started after, ``entries`` in
    ascending offset order."""

    top: int
    base: int
    entries: tuple[HistoryEntry, ...]


def parse_history_setting(value: Any) -> tuple[HistoryRule, ...]:
    """``BROKER_HISTORY`` -> rules. Raises ValueError naming what is wrong."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError("BROKER_HISTORY must be a list of {room, size, ttl}")
    rules = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"room", "size", "ttl"}:
            raise ValueError(f"BROKER_HISTORY[{i}] must be an object with room, size, ttl")
        try:
            room = parse_room(item.get("room"))
        except InvalidRoom as exc:
            raise ValueError(f"BROKER_HISTORY[{i}].room: {exc}") from None
        size, ttl = item.get("size"), item.get("ttl")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1_000_000:
            raise ValueError(f"BROKER_HISTORY[{i}].size must be an integer in 1..1000000")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0:
            raise ValueError(f"BROKER_HISTORY[{i}].ttl must be a positive number of seconds")
        rules.append(HistoryRule(room, size, float(ttl)))
    return tuple(rules)


class HistoryPolicy:
    """The rooms that keep history; the first matching rule wins."""

    def __init__(self, rules: Sequence[HistoryRule] = ()) -> None:
        self.rules = tuple(rules)

    @classmethod
    def from_setting(cls, value: Any) -> HistoryPolicy:
        return cls(parse_history_setting(value))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rule_for(self, room: Room) -> HistoryRule | None:
        """The rule of a concrete room; None for a wildcard room or a room no rule covers."""
        if not self.rules or not room.is_concrete:
            return None
        for rule in self.rules:
            if permits(rule.room, room):
                return rule
        return None

    def recorded(self, rooms: Iterable[Room]) -> list[tuple[Room, HistoryRule]]:
        """The distinct rooms of a trigger that asked for history, with their rules."""
        out: list[tuple[Room, HistoryRule]] = []
        seen: set[str] = set()
        for room in rooms:
            rule = self.rule_for(room)
            if rule is not None and room.key not in seen:
                seen.add(room.key)
                out.append((room, rule))
        return out


def valid_offset(value: object) -> bool:
    """``since``: a non-negative integer (0 = from the start of the room's sequence)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def recovered(since: int, page: HistoryPage) -> bool:
    """Does ``page`` (read after ``since``) hold every offset after ``since``? See the module
    docstring. ``page.entries`` must be the entries after ``since``, oldest first."""
    if page.top == 0:
        # No sequence: never recorded (nothing missed, provable only for "from the start"),
        # or expired together with its state (cannot tell what was missed).
        return since == 0
    start = page.base if since == 0 else since
    if start < page.base or start > page.top:
        return False  # an offset of another (older or foreign) sequence
    if start == page.top:
        return True
    return bool(page.entries) and page.entries[0].offset == start + 1


Buffered = tuple[str, "int | None", Any]  # (trigger id, offset or None, frame)


def merge_seam(replayed: Sequence[HistoryEntry], buffered: Iterable[Buffered],
               since: int) -> list[Buffered]:
    """The live items to deliver after a replay: those neither replayed nor already held.

    ``buffered`` holds ``(trigger id, offset or None, frame)`` received live while the history
    was read, in arrival order. A trigger is recorded before it is published, so one that came
    live and was also read from history is dropped by its id; one at or below ``since`` is one
    the client already has (pass -1 when there is none).
    """
    ids = {e.id for e in replayed}
    return [item for item in buffered
            if item[0] not in ids and (item[1] is None or item[1] > since)]
