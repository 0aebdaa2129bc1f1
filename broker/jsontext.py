"""The one JSON reader and writer for data crossing the broker, with its depth bound.

``load_json`` reads client input (RFC 8259 only, UTF-8 only, nesting bounded); ``dump_json``
writes what the broker sends on (compact, never NaN, never deeper than the reader accepts).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

# Bounds on client JSON (docs/protocol.md "Bounds"). Data nested deeper than MAX_JSON_DEPTH
# (arrays and objects, the frame itself counted) is refused by ``load_json`` and never produced
# by ``dump_json``, so whatever the decoder lets in the encoder can write, on any stack.
MAX_JSON_DEPTH = 128


class JsonTooDeep(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH: refused with ``invalid-message`` (or 400)."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


# Escapes first, then strings: with no backslash left, ``"[^"]*"`` pairs quotes left to right,
# so even an unclosed string costs one pass (a string pattern that handles escapes itself is
# quadratic on an unclosed string full of ``\"``, retried from every quote).
_ESCAPES = re.compile(r"\\.", re.DOTALL)
_STRINGS = re.compile(r'"[^"]*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _nesting(text: str) -> tuple[int, bool]:
    """The deepest nesting of ``text``'s brackets outside strings, and whether they balance.

    Linear in the text whatever it holds: C-speed regex passes, then one running sum over the
    brackets left.
    """
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", _ESCAPES.sub("", text)))
    depths = list(accumulate(map(_STEP.__getitem__, brackets)))
    balanced = not depths or (depths[-1] == 0 and min(depths) >= 0)
    return max(depths, default=0), balanced


def _check_depth(text: str) -> None:
    """Raise JsonTooDeep when the valid JSON ``text`` nests deeper than MAX_JSON_DEPTH.

    Text with at most MAX_JSON_DEPTH brackets cannot: two C-speed counts decide most frames.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    if _nesting(text)[0] > MAX_JSON_DEPTH:
        raise JsonTooDeep()


def dump_json(value: Any) -> str:
    """The one JSON encoder for data crossing the broker (compact, UTF-8 kept).

    A string holding an unpaired surrogate (what the JSON escape ``"\\ud800"`` decodes to)
    cannot be sent as UTF-8: such a value is written with ``\\u`` escapes instead, as the
    client sent it, so every frame carrying it can still be written to every transport.
    NaN and infinities are not JSON, and nesting deeper than MAX_JSON_DEPTH is not what the
    broker reads: they raise ValueError (``JsonTooDeep``; only ``publish()`` callers can pass
    them, the codecs never decode them).
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise JsonTooDeep() from None
    _check_depth(text)
    return text


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: Python would make it inf, sent on as "Infinity"
        raise ValueError("number out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def load_json(text: str | bytes) -> Any:
    """The one JSON decoder for input from clients: RFC 8259 JSON, or ValueError.

    Python's json accepts NaN and Infinity, and turns 1e999 into inf: no client could read
    them back once forwarded (dump_json would write ``Infinity``). It also raises
    RecursionError on deep nesting, and reads bytes in UTF-16 and UTF-32 too. Here all of
    these are ValueError: bytes must be UTF-8 (``UnicodeDecodeError``), and nesting deeper
    than MAX_JSON_DEPTH is ``JsonTooDeep``.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = _decoder.decode(text)
    except RecursionError:
        # Too deep for the parser: JSON nested too deeply if its brackets close, else not
        # JSON at all (an unclosed run of ``[``).
        if not _nesting(text)[1]:
            raise ValueError("not JSON: unbalanced brackets") from None
        raise JsonTooDeep() from None
    _check_depth(text)
    return value

