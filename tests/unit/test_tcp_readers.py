"""tcpgate.readers: the TCP gate's two ways of reading a stream (STOMP/CB frames through a
parser, JSON lines through readline), the first byte already read, and their last words."""

from __future__ import annotations

import asyncio
import json

from broker import errors, serve
from broker.codecs.stomp import StompCodec
from broker.codecs.stompframe import Frame, StompParser, parse_frame
from tcpgate.readers import FrameReader, LineReader


def stream(data: bytes, *, limit: int = 2 ** 16, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def frames_reader(data: bytes, *, eof: bool = True) -> FrameReader:
    return FrameReader(stream(data[1:], eof=eof), data[:1], StompParser(), StompCodec())


async def test_frames_from_the_first_byte_on_heart_beats_skipped() -> None:
    reader = frames_reader(b"CONNECT\naccept-version:1.2\n\n\x00\n\n\nSEND\ndestination:/a\n\nhi\x00")
    first = await reader.receive()
    assert isinstance(first, Frame) and first.command == "CONNECT"
    second = await reader.receive()
    assert isinstance(second, Frame) and (second.command, second.body) == ("SEND", b"hi")
    assert await reader.receive() is None  # EOF
    assert reader.eol == b""


async def test_frames_before_a_syntax_error_then_malformed() -> None:
    reader = frames_reader(b"SEND\ndestination:/a\n\n\x00BOGUS\n\n\x00")
    frame = await reader.receive()
    assert isinstance(frame, Frame) and frame.command == "SEND"
    assert isinstance(await reader.receive(), serve.Malformed)


async def test_silent_only_while_a_read_waits() -> None:
    reader = frames_reader(b"SEND\n\n\x00", eof=False)
    await reader.receive()
    before = asyncio.get_running_loop().time()
    assert reader.last_read >= before  # handling a frame read: not silent
    waiting = asyncio.ensure_future(reader.receive())
    await asyncio.sleep(0.05)
    since = reader.last_read
    await asyncio.sleep(0.02)
    assert reader.last_read == since  # waiting for the client: silent since the read began
    waiting.cancel()


async def test_stomp_last_words_are_the_codecs_error_frame() -> None:
    last = frames_reader(b"C").last_words(errors.CLOSE_SLOW, errors.SLOW)
    assert isinstance(last, bytes)
    error = parse_frame(last)
    assert error.command == "ERROR" and error.headers["message"] == errors.SLOW


async def test_lines_from_the_first_byte_on() -> None:
    reader = LineReader(stream(b'"type":"connect"}\n\n  \r\n{"a":1}\r\n\xff\n{"cut'), b"{")
    assert await reader.receive() == '{"type":"connect"}'
    assert await reader.receive() == '{"a":1}'  # blank lines are keep-alives
    assert await reader.receive() == b"\xff"  # not UTF-8: bytes
    assert await reader.receive() is None  # a last line without its newline is dropped
    assert reader.eol == b"\n"


async def test_a_line_over_the_limit_is_too_big() -> None:
    reader = LineReader(stream(b'"a":"' + b"x" * 100 + b'"}\n', limit=20), b"{")
    assert await reader.receive() is serve.TOO_BIG


async def test_json_last_words_are_a_close_line() -> None:
    last = LineReader(stream(b""), b"{").last_words(errors.CLOSE_SLOW, errors.SLOW)
    assert last.endswith(b"\n")
    assert json.loads(last) == {"type": "close", "code": 4008, "reason": "slow"}
