"""The SSE wire format (broker.sse): no frame can inject event-stream framing, and event ids
read back as the positions they were written from."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import errors
from broker.jsontext import dump_json
from broker.sse import BadRequest, close_event, event, event_id, positions_from


def parse(stream: bytes) -> list[dict[str, str]]:
    """An event stream as the HTML standard's EventSource reads it: lines end with CRLF, LF or
    CR; ``field: value``; a blank line dispatches the event (its data lines joined with LF)."""
    events, fields, data = [], {}, []
    for line in re.split(r"\r\n|\r|\n", stream.decode()):
        if line == "":
            if data or fields:
                events.append({**fields, "data": "\n".join(data)})
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    return events


ATTACKS = ["a\nb", "a\rb", "a\r\nb", "x\n\nevent: close\ndata: {}\n\nid: 9",
           "\r\rdata: two\r", "\n", "id: 1\nretry: 1", " leading space"]


@pytest.mark.parametrize("frame", ATTACKS)
def test_a_frame_with_line_breaks_is_one_event_with_its_lines_as_data(frame: str) -> None:
    [got] = parse(event(frame) + event("next"))[:1]
    assert got == {"data": re.sub(r"\r\n|\r", "\n", frame)}
    assert parse(event(frame, "k=1"))[0]["id"] == "k=1"
    assert parse(event(frame) + event("next"))[1] == {"data": "next"}


@given(st.text())
def test_the_json_encoder_never_writes_a_line_break(text: str) -> None:
    """What the rich codec frames hold is dump_json's: strings escape CR and LF, so a frame
    is one ``data:`` line."""
    frame = dump_json({"data": text, "list": [text]})
    assert "\n" not in frame and "\r" not in frame
    assert parse(event(frame)) == [{"data": frame}]


def test_the_close_event() -> None:
    assert parse(close_event(4008, "slow")) == [
        {"event": "close", "data": '{"code":4008,"reason":"slow"}'}]


@given(st.dictionaries(st.one_of(st.text(max_size=20), st.integers(), st.floats(
    allow_nan=False, allow_infinity=False)).map(dump_json), st.integers(0, 2**62), max_size=8))
def test_event_ids_read_back_as_their_positions(positions: dict[str, int]) -> None:
    text = event_id(positions)
    assert "\n" not in text and "\r" not in text and "\0" not in text
    assert positions_from(text, 8) == positions


@pytest.mark.parametrize("text", ["c=1", "%22c%22", "%22c%22=", "%22c%22=-1", "%22c%22=1x",
                                  "%7B%7D=1", "null=1", "true=1", "%22c%22=1&&", "%FF=1",
                                  "%22c%22=1&2=1&3=1", "%22\u00e9%22=1"])
def test_a_malformed_last_event_id_is_a_named_error(text: str) -> None:
    with pytest.raises(BadRequest) as raised:
        positions_from(text, 2)
    assert raised.value.status == 400 and raised.value.code == errors.INVALID_LAST_EVENT_ID
