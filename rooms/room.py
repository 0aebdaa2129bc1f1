"""Rooms: validation, canonical form, matching and permission (PROTOCOL.md §1).

This module owns what a room *is*: which JSON values are valid rooms, the canonical key
that identifies a room everywhere (in-process dict keys, Redis, cross-process messages),
and the two relations of the contract, `matches` and `permits`.

Invariants of every `Room`:
- it passed validation: 1..MAX_KEYS string keys, scalar values, size within MAX_ROOM_BYTES;
- values are normalized: plain str/int/float/bool, integral floats are ints (1.0 -> 1);
- `key` is the canonical JSON text, so two rooms are equal exactly when their keys are;
- every wildcard variant (`with_mask`) of a valid room is itself a valid room.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeAlias, final

WILDCARD = "*"
Scalar: TypeAlias = str | int | float | bool
MAX_KEYS = 16
# Bound on the UTF-8 length of a room's canonical key, counting every value as at least as
# long as the wildcard '"*"' (3 bytes). The padding makes the bound closed under
# `with_mask`: a valid room's wildcard variants are valid too, so `from_key` accepts them.
MAX_ROOM_BYTES = 1024

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_WILD = _encode(WILDCARD)  # '"*"', the encoded wildcard value
_TOO_LARGE = f"room too large (max {MAX_ROOM_BYTES} bytes as canonical JSON)"
# An int with more bits than this has more than MAX_ROOM_BYTES decimal digits. Checking
# it first also keeps us clear of Python's int-to-str digit limit.
_MAX_INT_BITS = 3500

# Rooms of one shape share its key names, encoded, and its shape key (one copy per shape, not
# per room: a subscription holds its room as long as it lives). The first MAX_SHAPES_SHARED
# shapes parsed are kept; a room of any other shape has its own copies, as before.
MAX_SHAPES_SHARED = 4096
_shapes: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...], str]] = {}


class InvalidRoom(ValueError):
    """A value is not a valid room; the message says what is wrong."""


def _name(key: str) -> str:
    return repr(key) if len(key) <= 40 else repr(key[:40]) + "..."


def _scalar(key: str, value: object) -> tuple[Scalar, Scalar]:
    """Return (normalized, as-given) plain-typed value, or raise InvalidRoom."""
    if isinstance(value, bool):  # before int: bool is an int subclass, but true != 1
        return value, value
    if isinstance(value, int):
        n = int(value)
        if n.bit_length() > _MAX_INT_BITS:
            raise InvalidRoom(_TOO_LARGE)
        return n, n
    if isinstance(value, float):
        f = float(value)
        if not math.isfinite(f):
            raise InvalidRoom(f"value of key {_name(key)} must be a finite number")
        return (int(f) if f.is_integer() else f), f  # 1.0 and 1 are the same JSON number
    if isinstance(value, str):
        s = str.__str__(value)  # plain str, even for str subclasses
        return s, s
    raise InvalidRoom(f"value of key {_name(key)} must be a string, number or boolean")


def parse_room(obj: object) -> Room:
    """Validate a decoded-JSON value and return it as a Room, or raise InvalidRoom."""
    if not isinstance(obj, Mapping):
        raise InvalidRoom("room must be a JSON object")
    if not 1 <= len(obj) <= MAX_KEYS:
        raise InvalidRoom(f"room must have 1 to {MAX_KEYS} keys")
    original: list[tuple[str, Scalar]] = []
    normal: dict[str, Scalar] = {}
    chars = 0  # cheap lower bound on the encoded size, to reject huge inputs early
    for k, v in obj.items():
        if not isinstance(k, str):
            raise InvalidRoom("room keys must be strings")
        k = str.__str__(k)
        norm, given = _scalar(k, v)
        chars += len(k) + (len(norm) if isinstance(norm, str) else 0)
        if chars > MAX_ROOM_BYTES:
            raise InvalidRoom(_TOO_LARGE)
        normal[k] = norm
        original.append((k, given))
    items = tuple(sorted(normal.items(), key=lambda kv: kv[0]))
    names = tuple(k for k, _ in items)
    shape = _shapes.get(names)
    if shape is None:
        enc = tuple(_encode(k) for k in names)
        shape = (names, enc, "[" + ",".join(enc) + "]")
        if len(_shapes) < MAX_SHAPES_SHARED:
            _shapes[names] = shape
    names, enc_names, shape_key = shape
    vals = tuple(_encode(v) for _, v in items)
    as_given = tuple(original)
    if as_given == items and all(type(g) is type(n) for (_, g), (_, n) in zip(as_given, items)):
        as_given = items  # given in the canonical form (sorted keys, normal values): one copy
    room = Room._make(items, names, enc_names, vals, shape_key, as_given)
    try:
        size = len(room.key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRoom("room must be valid Unicode (no lone surrogates)") from None
    if size + sum(max(0, len(_WILD) - len(v)) for v in vals) > MAX_ROOM_BYTES:
        raise InvalidRoom(_TOO_LARGE)
    return room


_set = object.__setattr__


@final
class Room:
    """A validated, immutable room. Equality and hash are by the canonical `key`.

    `Room(obj)` is `parse_room(obj)`. Bit i of a mask refers to the i-th sorted key.
    """

    __slots__ = (
        "_enc_names",
        "_hash",
        "_items",
        "_key",
        "_mask",
        "_names",
        "_original",
        "_shape_key",
        "_vals",
    )
    _key: str
    _hash: int
    _items: tuple[tuple[str, Scalar], ...]  # sorted by key, normalized values
    _names: tuple[str, ...]  # sorted keys (the shape)
    _enc_names: tuple[str, ...]  # JSON-encoded sorted keys
    _vals: tuple[str, ...]  # JSON-encoded normalized values; equal iff same JSON type+value
    _mask: int
    _shape_key: str
    _original: tuple[tuple[str, Scalar], ...]  # client's key order and values

    def __new__(cls, obj: object) -> Room:
        return parse_room(obj)

    @classmethod
    def _make(cls, items: tuple[tuple[str, Scalar], ...], names: tuple[str, ...],
              enc_names: tuple[str, ...], vals: tuple[str, ...], shape_key: str,
              original: tuple[tuple[str, Scalar], ...]) -> Room:
        self = object.__new__(cls)
        key = "{" + ",".join([n + ":" + v for n, v in zip(enc_names, vals)]) + "}"
        for attr, value in (("_key", key), ("_hash", hash(key)), ("_items", items),
                            ("_names", names), ("_enc_names", enc_names), ("_vals", vals),
                            ("_mask", sum(1 << i for i, v in enumerate(vals) if v == _WILD)),
                            ("_shape_key", shape_key), ("_original", original)):
            _set(self, attr, value)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Room is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Room is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return parse_room, (self.original,)

    @property
    def key(self) -> str:
        """Canonical JSON: sorted keys, no spaces, raw Unicode, integral floats as ints."""
        return self._key

    @property
    def items(self) -> tuple[tuple[str, Scalar], ...]:
        return self._items

    @property
    def shape(self) -> tuple[str, ...]:
        return self._names

    @property
    def shape_key(self) -> str:
        """JSON list of the sorted key names; equal exactly when shapes are equal."""
        return self._shape_key

    @property
    def mask(self) -> int:
        return self._mask

    @property
    def is_concrete(self) -> bool:
        return self._mask == 0

    def given_alike(self, other: Room) -> bool:
        """``other`` is this room as given alike: the same keys in the same order, the same
        values as given (``1.0`` and ``1`` are one room, not given alike)."""
        return self._key == other._key and self._original == other._original and all(
            type(a) is type(b) for (_, a), (_, b) in zip(self._original, other._original))

    @property
    def original(self) -> dict[str, Scalar]:
        """The room as the client gave it, in its key order (a fresh copy each time)."""
        return dict(self._original)

    def _full_mask(self, mask: int) -> int:
        if mask < 0 or mask >> len(self._names):
            raise ValueError(f"mask {mask:#x} out of range for {len(self._names)} keys")
        return mask | self._mask

    def masked_key(self, mask: int) -> str:
        """`self.with_mask(mask).key`, without building the Room (index lookup fast path)."""
        mask = self._full_mask(mask)
        if mask == self._mask:
            return self._key
        return "{" + ",".join([n + ":" + (_WILD if mask >> i & 1 else v) for i, (n, v)
                               in enumerate(zip(self._enc_names, self._vals))]) + "}"

    def with_mask(self, mask: int) -> Room:
        """This room with the keys in `mask` set to the wildcard (wildcards stay wildcards)."""
        mask = self._full_mask(mask)
        if mask == self._mask:
            return self
        wild = {k for i, k in enumerate(self._names) if mask >> i & 1}
        items = tuple((k, WILDCARD if k in wild else v) for k, v in self._items)
        vals = tuple(_WILD if k in wild else v for k, v in zip(self._names, self._vals))
        original = tuple((k, WILDCARD if k in wild else v) for k, v in self._original)
        return Room._make(items, self._names, self._enc_names, vals, self._shape_key, original)

    def variants(self, masks: Iterable[int]) -> Iterator[Room]:
        """`with_mask(m)` for each mask, each distinct room once."""
        seen: set[str] = set()
        for m in masks:
            room = self.with_mask(m)
            if room._key not in seen:
                seen.add(room._key)
                yield room

    @classmethod
    def from_key(cls, key: str) -> Room:
        """Rebuild a room from its canonical key; non-canonical text raises InvalidRoom."""
        if len(key) > MAX_ROOM_BYTES:
            raise InvalidRoom(_TOO_LARGE)
        try:
            obj = json.loads(key)
        except ValueError:
            raise InvalidRoom("room key is not valid JSON") from None
        room = parse_room(obj)
        if room._key != key:
            raise InvalidRoom("not a canonical room key")
        return room

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Room):
            return self._key == other._key
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Room({self._key})"


def matches(a: Room, b: Room) -> bool:
    """§1 Match: same key set, and per key equal values or a wildcard on either side."""
    if a._names != b._names:
        return False
    wild = a._mask | b._mask
    return all(wild >> i & 1 or x == y for i, (x, y) in enumerate(zip(a._vals, b._vals)))


def permits(allowed: Room, room: Room) -> bool:
    """§1 Permission: same key set, and `room` equals `allowed` except where it has "*"."""
    if allowed._names != room._names:
        return False
    wild = allowed._mask
    return all(wild >> i & 1 or x == y for i, (x, y) in enumerate(zip(allowed._vals, room._vals)))


def permitted(allowed: Iterable[Room], room: Room) -> bool:
    """True when some allowed room permits `room`."""
    return any(permits(a, room) for a in allowed)
