"""Event filters and trigger tags: the event query language (docs/protocol.md "Event filters").

A trigger may carry **tags**: a JSON object of string keys and scalar values (a string, a
number, a boolean or null). A subscription may carry a **filter**, a JSON object with exactly
one operator key, and then gets only the triggers whose tags it matches::

    {"eq": [tag, value]}       the tag is present and equal to value (any scalar)
    {"ne": [tag, value]}       not eq: true when the tag is absent
    {"lt": [tag, number]}      the tag is a number below number
    {"gt": [tag, number]}      the tag is a number above number
    {"in": [tag, [values]]}    the tag is present and equal to one of values
    {"and": [filter, ...]}     every filter matches (one or more)
    {"or": [filter, ...]}      some filter matches (one or more)
    {"not": filter}            filter does not match

Equality is by JSON value: ``true`` never equals ``1``, nor ``"1"`` equals ``1``; ``1`` equals
``1.0``. ``lt``/``gt`` take a number literal (anything else is refused) and are false for a tag
that is not a number (a string, a boolean, null). A missing tag makes ``eq``, ``lt``, ``gt``
and ``in`` false and ``ne`` true (absent is not equal). A trigger without tags is evaluated
with no tags.

``compile_filter(source)`` checks a filter once and returns a ``Filter`` whose ``matches(tags)``
is a tree of closures (``in`` is a frozenset): O(nodes), and it never raises for tags
``check_tags`` accepted. Its refusals are ``InvalidFilter`` with ``code`` one of
``errors.INVALID_FILTER`` (malformed) and ``errors.FILTER_TOO_LARGE`` (over a bound below), and a
``detail``. ``check_tags(value)`` is the one check of a trigger's tags (``InvalidTags``,
``errors.INVALID_TAGS``). Pure: no I/O, no settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import FILTER_TOO_LARGE, INVALID_FILTER, INVALID_TAGS

Scalar = str | int | float | bool | None
Tags = Mapping[str, Scalar]

# Bounds of a trigger's tags.
MAX_TAGS = 32  # tags on one trigger
MAX_TAG_KEY_CHARS = 64  # a tag name (also the most a filter's tag name may be)
MAX_TAG_VALUE_CHARS = 256  # a string value (also the most a filter's string literal may be)
# Numbers, tags' and literals': finite and of magnitude below this (a 64-bit integer).
MAX_NUMBER = 2**63

# Bounds of a filter: its cost is at most MAX_FILTER_NODES tests, each O(1).
MAX_FILTER_NODES = 64  # operators in one filter, every and/or/not counted
MAX_FILTER_DEPTH = 8  # operators nested in each other, the outermost counted
MAX_IN_VALUES = 64  # values of one ``in`` list

OPERATORS = ("eq", "ne", "lt", "gt", "in", "and", "or", "not")

_NO_TAGS: Tags = {}


class InvalidFilter(ValueError):
    """A filter refused: ``code`` is INVALID_FILTER or FILTER_TOO_LARGE, ``detail`` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class InvalidTags(ValueError):
    """A trigger's tags refused (INVALID_TAGS); the message names the rule."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{INVALID_TAGS}: {detail}")
        self.detail = detail


class Filter:
    """A compiled filter: ``source`` is the JSON value as given (what resume state saves),
    ``matches(tags)`` whether a trigger with ``tags`` (None: none) passes it."""

    __slots__ = ("source", "_test")

    def __init__(self, source: Any, test: Callable[[Tags], bool]) -> None:
        self.source = source
        self._test = test

    def matches(self, tags: Tags | None) -> bool:
        return self._test(_NO_TAGS if tags is None else tags)

    def __repr__(self) -> str:
        return f"Filter({self.source!r})"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_problem(value: object, max_chars: int) -> tuple[str, str] | None:
    """(code, detail) when ``value`` is not an acceptable scalar, else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if len(value) > max_chars:
            return FILTER_TOO_LARGE, f"a string is at most {max_chars} characters"
        return None
    if isinstance(value, int):
        if value.bit_length() > 63:  # before anything converts it: a huge int is cheap here
            return INVALID_FILTER, "a number is finite and of magnitude below 2**63"
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= MAX_NUMBER:
            return INVALID_FILTER, "a number is finite and of magnitude below 2**63"
        return None
    return INVALID_FILTER, "a value is a string, a number, a boolean or null"


def _key(value: Scalar) -> tuple[bool, Scalar]:
    """What equality compares: the value, with booleans apart from numbers (True != 1)."""
    return (isinstance(value, bool), value)


# ---------------------------------------------------------------- tags


def check_tags(value: Any) -> dict[str, Scalar] | None:
    """None (no tags), or a trigger's tags: an object of at most MAX_TAGS string keys (1 to
    MAX_TAG_KEY_CHARS characters) and scalar values (strings of at most MAX_TAG_VALUE_CHARS
    characters, finite numbers below 2**63 in magnitude, booleans, null). An empty object is
    no tags. Raises ``InvalidTags``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidTags("tags must be an object of string keys and scalar values")
    if len(value) > MAX_TAGS:
        raise InvalidTags(f"at most {MAX_TAGS} tags")
    tags: dict[str, Scalar] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_TAG_KEY_CHARS:
            raise InvalidTags(f"a tag name is 1 to {MAX_TAG_KEY_CHARS} characters")
        problem = _scalar_problem(item, MAX_TAG_VALUE_CHARS)
        if problem is not None:
            raise InvalidTags(f"tag {key!r}: {problem[1]}")
        tags[key] = item
    return tags or None


# ---------------------------------------------------------------- filters


def compile_filter(source: Any) -> Filter:
    """Check ``source`` against the grammar and bounds, once; raises ``InvalidFilter``."""
    nodes = [0]
    return Filter(source, _compile(source, 1, nodes))


def _refuse(detail: str) -> InvalidFilter:
    return InvalidFilter(INVALID_FILTER, detail)


def _compile(node: Any, depth: int, nodes: list[int]) -> Callable[[Tags], bool]:
    if depth > MAX_FILTER_DEPTH:
        raise InvalidFilter(FILTER_TOO_LARGE, f"at most {MAX_FILTER_DEPTH} nested operators")
    nodes[0] += 1
    if nodes[0] > MAX_FILTER_NODES:
        raise InvalidFilter(FILTER_TOO_LARGE, f"at most {MAX_FILTER_NODES} operators")
    if not isinstance(node, dict) or len(node) != 1:
        raise _refuse("a filter is an object with exactly one operator: "
                      + ", ".join(OPERATORS))
    ((op, arg),) = node.items()
    if op == "not":
        inner = _compile(arg, depth + 1, nodes)
        return lambda tags: not inner(tags)
    if op in ("and", "or"):
        if not isinstance(arg, list) or not arg:
            raise _refuse(f"{op} takes a non-empty list of filters")
        if len(arg) > MAX_FILTER_NODES:
            raise InvalidFilter(FILTER_TOO_LARGE, f"at most {MAX_FILTER_NODES} operators")
        parts = tuple(_compile(f, depth + 1, nodes) for f in arg)
        return _all(parts) if op == "and" else _any(parts)
    if op not in OPERATORS:
        raise _refuse(f"unknown operator {str(op)[:32]!r}: " + ", ".join(OPERATORS))
    if not isinstance(arg, list) or len(arg) != 2:
        raise _refuse(f"{op} takes [tag, value]")
    tag, literal = arg
    if not isinstance(tag, str) or not tag:
        raise _refuse(f"{op}: a tag name is a non-empty string")
    if len(tag) > MAX_TAG_KEY_CHARS:
        raise InvalidFilter(FILTER_TOO_LARGE,
                            f"a tag name is at most {MAX_TAG_KEY_CHARS} characters")
    if op == "in":
        return _in(tag, literal)
    if op in ("lt", "gt"):
        if not _number(literal):
            raise _refuse(f"{op} compares with a number")
    _check_literal(literal)
    if op == "lt":
        return _lt(tag, literal)
    if op == "gt":
        return _gt(tag, literal)
    return _eq(tag, _key(literal)) if op == "eq" else _ne(tag, _key(literal))


def _check_literal(value: Any) -> None:
    problem = _scalar_problem(value, MAX_TAG_VALUE_CHARS)
    if problem is not None:
        raise InvalidFilter(*problem)


def _in(tag: str, values: Any) -> Callable[[Tags], bool]:
    if not isinstance(values, list):
        raise _refuse("in takes [tag, [values]]")
    if len(values) > MAX_IN_VALUES:
        raise InvalidFilter(FILTER_TOO_LARGE, f"an in list holds at most {MAX_IN_VALUES} values")
    for value in values:
        _check_literal(value)
    keys = frozenset(_key(v) for v in values)

    def test(tags: Tags) -> bool:
        return tag in tags and _key(tags[tag]) in keys

    return test


def _eq(tag: str, key: tuple[bool, Scalar]) -> Callable[[Tags], bool]:
    return lambda tags: tag in tags and _key(tags[tag]) == key


def _ne(tag: str, key: tuple[bool, Scalar]) -> Callable[[Tags], bool]:
    return lambda tags: tag not in tags or _key(tags[tag]) != key


def _lt(tag: str, bound: float) -> Callable[[Tags], bool]:
    def test(tags: Tags) -> bool:
        value = tags.get(tag)
        return _number(value) and value < bound  # type: ignore[operator]

    return test


def _gt(tag: str, bound: float) -> Callable[[Tags], bool]:
    def test(tags: Tags) -> bool:
        value = tags.get(tag)
        return _number(value) and value > bound  # type: ignore[operator]

    return test


def _all(parts: tuple[Callable[[Tags], bool], ...]) -> Callable[[Tags], bool]:
    def test(tags: Tags) -> bool:
        for part in parts:
            if not part(tags):
                return False
        return True

    return test


def _any(parts: tuple[Callable[[Tags], bool], ...]) -> Callable[[Tags], bool]:
    def test(tags: Tags) -> bool:
        for part in parts:
            if part(tags):
                return True
        return False

    return test
