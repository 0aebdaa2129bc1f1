"""SubscriptionIndex: a process-local index from rooms to subscribers (PROTOCOL.md §1 Cost).

It owns finding, for a trigger room, every item whose subscription room matches it, without
scanning all subscriptions. A subscription room S matches a concrete trigger T exactly when
S == T.with_mask(S.mask), so a concrete trigger needs one dict lookup per wildcard mask in
use for its shape: O(distinct masks), independent of the number of subscriptions.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from .room import Room, matches

T = TypeVar("T", bound=Hashable)
_NONE: frozenset[Any] = frozenset()


class SubscriptionIndex(Generic[T]):
    """Items (e.g. subscription handles) indexed by the exact room they subscribe to."""

    __slots__ = ("_shapes", "_size", "_subs")

    def __init__(self) -> None:
        # room key -> items subscribed to exactly that room. Never holds an empty set.
        self._subs: dict[str, set[T]] = {}
        # shape key -> mask -> {room key: room}, for exactly the rooms in _subs. Inner dicts
        # are never empty, so a mask's dict size is its refcount and masks() is exact.
        self._shapes: dict[str, dict[int, dict[str, Room]]] = {}
        self._size = 0  # == sum(len(items) for items in _subs.values())

    def add(self, room: Room, item: T) -> bool:
        """Add `item` under `room`; True when it is the room's first item in this index."""
        items = self._subs.get(room.key)
        if items is None:
            self._subs[room.key] = {item}
            self._shapes.setdefault(room.shape_key, {}).setdefault(room.mask, {})[room.key] = room
            self._size += 1
            return True
        if item not in items:
            items.add(item)
            self._size += 1
        return False

    def shared(self, room: Room) -> Room:
        """The Room object this index holds under ``room``'s key when it is ``room`` given
        alike (``Room.given_alike``), else ``room``: the subscribers of one room can hold one
        object, not one copy each."""
        if room.key not in self._subs:
            return room
        held = self._shapes[room.shape_key][room.mask][room.key]
        return held if held.given_alike(room) else room

    def discard(self, room: Room, item: T) -> bool:
        """Remove `item` from `room`; True when the room has no items left. Unknown: False."""
        items = self._subs.get(room.key)
        if items is None or item not in items:
            return False
        items.remove(item)
        self._size -= 1
        if items:
            return False
        del self._subs[room.key]
        by_mask = self._shapes[room.shape_key]
        rooms = by_mask[room.mask]
        del rooms[room.key]
        if not rooms:
            del by_mask[room.mask]
            if not by_mask:
                del self._shapes[room.shape_key]
        return True

    def exactly(self, room_key: str) -> set[T] | frozenset[T]:
        """The items subscribed to exactly the room ``room_key`` (do not change it)."""
        return self._subs.get(room_key, _NONE)

    def match(self, trigger: Room) -> set[T]:
        """Every item whose room matches `trigger` (wildcards on either side).

        For each mask m in use for the trigger's shape: when m covers the trigger's own
        wildcards (always true for a concrete trigger) the matching rooms of mask m are just
        trigger.with_mask(m), one dict lookup. Otherwise the rooms of mask m are scanned.
        """
        by_mask = self._shapes.get(trigger.shape_key)
        out: set[T] = set()
        if not by_mask:
            return out
        tmask = trigger.mask
        for mask, rooms in by_mask.items():
            if mask & tmask == tmask:
                found = self._subs.get(trigger.masked_key(mask))
                if found:
                    out |= found
            else:
                for key, room in rooms.items():
                    if matches(room, trigger):
                        out |= self._subs[key]
        return out

    def match_many(self, triggers: Iterable[Room]) -> set[T]:
        """Union of match(t): each item at most once however many triggers it matches."""
        out: set[T] = set()
        for trigger in triggers:
            out |= self.match(trigger)
        return out

    def masks(self, shape_key: str) -> frozenset[int]:
        """Wildcard masks of the rooms currently indexed with that shape (0 = concrete)."""
        return frozenset(self._shapes.get(shape_key, ()))

    def has_shape(self, shape_key: str) -> bool:
        return shape_key in self._shapes

    def room_count(self) -> int:
        """Distinct rooms holding at least one item."""
        return len(self._subs)

    def __len__(self) -> int:
        """Total items over all rooms."""
        return self._size

    def rooms(self) -> Iterator[Room]:
        """The indexed rooms (a snapshot: safe to mutate the index while iterating)."""
        return iter([r for by_mask in self._shapes.values()
                     for rooms in by_mask.values() for r in rooms.values()])
