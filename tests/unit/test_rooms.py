"""Unit tests for the `rooms` package (PROTOCOL.md §1). Plain pytest + hypothesis, no Django."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms import (
    MAX_KEYS,
    MAX_ROOM_BYTES,
    WILDCARD,
    InvalidRoom,
    Room,
    SubscriptionIndex,
    matches,
    parse_room,
    permits,
    permitted,
)


def R(obj: object) -> Room:
    return parse_room(obj)


# --- validation ---------------------------------------------------------------------------

VALID = [
    {"target": "chat"},
    {"target": "chat", "customer": "*"},
    {"n": 1, "f": 1.5, "b": True, "s": "x", "neg": -3, "z": 0.0, "e": ""},
    {"": "empty key is a valid JSON key"},
    {"ünï": "cödé ✓"},
    {f"k{i}": i for i in range(MAX_KEYS)},
    {"a": "x" * (MAX_ROOM_BYTES - len('{"a":""}'))},  # exactly at the bound
]


@pytest.mark.parametrize("obj", VALID)
def test_valid_rooms(obj: dict[str, object]) -> None:
    room = parse_room(obj)
    assert room.original == obj and list(room.original) == list(obj)
    assert Room.from_key(room.key) == room
    assert room == Room(obj)


INVALID = [
    (None, "JSON object"),
    ([["a", 1]], "JSON object"),
    ("room", "JSON object"),
    ({}, "1 to 16 keys"),
    ({f"k{i}": i for i in range(MAX_KEYS + 1)}, "1 to 16 keys"),
    ({"a": None}, "value of key 'a' must be a string, number or boolean"),
    ({"a": [1]}, "value of key 'a' must be a string, number or boolean"),
    ({"a": {"b": 1}}, "value of key 'a' must be a string, number or boolean"),
    ({"a": float("nan")}, "finite"),
    ({"a": float("inf")}, "finite"),
    ({"a": float("-inf")}, "finite"),
    ({1: "x"}, "keys must be strings"),
    ({"a": "x" * (MAX_ROOM_BYTES - len('{"a":""}') + 1)}, "too large"),
    ({"a": "é" * 510}, "too large"),  # 518 characters but 1028 UTF-8 bytes
    ({"a": "x" * 100_000}, "too large"),
    ({"a": 10**5000}, "too large"),
    ({"a": "\ud800"}, "Unicode"),
]


@pytest.mark.parametrize(("obj", "message"), INVALID)
def test_invalid_rooms(obj: object, message: str) -> None:
    with pytest.raises(InvalidRoom, match=message):
        parse_room(obj)
    assert issubclass(InvalidRoom, ValueError)


def test_size_bound_is_closed_under_wildcards() -> None:
    # One-digit values may each become '"*"' (+2 bytes), so they count as 3 bytes: a room is
    # valid only if its all-wildcard variant fits too. A long key name fills the room up.
    base = {f"k{i:02}": 1 for i in range(MAX_KEYS - 1)}
    size = len(json.dumps({**base, "": 1}, separators=(",", ":"))) + 2 * MAX_KEYS
    name = "p" * (MAX_ROOM_BYTES - size)
    ok = parse_room({**base, name: 1})
    assert len(ok.key) == MAX_ROOM_BYTES - 2 * MAX_KEYS
    wild = ok.with_mask((1 << MAX_KEYS) - 1)
    assert len(wild.key.encode()) == MAX_ROOM_BYTES
    assert Room.from_key(wild.key) == wild
    with pytest.raises(InvalidRoom, match="too large"):
        parse_room({**base, name + "p": 1})


@pytest.mark.parametrize(
    "text", ['{"a":1', "[1]", '{"b":1,"a":1}', '{"a": 1}', '{"a":1.0}', '{"a":NaN}', "x" * 2000]
)
def test_from_key_rejects_non_canonical(text: str) -> None:
    with pytest.raises(InvalidRoom):
        Room.from_key(text)


# --- equality and canonical form -----------------------------------------------------------

@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ({"a": 2}, {"a": "2"}, False),
        ({"a": True}, {"a": 1}, False),
        ({"a": False}, {"a": 0}, False),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 0}, {"a": -0.0}, True),
        ({"a": 1.5}, {"a": 1.5}, True),
        ({"a": "x", "b": "y"}, {"b": "y", "a": "x"}, True),
        ({"a": "*"}, {"a": "x"}, False),
    ],
)
def test_type_distinct_equality(a: dict[str, object], b: dict[str, object], equal: bool) -> None:
    ra, rb = R(a), R(b)
    assert (ra == rb) is equal and (ra.key == rb.key) is equal
    if equal:
        assert hash(ra) == hash(rb) and len({ra, rb}) == 1


def test_room_attributes() -> None:
    r = R({"target": "chat", "customer": "*", "n": 2.0})
    assert r.key == '{"customer":"*","n":2,"target":"chat"}'
    assert r.items == (("customer", "*"), ("n", 2), ("target", "chat"))
    assert r.shape == ("customer", "n", "target")
    assert r.shape_key == '["customer","n","target"]'
    assert r.mask == 0b001 and not r.is_concrete
    assert list(r.original) == ["target", "customer", "n"]
    r.original["target"] = "mutated"
    assert r.original["target"] == "chat"
    with pytest.raises(AttributeError):
        r.key = "x"  # type: ignore[misc]
    assert repr(r) == 'Room({"customer":"*","n":2,"target":"chat"})'
    assert pickle.loads(pickle.dumps(r)) == r and copy.deepcopy(r) == r
    assert R({"a": "x"}).is_concrete


def test_with_mask_and_variants() -> None:
    r = R({"b": 2, "a": 1, "c": "*"})
    assert r.mask == 0b100
    assert r.with_mask(0b001) == R({"a": "*", "b": 2, "c": "*"})
    assert list(r.with_mask(0b001).original) == ["b", "a", "c"]
    assert r.with_mask(0b100) is r and r.with_mask(0) is r
    assert r.masked_key(0b011) == r.with_mask(0b011).key
    assert list(r.variants([0, 0b100, 0b001, 0b101])) == [r, r.with_mask(1)]
    for bad in (-1, 0b1000):
        with pytest.raises(ValueError):
            r.with_mask(bad)


# --- matches / permits tables ---------------------------------------------------------------

MATCH = [
    # the contract's both-way wildcard examples
    ({"target": "chat", "customer": "*"}, {"target": "chat", "customer": "1"}, True),
    ({"target": "chat", "customer": "7"}, {"target": "chat", "customer": "*"}, True),
    ({"target": "chat", "customer": "*"}, {"target": "chat", "customer": "*"}, True),
    ({"target": "chat", "customer": "1"}, {"target": "chat", "customer": "2"}, False),
    ({"target": "chat", "customer": "*"}, {"target": "mail", "customer": "1"}, False),
    ({"target": "chat", "customer": "*"}, {"target": "*", "customer": "1"}, True),
    # different key sets never match, wildcards or not
    ({"target": "chat"}, {"target": "chat", "customer": "1"}, False),
    ({"a": "*"}, {"b": "*"}, False),
    ({"a": "*", "b": "*"}, {"a": "*"}, False),
    # type-distinct values
    ({"a": 2}, {"a": "2"}, False),
    ({"a": True}, {"a": 1}, False),
    ({"a": 1}, {"a": 1.0}, True),
]


@pytest.mark.parametrize(("a", "b", "expected"), MATCH)
def test_matches_table(a: dict[str, object], b: dict[str, object], expected: bool) -> None:
    assert matches(R(a), R(b)) is expected
    assert matches(R(b), R(a)) is expected


PERMITS = [
    ({"target": "chat", "customer": "*"}, {"target": "chat", "customer": "1"}, True),
    ({"target": "chat", "customer": "*"}, {"target": "chat", "customer": "*"}, True),
    ({"target": "chat", "customer": "1"}, {"target": "chat", "customer": "1"}, True),
    ({"target": "chat", "customer": "1"}, {"target": "chat", "customer": "*"}, False),
    ({"target": "chat", "customer": "1"}, {"target": "chat", "customer": "2"}, False),
    ({"target": "*", "customer": "1"}, {"target": "chat", "customer": "*"}, False),
    ({"target": "*"}, {"target": "chat", "customer": "1"}, False),
    ({"a": 1}, {"a": True}, False),
    ({"client": "*", "profile": "agent"}, {"client": "bob", "profile": "agent"}, True),
    ({"client": "*", "profile": "agent"}, {"client": "bob", "profile": "super_agent"}, False),
]


@pytest.mark.parametrize(("allowed", "room", "expected"), PERMITS)
def test_permits_table(allowed: dict[str, object], room: dict[str, object], expected: bool) -> None:
    assert permits(R(allowed), R(room)) is expected
    assert permitted([R({"x": 1}), R(allowed)], R(room)) is expected
    assert not permitted([], R(room))


# --- property tests --------------------------------------------------------------------------

SHAPES = [("a",), ("a", "b"), ("a", "b", "c")]
CONCRETE_VALUES = ["x", "y", "1", 1, 1.0, 2, 2.5, True, False]


@st.composite
def small_rooms(draw: st.DrawFn, wildcards: bool = True) -> Room:
    values = st.sampled_from(CONCRETE_VALUES + ([WILDCARD] * 3 if wildcards else []))
    keys = draw(st.sampled_from(SHAPES))
    order = draw(st.permutations(keys))
    return parse_room({k: draw(values) for k in order})


scalars = st.one_of(
    st.text(max_size=10),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(min_value=-1e30, max_value=1e30),
    st.sampled_from([1e300, -0.0, 5e-324]),
    st.booleans(),
    st.just(WILDCARD),
)
def _fits(obj: dict[str, object]) -> bool:
    try:
        parse_room(obj)
    except InvalidRoom:  # only "room too large" can happen here: big unicode strings
        return False
    return True


any_rooms = (
    st.dictionaries(st.text(max_size=8), scalars, min_size=1, max_size=MAX_KEYS)
    .filter(_fits)
    .map(parse_room)
)


@given(small_rooms(), small_rooms())
def test_matches_symmetric(a: Room, b: Room) -> None:
    assert matches(a, b) == matches(b, a)


@given(small_rooms(), small_rooms())
def test_permits_implies_matches(a: Room, r: Room) -> None:
    assert matches(a, a) and permits(a, a)
    if permits(a, r):
        assert matches(a, r)


@given(small_rooms(), small_rooms(), small_rooms())
def test_permits_transitive(a: Room, b: Room, c: Room) -> None:
    if permits(a, b) and permits(b, c):
        assert permits(a, c)


@given(small_rooms(wildcards=False), st.integers(0, 7), st.integers(0, 7))
def test_permits_chain(c: Room, m1: int, m2: int) -> None:
    full = (1 << len(c.shape)) - 1
    b = c.with_mask(m1 & full)
    a = b.with_mask(m2 & full)
    assert permits(a, b) and permits(b, c) and permits(a, c)


@given(any_rooms, st.integers(0, (1 << MAX_KEYS) - 1))
def test_canonical_round_trip(r: Room, m: int) -> None:
    assert Room.from_key(r.key) == r
    assert parse_room(json.loads(r.key)) == r
    assert r.key == json.dumps(
        dict(r.items), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    v = r.with_mask(m & ((1 << len(r.shape)) - 1))
    assert Room.from_key(v.key) == v and v.key == r.masked_key(m & ((1 << len(r.shape)) - 1))
    assert parse_room(r.original) == r


def brute_match(subs: dict[Room, set[int]], trigger: Room) -> set[int]:
    return {i for room, items in subs.items() if matches(room, trigger) for i in items}


@settings(max_examples=300)
@given(
    st.lists(small_rooms(), min_size=1, max_size=12),
    st.lists(st.tuples(st.booleans(), st.integers(0, 11), st.integers(0, 4)), max_size=60),
    st.lists(small_rooms(), min_size=1, max_size=6),
)
def test_index_agrees_with_brute_force(
    pool: list[Room], ops: list[tuple[bool, int, int]], triggers: list[Room]
) -> None:
    index: SubscriptionIndex[int] = SubscriptionIndex()
    model: dict[Room, set[int]] = {}
    for is_add, n, item in ops:
        room = pool[n % len(pool)]
        held = model.get(room, set())
        if is_add:
            assert index.add(room, item) is (not held)
            model.setdefault(room, set()).add(item)
        else:
            assert index.discard(room, item) is (held == {item})
            held.discard(item)
            if not held:
                model.pop(room, None)
        assert len(index) == sum(map(len, model.values()))
        assert index.room_count() == len(model) and set(index.rooms()) == set(model)

    for shape in {r.shape_key for r in pool}:
        expected = frozenset(r.mask for r in model if r.shape_key == shape)
        assert index.masks(shape) == expected
        assert index.has_shape(shape) is bool(expected)
    for trigger in triggers + pool:
        assert index.match(trigger) == brute_match(model, trigger)
    assert index.match_many(triggers) == set().union(*(brute_match(model, t) for t in triggers))

    for room, items in list(model.items()):  # emptying the index leaves nothing behind
        for item in items:
            index.discard(room, item)
    assert len(index) == 0 and index.room_count() == 0 and list(index.rooms()) == []
    assert not any(index.has_shape(r.shape_key) or index.masks(r.shape_key) for r in pool)
    assert index._subs == {} and index._shapes == {}


def test_index_contract_examples() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert index.add(R({"target": "chat", "customer": "*"}), "watcher")
    assert index.add(R({"target": "chat", "customer": "7"}), "c7")
    assert not index.add(R({"customer": "7", "target": "chat"}), "c7-again")
    assert index.match(R({"target": "chat", "customer": "1"})) == {"watcher"}
    assert index.match(R({"target": "chat", "customer": "*"})) == {"watcher", "c7", "c7-again"}
    assert index.match(R({"target": "chat"})) == set()
    both = [R({"target": "chat", "customer": "7"}), R({"target": "chat", "customer": "*"})]
    assert index.match_many(both) == {"watcher", "c7", "c7-again"}
    assert index.masks('["customer","target"]') == frozenset({0, 1})
    assert not index.discard(R({"target": "chat", "customer": "7"}), "unknown")
    assert not index.discard(R({"target": "nope"}), "c7")
    assert not index.discard(R({"target": "chat", "customer": "7"}), "c7")
    assert index.discard(R({"target": "chat", "customer": "7"}), "c7-again")
    assert index.masks('["customer","target"]') == frozenset({1})
    assert len(index) == 1 and index.room_count() == 1


def test_the_subscribers_of_one_room_given_alike_share_one_object() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    first = R({"team": "red", "n": 1})
    index.add(first, "a")
    assert index.shared(R({"team": "red", "n": 1})) is first
    # the same room given otherwise keeps its own object: it is shown as it was given
    other_order = R({"n": 1, "team": "red"})
    assert index.shared(other_order) is other_order and other_order == first
    as_float = R({"team": "red", "n": 1.0})
    assert index.shared(as_float) is as_float and as_float.original == {"team": "red", "n": 1.0}
    assert type(as_float.original["n"]) is float
    unheld = R({"team": "blue", "n": 1})
    assert index.shared(unheld) is unheld
    index.discard(first, "a")
    fresh = R({"team": "red", "n": 1})
    assert index.shared(fresh) is fresh  # nothing held any more


def test_rooms_as_given_keep_their_value_types_when_the_canonical_form_is_equal() -> None:
    # True == 1 and 1.0 == 1 in Python: the room as given must not become the canonical one
    assert type(R({"a": 1.0}).original["a"]) is float
    assert R({"a": True}).original == {"a": True} and R({"a": True}) != R({"a": 1})
    assert R({"b": 2, "a": 1}).original == {"b": 2, "a": 1}
    assert list(R({"b": 2, "a": 1}).original) == ["b", "a"]
