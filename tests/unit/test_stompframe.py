"""Unit tests for broker.codecs.stompframe (pure; no Django)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codecs.stompframe import (
    COMMANDS,
    HEARTBEAT,
    CBFramer,
    Frame,
    Heartbeat,
    StompFrameError,
    StompParser,
    encode_frame,
    is_heartbeat,
    parse_frame,
)

HB = HEARTBEAT


def F(command: str, body: bytes = b"", **headers: str) -> Frame:
    return Frame(command, {k.replace("_", "-"): v for k, v in headers.items()}, body)


# --------------------------------------------------------------------------- StompParser

VALID = [
    ("simple", b"SEND\ndestination:/a\n\nhello\x00", [F("SEND", b"hello", destination="/a")]),
    ("no headers, no body", b"DISCONNECT\n\n\x00", [F("DISCONNECT")]),
    ("crlf", b"SEND\r\ndestination:/a\r\nx:y\r\n\r\nhi\x00",
     [F("SEND", b"hi", destination="/a", x="y")]),
    ("crlf no headers", b"DISCONNECT\r\n\r\n\x00", [F("DISCONNECT")]),
    ("escapes", b"SEND\nd:a\\cb\\nc\\\\d\\re\n\n\x00", [F("SEND", d="a:b\nc\\d\re")]),
    ("escaped name", b"SEND\na\\cb:v\n\n\x00", [Frame("SEND", {"a:b": "v"})]),
    ("CONNECT not unescaped", b"CONNECT\nlogin:a\\nb\\t\n\n\x00", [F("CONNECT", login="a\\nb\\t")]),
    ("colon in value", b"SEND\na:b:c\n\n\x00", [F("SEND", a="b:c")]),
    ("repeated header first wins", b"SEND\nfoo:1\nfoo:2\nfoo:3\n\n\x00", [F("SEND", foo="1")]),
    ("repeated content-length first wins", b"SEND\ncontent-length:2\ncontent-length:9\n\nab\x00",
     [F("SEND", b"ab", content_length="2")]),
    ("content-length body with NUL", b"SEND\ncontent-length:5\n\na\x00b\x00c\x00",
     [F("SEND", b"a\x00b\x00c", content_length="5")]),
    ("content-length zero", b"SEND\ncontent-length:0\n\n\x00", [F("SEND", content_length="0")]),
    ("no content-length ends at first NUL", b"SEND\n\nab\x00cd\x00",
     None),  # "cd" is then an unknown command: checked in MALFORMED
    ("utf-8 header", "SEND\nnom:été ✓\n\n\x00".encode(), [F("SEND", nom="été ✓")]),
    ("empty value and empty name", b"SEND\na:\n:b\n\n\x00", [Frame("SEND", {"a": "", "": "b"})]),
    ("heart-beats between frames",
     b"\n\r\nSEND\n\nx\x00\n\r\n\nRECEIPT\nreceipt-id:7\n\n\x00\n",
     [HB, HB, F("SEND", b"x"), HB, HB, HB, F("RECEIPT", receipt_id="7"), HB]),
    ("several frames one chunk", b"BEGIN\ntransaction:t\n\n\x00COMMIT\ntransaction:t\n\n\x00",
     [F("BEGIN", transaction="t"), F("COMMIT", transaction="t")]),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in VALID if c[2] is not None],
                         ids=[c[0] for c in VALID if c[2] is not None])
def test_parser_valid(data: bytes, expected: list[object]) -> None:
    assert StompParser().feed(data) == expected
    # byte-by-byte gives the same
    parser, out = StompParser(), []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    assert out == expected


TWO_FRAMES = (b"SEND\r\ndestination:/room/x\r\ncontent-length:4\r\n\r\na\x00\nb\x00"
              b"\r\n\nMESSAGE\nsubscription:1\nk:a\\cb\n\nbody text\x00")
TWO_EXPECTED = [F("SEND", b"a\x00\nb", destination="/room/x", content_length="4"), HB, HB,
                F("MESSAGE", b"body text", subscription="1", k="a:b")]


@pytest.mark.parametrize("cut", range(len(TWO_FRAMES) + 1))
def test_parser_split_at_every_boundary(cut: int) -> None:
    parser = StompParser()
    out = parser.feed(TWO_FRAMES[:cut])
    out += parser.feed(TWO_FRAMES[cut:])
    assert out == TWO_EXPECTED


def test_parser_split_at_every_pair_of_boundaries() -> None:
    n = len(TWO_FRAMES)
    for i in range(n + 1):
        for j in range(i, n + 1, 7):
            parser = StompParser()
            out = parser.feed(TWO_FRAMES[:i]) + parser.feed(TWO_FRAMES[i:j])
            out += parser.feed(TWO_FRAMES[j:])
            assert out == TWO_EXPECTED, (i, j)


def test_truncated_frame_stays_pending() -> None:
    parser = StompParser()
    assert parser.feed(b"SEND\ndestination:/a\n\nhel") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"lo") == []
    assert parser.feed(b"\x00") == [F("SEND", b"hello", destination="/a")]
    assert parser.feed(b"SEND\ncontent-length:3\n\nab") == []
    assert parser.feed(b"c") == []  # waits for the NUL after the counted body
    assert parser.feed(b"\x00\r") == [F("SEND", b"abc", content_length="3")]
    assert parser.feed(b"\n") == [HB]
    for prefix in (b"C", b"CONN", b"CONNECT", b"CONNECT\r", b"\r", b"\r\nUNSUBSCRIBE\r"):
        assert StompParser().feed(prefix) in ([], [HB])


def test_many_frames_in_one_chunk() -> None:
    frames = [F("SEND", str(i).encode(), destination=f"/d/{i}") for i in range(5000)]
    data = b"".join(encode_frame(f) for f in frames)
    assert StompParser().feed(data) == [
        Frame(f.command, {**f.headers, "content-length": str(len(f.body))}, f.body) for f in frames
    ]


def test_long_body_fed_in_small_chunks() -> None:
    body = b"x" * 300_000
    data = b"SEND\n\n" + body + b"\x00"
    parser, out = StompParser(), []
    for i in range(0, len(data), 100):
        out += parser.feed(data[i : i + 100])
    assert out == [F("SEND", body)]


MALFORMED = [
    ("giant content-length", b"SEND\ncontent-length:99999999999\n\n", "frame too large"),
    ("absurd content-length", b"SEND\ncontent-length:" + b"9" * 400 + b"\n\n", "frame too large"),
    ("content-length over limit", b"SEND\ncontent-length:1025\n\n", "frame too large"),
    ("body without NUL over limit", b"SEND\n\n" + b"x" * 1100, "frame too large"),
    ("bad escape", b"SEND\ndestination:/a\\tb\n\n\x00", "invalid header escape \\t"),
    ("trailing backslash", b"SEND\ndestination:/a\\\n\n\x00", "invalid header escape \\"),
    ("missing NUL after body", b"SEND\ncontent-length:2\n\nabc\x00", "missing NUL after body"),
    ("junk command", b"\xff\xfe\x00\x01junk\n\n\x00", "unknown command"),
    ("junk without EOL", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8b\x1f",
     "unknown command"),
    ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unknown command"),
    ("early junk", b"G", "unknown command"),
    ("early bad CR", b"SEND\r\r", "unknown command"),
    ("lowercase command", b"send\n\n\x00", "unknown command"),
    ("junk after NUL", b"SEND\n\nab\x00cd\x00", "unknown command"),
    ("header without colon", b"SEND\ndestination\n\n\x00",
     "malformed frame: header line without ':'"),
    ("invalid utf-8 header", b"SEND\nd:\xff\xfe\n\n\x00", "invalid utf-8"),
    ("oversize headers without end", b"SEND\n" + b"h:" + b"v" * 600, "headers too large"),
    ("oversize headers many lines", b"SEND\n" + b"h:v\n" * 300, "headers too large"),
    ("oversize complete headers", b"SEND\n" + b"h:v\n" * 300 + b"\n\x00", "headers too large"),
    ("negative content-length", b"SEND\ncontent-length:-1\n\n\x00", "invalid content-length"),
    ("non-numeric content-length", b"SEND\ncontent-length:abc\n\n\x00", "invalid content-length"),
    ("unicode digits content-length", "SEND\ncontent-length:٣\n\n\x00".encode(),
     "invalid content-length"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_parser_malformed(data: bytes, message: str) -> None:
    parser = StompParser(max_frame_bytes=1024, max_header_bytes=512)
    with pytest.raises(StompFrameError) as info:
        parser.feed(data)
    assert str(info.value) == message
    with pytest.raises(StompFrameError, match="."):  # the stream stays failed
        parser.feed(b"SEND\n\n\x00")


def test_oversize_headers_error_early_without_buffering() -> None:
    parser = StompParser(max_header_bytes=1000)
    assert parser.feed(b"SEND\n") == []
    with pytest.raises(StompFrameError, match="headers too large"):
        for _ in range(100):
            parser.feed(b"x:" + b"y" * 50 + b"\n")
    assert len(parser._buf) == 0  # nothing kept around


def test_giant_content_length_fails_before_body_arrives() -> None:
    parser = StompParser(max_frame_bytes=1000)
    parser.feed(b"SEND\ncontent-length:100")
    with pytest.raises(StompFrameError, match="frame too large"):
        parser.feed(b"1\n\n")


def test_error_carries_frames_completed_before_it() -> None:
    with pytest.raises(StompFrameError) as info:
        StompParser().feed(b"\nSEND\n\nok\x00SEND\nbad\n\n\x00")
    assert info.value.frames == [HB, F("SEND", b"ok")]
    assert str(info.value) == "malformed frame: header line without ':'"


def test_heartbeat_marker() -> None:
    assert isinstance(HEARTBEAT, Heartbeat) and repr(HEARTBEAT) == "HEARTBEAT"
    assert is_heartbeat(b"\n") and is_heartbeat(b"\r\n") and not is_heartbeat(b"SEND\n\n\x00")


def test_frame_header() -> None:
    frame = F("SEND", destination="/a")
    assert frame.header("destination") == "/a"
    assert frame.header("receipt") is None
    assert frame.header("receipt", "x") == "x"


def test_commands() -> None:
    assert len(COMMANDS) == 15 and {"STOMP", "NACK", "ERROR", "CONNECTED"} <= COMMANDS


# --------------------------------------------------------------------------- parse_frame

PARSE_ONE = [
    ("trailing NUL", b"SEND\nd:/a\n\nhi\x00", F("SEND", b"hi", d="/a")),
    ("no NUL", b"SEND\nd:/a\n\nhi", F("SEND", b"hi", d="/a")),
    ("NUL then EOLs", b"SEND\n\nhi\x00\n\n", F("SEND", b"hi")),
    ("leading EOLs", b"\n\r\nSEND\n\nhi\x00", F("SEND", b"hi")),
    ("content-length with NUL body", b"SEND\ncontent-length:3\n\n\x00\x00\x00\x00",
     F("SEND", b"\x00\x00\x00", content_length="3")),
    ("content-length no NUL", b"SEND\ncontent-length:3\n\nabc",
     F("SEND", b"abc", content_length="3")),
    ("no blank line", b"DISCONNECT\nreceipt:1\n", F("DISCONNECT", receipt="1")),
    ("no blank line NUL", b"DISCONNECT\nreceipt:1\x00", F("DISCONNECT", receipt="1")),
    ("crlf and escapes", b"SUBSCRIBE\r\nid:1\r\ndestination:/room/{\"a\"\\c1}\r\n\r\n\x00",
     F("SUBSCRIBE", id="1", destination='/room/{"a":1}')),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in PARSE_ONE],
                         ids=[c[0] for c in PARSE_ONE])
def test_parse_frame(data: bytes, expected: Frame) -> None:
    assert parse_frame(data) == expected


PARSE_ONE_BAD = [
    ("empty", b"", "empty frame"),
    ("only EOLs", b"\r\n\n", "empty frame"),
    ("data after NUL", b"SEND\n\nab\x00cd", "malformed frame: data after NUL"),
    ("missing NUL after body", b"SEND\ncontent-length:1\n\nab", "missing NUL after body"),
    ("short body", b"SEND\ncontent-length:9\n\nab\x00",
     "frame truncated: body shorter than content-length"),
    ("bad escape", b"SEND\nx:\\t\n\n", "invalid header escape \\t"),
    ("unknown command", b"HELLO\n\n", "unknown command"),
    ("headers too large", b"SEND\n" + b"a:b\n" * 100 + b"\n", "headers too large"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in PARSE_ONE_BAD],
                         ids=[c[0] for c in PARSE_ONE_BAD])
def test_parse_frame_malformed(data: bytes, message: str) -> None:
    with pytest.raises(StompFrameError) as info:
        parse_frame(data, max_header_bytes=200)
    assert str(info.value) == message


def test_parse_frame_cb_compat() -> None:
    # the JS Communication Broker client pads names and values, counts characters in
    # content-length and sends regular expressions unescaped
    data = ("CONNECT\naccept-version  :  1.2\nlogin:  bob\npasscode  :pk\nsecret-key : ak\n\n\x00")
    assert parse_frame(data.encode(), cb_compat=True) == F(
        "CONNECT", accept_version="1.2", login="bob", passcode="pk", secret_key="ak")
    send = "SEND\ndestination:/agent/.*\\d\ncontent-length: 4\n\nñandú\x00".encode()
    assert parse_frame(send, cb_compat=True) == F(
        "SEND", "ñandú".encode(), destination="/agent/.*\\d", content_length="4")
    # a content-length that agrees is honoured (body may end in NUL, frame text may not)
    assert parse_frame(b"SEND\ncontent-length:2\n\na\x00", cb_compat=True).body == b"a\x00"
    assert parse_frame(b"SEND\ncontent-length:1\n\na\n\x00", cb_compat=True).body == b"a"
    assert parse_frame(b"SEND\ncontent-length:9\n\nabc", cb_compat=True).body == b"abc"
    assert parse_frame(b"SEND\n\nabc", cb_compat=True).body == b"abc"


# --------------------------------------------------------------------------- encode_frame


def test_encode_frame_basic() -> None:
    assert encode_frame(F("SEND", b"hi", destination="/a")) == (
        b"SEND\ndestination:/a\ncontent-length:2\n\nhi\x00")
    assert encode_frame(F("RECEIPT", receipt_id="1")) == b"RECEIPT\nreceipt-id:1\n\n\x00"
    assert encode_frame(F("SEND", b"hi"), content_length=False) == b"SEND\n\nhi\x00"


def test_encode_frame_escaping() -> None:
    frame = Frame("MESSAGE", {"a:b": "x\ny:z\\w\r"})
    assert encode_frame(frame) == b"MESSAGE\na\\cb:x\\ny\\cz\\\\w\\r\n\n\x00"
    assert encode_frame(frame, escape=False) == b"MESSAGE\na_b:x y:z\\w \n\n\x00"
    # CONNECTED is not escaped; what it cannot carry is replaced
    assert encode_frame(F("CONNECTED", version="1.2", login="a\\b:c\nd")) == (
        b"CONNECTED\nversion:1.2\nlogin:a\\b:c d\n\n\x00")
    assert encode_frame(F("CONNECTED", x="y"), escape=True) == b"CONNECTED\nx:y\n\n\x00"


def test_encode_frame_content_length_not_duplicated() -> None:
    frame = F("MESSAGE", b"abc", content_length="999", destination="/d")
    assert encode_frame(frame) == b"MESSAGE\ncontent-length:3\ndestination:/d\n\nabc\x00"
    assert frame.headers["content-length"] == "999"  # the caller's frame is untouched
    assert encode_frame(frame, content_length=False).count(b"content-length") == 1


# --------------------------------------------------------------------------- CBFramer


def cb_wire(text: bytes, *, big: bool = False, flag: int | None = None) -> bytes:
    flag = (1 if big else 0) if flag is None else flag
    return bytes([flag]) + len(text).to_bytes(4, "big" if big else "little") + text


def com_broker_py_frame(command: str, headers: dict[str, object], payload: str) -> bytes:
    """What the original com_broker.py sends (no NUL, lengths in characters)."""
    msg = command + "\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n" + payload
    return b"\x00" + len(msg).to_bytes(4, "little") + msg.encode()


@pytest.mark.parametrize("big", [False, True])
def test_cb_framer_byte_orders(big: bool) -> None:
    framer = CBFramer()
    assert framer.big_endian is None
    text = b"SEND\ndestination:/agent/bob\ntransaction:3\n\nhello"
    frames = framer.feed(cb_wire(text, big=big) + cb_wire(b"DISCONNECT\nreceipt-id:X\n\n", big=big))
    assert frames == [F("SEND", b"hello", destination="/agent/bob", transaction="3"),
                      F("DISCONNECT", receipt_id="X")]
    assert framer.big_endian is big
    out = framer.encode(F("RECEIPT", receipt_id="X"))
    text_out = b"RECEIPT\nreceipt-id:X\n\n\x00"
    assert out == cb_wire(text_out, big=big)
    # byte order is the client's first frame's, any non-zero flag means big-endian
    framer.feed(cb_wire(b"ACK\n\n", big=not big))
    assert framer.big_endian is big
    other = CBFramer()
    other.feed(b"\x07" + (6).to_bytes(4, "big") + b"ACK\n\n\x00")
    assert other.big_endian is True


def test_cb_framer_default_little_endian() -> None:
    assert CBFramer().encode(F("ERROR", message="x")) == cb_wire(b"ERROR\nmessage:x\n\n\x00")


def test_cb_framer_split_across_chunks() -> None:
    data = cb_wire(b"SUBSCRIBE\ndestination-type:1\ndestination:/agent/b.*\n\n") + cb_wire(
        b"SEND\ncontent-length:3\ndestination:/agent/bob\n\na\x00b", big=False)
    expected = [F("SUBSCRIBE", destination_type="1", destination="/agent/b.*"),
                F("SEND", b"a\x00b", content_length="3", destination="/agent/bob")]
    for cut in range(len(data) + 1):
        framer = CBFramer()
        assert framer.feed(data[:cut]) + framer.feed(data[cut:]) == expected
    framer, out = CBFramer(), []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    assert out == expected


def test_cb_framer_original_python_client() -> None:
    framer = CBFramer()
    data = com_broker_py_frame("CONNECT", {"accept-version": "1.2", "login": "bob",
                                           "passcode": "pk", "secret-key": "ak"}, "")
    data += com_broker_py_frame("SEND", {"transaction": 1, "session-id": "s", "origin": "bob",
                                         "destination": "/agent/al", "content-type": "text/plain",
                                         "content-length": 5}, "hello")
    data += com_broker_py_frame("UNSUBSCRIBE", {"transaction": 2, "session-id": "s"}, "")
    frames = framer.feed(data)
    assert [f.command for f in frames] == ["CONNECT", "SEND", "UNSUBSCRIBE"]
    assert frames[0].headers == {"accept-version": "1.2", "login": "bob", "passcode": "pk",
                                 "secret-key": "ak"}
    assert frames[1].body == b"hello" and frames[1].header("transaction") == "1"
    assert framer.big_endian is False


def test_cb_framer_keepalive_and_errors() -> None:
    framer = CBFramer(max_frame_bytes=1000)
    assert framer.feed(cb_wire(b"") + cb_wire(b"\n")) == []
    with pytest.raises(StompFrameError, match="frame too large"):
        CBFramer(max_frame_bytes=1000).feed(b"\x00" + (1001).to_bytes(4, "little"))
    with pytest.raises(StompFrameError, match="frame too large"):
        CBFramer().feed(b"\x01\xff\xff\xff\xff")
    with pytest.raises(StompFrameError) as info:
        CBFramer().feed(cb_wire(b"ACK\n\n") + cb_wire(b"NOPE\n\n"))
    assert str(info.value) == "unknown command" and info.value.frames == [F("ACK")]
    assert CBFramer().feed(b"\x00\x05\x00\x00") == []  # incomplete prefix stays pending


# --------------------------------------------------------------------------- round trips

# What round-trips exactly: no STOMP header carries NUL (the encoder writes U+FFFD instead,
# see the hostile-header tests below).
SAFE_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                    max_size=20)
UNESCAPED_NAME = SAFE_TEXT.filter(lambda s: not set(s) & set(":\r\n"))
UNESCAPED_VALUE = SAFE_TEXT.filter(lambda s: not set(s) & set("\r\n"))
CB_NAME = UNESCAPED_NAME.filter(lambda s: s == s.strip())
CB_VALUE = UNESCAPED_VALUE.filter(lambda s: s == s.strip())


def no_content_length(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "content-length"}


@st.composite
def frames(draw: st.DrawFn, *, cb: bool = False, nul_body: bool = True) -> Frame:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    if cb:
        names, values = CB_NAME, CB_VALUE
    elif command in ("CONNECT", "CONNECTED"):
        names, values = UNESCAPED_NAME, UNESCAPED_VALUE
    else:
        names = values = st.text(st.characters(blacklist_categories=["Cs"],
                                               blacklist_characters="\x00")
                                 | st.sampled_from(":\n\r\\"), max_size=20)
    headers = no_content_length(draw(st.dictionaries(names, values, max_size=6)))
    body = draw(st.binary(max_size=300) if nul_body else
                st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"")))
    return Frame(command, headers, body)


def with_length(frame: Frame) -> Frame:
    if not frame.body:
        return frame
    return Frame(frame.command, {**frame.headers, "content-length": str(len(frame.body))},
                 frame.body)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=8),
       st.lists(st.sampled_from([b"", b"\n", b"\r\n"]), min_size=4, max_size=4))
def test_roundtrip_stomp_parser(batch: list[Frame], cuts: list[int], eols: list[bytes]) -> None:
    data = b"".join(eol + encode_frame(f) for f, eol in zip(batch, eols, strict=False))
    parser, out = StompParser(), []
    for chunk in chunked(data, cuts):
        out += parser.feed(chunk)
    assert [f for f in out if isinstance(f, Frame)] == [with_length(f) for f in batch]
    assert out.count(HEARTBEAT) == sum(eol != b"" for eol in eols[: len(batch)])
    for frame in batch:
        assert parse_frame(encode_frame(frame)) == with_length(frame)


@settings(max_examples=200, deadline=None)
@given(frames(nul_body=False), st.lists(st.integers(0, 10_000), max_size=5))
def test_roundtrip_without_content_length(frame: Frame, cuts: list[int]) -> None:
    data = encode_frame(frame, content_length=False)
    parser, out = StompParser(), []
    for chunk in chunked(data, cuts):
        out += parser.feed(chunk)
    assert out == [frame]
    assert parse_frame(data) == frame == parse_frame(data[:-1])


@settings(max_examples=200, deadline=None)
@given(st.lists(frames(cb=True), min_size=1, max_size=4), st.lists(st.integers(0, 10_000),
       max_size=8), st.booleans(), st.booleans())
def test_roundtrip_cb_framer(batch: list[Frame], cuts: list[int], big: bool, nul: bool) -> None:
    # a client frame: flag + length + text (with or without a trailing NUL)
    wire = b"".join(cb_wire(encode_frame(f, escape=False)[: None if nul else -1], big=big)
                    for f in batch)
    framer, out = CBFramer(), []
    for chunk in chunked(wire, cuts):
        out += framer.feed(chunk)
    assert out == [with_length(f) for f in batch]
    assert framer.big_endian is big
    # and what the broker answers decodes the same way, in the client's byte order
    for frame in batch:
        reply = framer.encode(frame)
        assert reply[0] == (1 if big else 0)
        assert int.from_bytes(reply[1:5], "big" if big else "little") == len(reply) - 5
        assert reply.endswith(b"\x00")
        assert CBFramer().feed(reply) == [with_length(frame)]


# --------------------------------------------------------------------------- hostile headers

HOSTILE = ["evil\x00ERROR", "a\rb", "a\nb", "a:b", "a\\b", "\x00ERROR\n\nforged\x00",
           "x\r\n\r\nERROR\r\nmessage:y\r\n\r\nz\x00", "\\c\\n\\\\", ":", "\n", "\x00"]


def _no_raw_controls(frame: Frame) -> None:
    for name, value in frame.headers.items():
        assert not set(name + value) & {"\x00", "\r", "\n"}, (name, value)


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("command", ["MESSAGE", "ERROR", "RECEIPT", "CONNECTED"])
def test_hostile_header_values_cannot_split_a_frame(command: str, value: str) -> None:
    """Whatever a header holds, the encoder writes one frame: the real parser reads back
    exactly one, with the body intact, and no raw NUL, CR or LF in any header."""
    headers = {"origin": value, value + "name": "v", "destination": "/agent/" + value}
    data = encode_frame(Frame(command, headers, b"body \x00 with NUL"))
    head = data[: data.index(b"\n\n")]
    assert b"\x00" not in head and b"\r" not in head
    frames = StompParser().feed(data)
    assert len(frames) == 1, frames
    frame = frames[0]
    assert isinstance(frame, Frame) and frame.command == command
    assert frame.body == b"body \x00 with NUL"
    assert set(frame.headers) - {"content-length"} == {  # nothing injected, nothing lost
        k.replace("\x00", "\ufffd").replace("\r", "_").replace("\n", "_").replace(":", "_")
        if command == "CONNECTED" else k.replace("\x00", "\ufffd") for k in headers}
    if command == "CONNECTED":  # unescaped: what it cannot carry was replaced
        _no_raw_controls(frame)
    else:
        # escaped frames carry CR, LF, ':' and '\' exactly; NUL, which STOMP cannot escape,
        # becomes U+FFFD
        expected = {k.replace("\x00", "\ufffd"): v.replace("\x00", "\ufffd")
                    for k, v in headers.items()}
        assert {k: v for k, v in frame.headers.items() if k != "content-length"} == expected
    # the same frame as one WebSocket message
    assert parse_frame(data).command == command


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_header_values_in_communication_broker_framing(value: str) -> None:
    """The length prefix bounds the frame; inside it, unescaped headers cannot carry NUL, CR
    or LF either (its clients split headers on LF and may end the text at the first NUL)."""
    framer = CBFramer()
    data = framer.encode(Frame("MESSAGE", {"origin": value, value + "n": "v"}, b"text"))
    text = data[5:]
    assert text.endswith(b"\x00") and b"\x00" not in text[:-1]
    frames = CBFramer().feed(data)
    assert len(frames) == 1 and frames[0].command == "MESSAGE" and frames[0].body == b"text"
    _no_raw_controls(frames[0])
    assert len(frames[0].headers) == 3  # origin, the odd name, content-length: nothing injected


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=4),
       st.sampled_from(["MESSAGE", "CONNECTED", "ERROR"]), st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_headers_encode_to_exactly_one_frame(headers: dict[str, str], command: str,
                                                  escape: bool) -> None:
    data = encode_frame(Frame(command, headers, b"x"), escape=escape)
    head = data[: data.index(b"\n\n")]
    assert b"\x00" not in head and b"\r" not in head
    assert head.count(b"\n") == len(headers) + 1  # one line per header, content-length
    frame = parse_frame(data, cb_compat=not escape)  # unescaped frames: the CB reading
    assert frame.command == command and frame.body == b"x"
    assert len(frame.headers) <= len(headers) + 1
