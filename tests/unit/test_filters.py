"""broker.filters: the event filter grammar, every operator, missing tags, the bounds refused
with their named errors, trigger tags, and (hypothesis) that compiling never raises anything
but InvalidFilter and that a compiled filter never raises on tags check_tags accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import errors
from broker.filters import (
    MAX_FILTER_DEPTH, MAX_FILTER_NODES, MAX_IN_VALUES, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS,
    MAX_TAGS, InvalidFilter, InvalidTags, check_tags, compile_filter,
)
from broker.history import HistoryEntry
from broker.messages import Trigger, from_wire
from broker.resume import SavedSubscription, decode_state, encode_state
from rooms import parse_room

TAGS = {"status": "paid", "amount": 120, "ratio": 0.5, "vip": True, "note": None}


def matches(source: Any, tags: dict[str, Any] | None = TAGS) -> bool:
    return compile_filter(source).matches(tags)


@pytest.mark.parametrize("source, expected", [
    ({"eq": ["status", "paid"]}, True),
    ({"eq": ["status", "open"]}, False),
    ({"eq": ["amount", 120.0]}, True),  # 120 == 120.0: one JSON number
    ({"eq": ["amount", "120"]}, False),  # a string is not a number
    ({"eq": ["vip", True]}, True),
    ({"eq": ["vip", 1]}, False),  # a boolean is not a number
    ({"eq": ["note", None]}, True),
    ({"ne": ["status", "open"]}, True),
    ({"ne": ["status", "paid"]}, False),
    ({"ne": ["vip", 1]}, True),
    ({"lt": ["amount", 200]}, True),
    ({"lt": ["amount", 120]}, False),
    ({"gt": ["amount", 100]}, True),
    ({"gt": ["ratio", 0.5]}, False),
    ({"gt": ["status", 0]}, False),  # a string compared with a number: false
    ({"lt": ["vip", 5]}, False),  # a boolean is not a number
    ({"lt": ["note", 5]}, False),
    ({"in": ["status", ["open", "paid"]]}, True),
    ({"in": ["status", ["open"]]}, False),
    ({"in": ["vip", [1, 2]]}, False),
    ({"in": ["amount", [1, 120]]}, True),
    ({"in": ["status", []]}, False),
    ({"and": [{"eq": ["status", "paid"]}, {"gt": ["amount", 100]}]}, True),
    ({"and": [{"eq": ["status", "paid"]}, {"gt": ["amount", 500]}]}, False),
    ({"or": [{"eq": ["status", "open"]}, {"gt": ["amount", 100]}]}, True),
    ({"or": [{"eq": ["status", "open"]}, {"gt": ["amount", 500]}]}, False),
    ({"not": {"eq": ["status", "paid"]}}, False),
    ({"not": {"not": {"eq": ["status", "paid"]}}}, True),
])
def test_every_operator(source: Any, expected: bool) -> None:
    assert matches(source) is expected


@pytest.mark.parametrize("source, expected", [
    ({"eq": ["missing", None]}, False),  # absent is not null
    ({"eq": ["missing", "x"]}, False),
    ({"ne": ["missing", "x"]}, True),  # absent is not equal
    ({"lt": ["missing", 1]}, False),
    ({"gt": ["missing", 1]}, False),
    ({"in": ["missing", ["x", None]]}, False),
    ({"not": {"eq": ["missing", "x"]}}, True),
])
def test_a_missing_tag(source: Any, expected: bool) -> None:
    assert matches(source) is expected
    assert matches(source, None) is expected  # a trigger without tags: evaluated with none
    assert matches(source, {}) is expected


@pytest.mark.parametrize("source", [
    None, 1, "eq", [], {}, {"eq": ["a", 1], "ne": ["a", 2]}, {"like": ["a", "b"]},
    {"eq": "a"}, {"eq": ["a"]}, {"eq": ["a", 1, 2]}, {"eq": [1, 1]}, {"eq": ["", 1]},
    {"eq": ["a", [1]]}, {"eq": ["a", {"b": 1}]}, {"lt": ["a", "1"]}, {"gt": ["a", True]},
    {"lt": ["a", None]}, {"in": ["a", 1]}, {"in": ["a", [[1]]]}, {"and": []}, {"or": {}},
    {"and": [1]}, {"not": []}, {"not": None}, {"eq": ["a", 2**64]}, {"gt": ["a", float("inf")]},
    {"lt": ["a", float("nan")]},
])
def test_malformed_is_invalid_filter(source: Any) -> None:
    with pytest.raises(InvalidFilter) as refused:
        compile_filter(source)
    assert refused.value.code == errors.INVALID_FILTER == "invalid-filter"
    assert refused.value.detail
    assert str(refused.value).startswith("invalid-filter: ")


def _nested(depth: int) -> Any:
    source: Any = {"eq": ["a", 1]}
    for _ in range(depth - 1):
        source = {"not": source}
    return source


@pytest.mark.parametrize("source", [
    _nested(MAX_FILTER_DEPTH + 1),
    {"or": [{"eq": ["a", i]} for i in range(MAX_FILTER_NODES)]},  # + the "or" itself
    {"or": [{"eq": ["a", i]} for i in range(100_000)]},
    {"in": ["a", list(range(MAX_IN_VALUES + 1))]},
    {"eq": ["a", "x" * (MAX_TAG_VALUE_CHARS + 1)]},
    {"in": ["a", ["x" * (MAX_TAG_VALUE_CHARS + 1)]]},
    {"eq": ["k" * (MAX_TAG_KEY_CHARS + 1), 1]},
])
def test_over_a_bound_is_filter_too_large(source: Any) -> None:
    with pytest.raises(InvalidFilter) as refused:
        compile_filter(source)
    assert refused.value.code == errors.FILTER_TOO_LARGE == "filter-too-large"
    assert refused.value.detail


def test_at_the_bounds_is_accepted() -> None:
    assert matches(_nested(MAX_FILTER_DEPTH), {"a": 1}) is (MAX_FILTER_DEPTH % 2 == 1)
    assert matches({"or": [{"eq": ["a", i]} for i in range(MAX_FILTER_NODES - 1)]}, {"a": 3})
    assert matches({"in": ["a", list(range(MAX_IN_VALUES))]}, {"a": MAX_IN_VALUES - 1})
    long = "x" * MAX_TAG_VALUE_CHARS
    assert matches({"eq": ["k" * MAX_TAG_KEY_CHARS, long]}, {"k" * MAX_TAG_KEY_CHARS: long})


def test_the_source_is_kept_for_resume() -> None:
    source = {"and": [{"eq": ["status", "paid"]}, {"gt": ["amount", 1]}]}
    compiled = compile_filter(source)
    assert compiled.source == source
    state = encode_state([SavedSubscription("r1", parse_room({"a": "1"}), 5, False, source)])
    (saved,) = decode_state(state)
    assert saved.filter == source
    (plain,) = decode_state(encode_state([SavedSubscription("r2", parse_room({"a": "1"}), None)]))
    assert plain.filter is None


# ---------------------------------------------------------------- tags


def test_tags_accepted() -> None:
    assert check_tags(None) is None
    assert check_tags({}) is None
    assert check_tags(TAGS) == TAGS
    many = {f"t{i}": i for i in range(MAX_TAGS)}
    assert check_tags(many) == many


@pytest.mark.parametrize("tags", [
    [], "a", 1, {"a": [1]}, {"a": {"b": 1}}, {"": 1}, {"k" * (MAX_TAG_KEY_CHARS + 1): 1},
    {"a": "x" * (MAX_TAG_VALUE_CHARS + 1)}, {f"t{i}": i for i in range(MAX_TAGS + 1)},
    {"a": float("inf")}, {"a": 2**70}, {1: 1},
])
def test_tags_refused_with_invalid_tags(tags: Any) -> None:
    with pytest.raises(InvalidTags) as refused:
        check_tags(tags)
    assert str(refused.value).startswith(errors.INVALID_TAGS + ": ")


def test_trigger_tags_cross_the_wire_and_an_old_wire_form_reads_as_no_tags() -> None:
    plain = Trigger("t", ["r"], "1")
    assert "tags" not in plain.to_wire()  # sent exactly as before without tags
    tagged = Trigger("t", ["r"], "1", tags={"status": "paid", "n": 2, "b": False, "z": None})
    wire = tagged.to_wire()
    assert {k: v for k, v in wire.items() if k != "tags"} == plain.to_wire()
    assert from_wire(json.loads(json.dumps(wire))) == tagged
    assert from_wire({"type": "cb.trigger", "id": "t", "rooms": ["r"], "data": "1"}) == plain
    assert HistoryEntry(1, "t", "1").tags is None


# ---------------------------------------------------------------- fuzz

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=300))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6),
    st.dictionaries(st.sampled_from(["eq", "ne", "lt", "gt", "in", "and", "or", "not", "x",
                                     "a", "status"]), inner, max_size=3)), max_leaves=40)
_tags = st.dictionaries(st.sampled_from(["a", "status", "amount", "x", "vip"]),
                        st.one_of(st.none(), st.booleans(), st.integers(-2**62, 2**62),
                                  st.floats(allow_nan=False, allow_infinity=False),
                                  st.text(max_size=20)), max_size=5)


@settings(max_examples=400, deadline=None)
@given(_json, _tags)
def test_fuzz_compile_refuses_only_by_name_and_evaluation_never_raises(
        source: Any, tags: dict[str, Any]) -> None:
    try:
        compiled = compile_filter(source)
    except InvalidFilter as exc:
        assert exc.code in (errors.INVALID_FILTER, errors.FILTER_TOO_LARGE)
        return
    assert compiled.matches(check_tags(tags)) in (True, False)
    assert compiled.matches(None) in (True, False)


_operand = st.sampled_from(["a", "status"])
_literal = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["x", "y"]))
_valid = st.recursive(
    st.one_of(st.builds(lambda op, t, v: {op: [t, v]}, st.sampled_from(["eq", "ne"]), _operand,
                        _literal),
              st.builds(lambda op, t, v: {op: [t, v]}, st.sampled_from(["lt", "gt"]), _operand,
                        st.integers(-5, 5)),
              st.builds(lambda t, vs: {"in": [t, vs]}, _operand, st.lists(_literal, max_size=4))),
    lambda inner: st.one_of(st.builds(lambda f: {"not": f}, inner),
                            st.builds(lambda fs: {"and": fs}, st.lists(inner, min_size=1,
                                                                       max_size=3)),
                            st.builds(lambda fs: {"or": fs}, st.lists(inner, min_size=1,
                                                                      max_size=3))),
    max_leaves=8)


def _reference(source: Any, tags: dict[str, Any]) -> bool:
    """The grammar read straight from the docs, as a second implementation."""
    ((op, arg),) = source.items()
    if op == "not":
        return not _reference(arg, tags)
    if op == "and":
        return all(_reference(f, tags) for f in arg)
    if op == "or":
        return any(_reference(f, tags) for f in arg)
    tag, lit = arg
    if tag not in tags:
        return op == "ne"
    value = tags[tag]

    def same(a: Any, b: Any) -> bool:
        return isinstance(a, bool) == isinstance(b, bool) and a == b

    if op == "eq":
        return same(value, lit)
    if op == "ne":
        return not same(value, lit)
    if op == "in":
        return any(same(value, v) for v in lit)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value < lit if op == "lt" else value > lit


@settings(max_examples=400, deadline=None)
@given(_valid, st.dictionaries(_operand, _literal, max_size=2))
def test_fuzz_valid_filters_agree_with_the_grammar(source: Any, tags: dict[str, Any]) -> None:
    assert compile_filter(source).matches(tags) is _reference(source, tags)


# ---------------------------------------------------------------- the session's rules


def _rules(profile: str = "agent") -> Any:
    from broker.identity import identity_from_api
    from tests.unit.sessions import rules

    return rules(identity_from_api({"allowed_rooms": [{"target": "chat", "customer": "*"}],
                                    "login_id": "bob", "profile": profile}))


def test_a_subscribe_compiles_its_filter_once_and_refuses_a_bad_one_by_name() -> None:
    from broker.codecs.jsoncodec import JsonCodec
    from broker.effects import JoinRoom
    from broker.replies import Error

    codec = JsonCodec(rich=True)
    room = {"target": "chat", "customer": "1"}
    s = _rules()
    step = s.handle(codec.decode(json.dumps({"type": "subscribe", "requestId": 1, "room": room,
                                             "filter": {"eq": ["status", "paid"]}})))
    assert isinstance(step.effect, JoinRoom)
    sub = step.effect.subscription
    assert sub.filter is not None and sub.filter.matches({"status": "paid"})
    assert not sub.filter.matches({"status": "open"})
    plain = s.handle(codec.decode(json.dumps({"type": "subscribe", "requestId": 2,
                                              "room": room})))
    assert isinstance(plain.effect, JoinRoom) and plain.effect.subscription.filter is None
    for bad, code in (({"eq": "x"}, errors.INVALID_FILTER),
                      ({"in": ["a", list(range(MAX_IN_VALUES + 1))]}, errors.FILTER_TOO_LARGE)):
        step = s.handle(codec.decode(json.dumps({"type": "subscribe", "requestId": 3,
                                                 "room": room, "filter": bad})))
        assert isinstance(step.reply, Error) and step.reply.code == code and step.reply.detail
        assert step.effect is None and '3' not in s.subscriptions


def test_a_client_publish_carries_its_tags_and_bad_tags_are_refused_by_name() -> None:
    from broker.codecs.jsoncodec import JsonCodec
    from broker.effects import PublishRooms
    from broker.replies import Error

    codec = JsonCodec(rich=True)
    s = _rules("service")
    frame = {"type": "publish", "requestId": 1, "rooms": [{"target": "x"}], "data": 1,
             "tags": {"status": "paid"}}
    step = s.handle(codec.decode(json.dumps(frame)))
    assert isinstance(step.effect, PublishRooms) and step.effect.tags == {"status": "paid"}
    step = s.handle(codec.decode(json.dumps({**frame, "tags": {"status": ["paid"]}})))
    assert isinstance(step.reply, Error) and step.reply.code == errors.INVALID_TAGS
    assert step.effect is None
