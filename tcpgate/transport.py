"""The TCP gate's transport: the framing of one TCP (or TLS) connection, for ``broker.serve``.

One port serves three framings, told apart by the connection's first byte:

- ``C``/``S`` (or an EOL): standard STOMP 1.2, parsed by ``stompframe.StompParser``;
- ``0x00``/``0x01``: the Communication Broker's length-prefixed frames (``CBFramer``);
- ``{``: JSON lines, the rich JSON dialect after a first ``{"type":"connect", ...}`` line.

Each connection is then served by ``broker.serve`` exactly as a WebSocket is: admission,
credentials (the CONNECT frame, the ``connect`` line), the refusal table, the welcome,
heart-beats, the receive loop and the close are the serve loop's. ``TcpTransport`` only does
the framing: the first byte chooses the codec, the parsers cut the stream into frames.

Memory per connection is bounded by explicit limits:

- inbound: one frame of at most BROKER_MAX_MESSAGE_BYTES (headers BROKER_MAX_HEADER_BYTES),
  enforced by the parsers before buffering; a JSON line by the StreamReader limit
  (``tcpgate.server.Gate.start``);
- outbound: ``write_now`` hands a frame to asyncio's buffer and says "full" once it holds
  the transport's high-water mark (``WRITE_HIGH_WATER``); the outbox then waits for
  ``writable`` (``drain()``), and everything else waits in the Connection's outbox, which
  closes the connection as ``slow`` past BROKER_MAX_OUTBOX_BYTES.

A transport without close codes says why it closes in its own framing: an ERROR frame with
``message:<reason>`` on STOMP, a ``{"type":"close","code":..,"reason":..}`` line on JSON lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import ssl
import time
from collections.abc import Callable

from broker import errors, serve
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec
from broker.codecs.stompframe import (
    CBFramer, Frame, StompFrameError, StompParser, encode_frame,
)

READ_CHUNK = 65_536
WRITE_HIGH_WATER = 65_536  # bytes asyncio may buffer per connection before write() waits
CLOSE_GRACE = 2.0  # seconds a closing connection may take to flush before it is aborted


def _close_line(code: int, reason: str) -> bytes:
    return json.dumps({"type": "close", "code": code, "reason": reason}).encode() + b"\n"


class TcpTransport:
    """``broker.serve.Transport`` over an asyncio stream: the framing of one TCP connection.

    Before its first byte it has no codec; ``start`` reads that byte and chooses one. Then
    ``receive`` hands in one frame at a time (a chunk may carry several; heart-beat EOLs are
    only counted as reads), and ``close`` says why in the framing before closing.
    """

    name = "tcp"
    close_codes = False
    over_capacity_grace = CLOSE_GRACE  # accepted before it can be refused: time for a place

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 heartbeat_ms: int, max_frame: int, max_header: int) -> None:
        self.reader = reader
        self.writer = writer
        self.heartbeat_ms = heartbeat_ms
        self.max_frame = max_frame
        self.max_header = max_header
        peer = writer.get_extra_info("peername")
        self.remote_addr: str | None = peer[0] if isinstance(peer, tuple) else None
        self.last_write = time.monotonic()
        self._reading_since: float | None = None  # when the read now waiting began
        self.done = asyncio.Event()  # set once the socket is closed
        self._eol = b""  # JSON lines: each frame is one line
        self._last_words: Callable[[int, str], str | bytes | None] = lambda code, reason: None
        self._framer: CBFramer | StompParser | None = None
        self._frames: collections.deque[Frame] = collections.deque()
        self._end: serve.Inbound = None  # what follows the frames read: EOF, or Malformed
        self._first = b""
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    # ---- serve.Transport: the framing

    async def deny(self, reason: str) -> None:  # pragma: no cover - over_capacity_grace set
        raise AssertionError("a TCP connection is refused in its framing, never denied")

    async def start(self) -> serve.Framing | None:
        """Read the first byte and choose the framing by it (see the module's docstring)."""
        try:
            first = await self.reader.read(1)
        except (OSError, ssl.SSLError):
            first = b""
        if not first:
            return None
        self._first = first
        if first in b"CS\r\n":
            parser = StompParser(max_frame_bytes=self.max_frame, max_header_bytes=self.max_header)
            self._framer = parser
            return self._stomp(StompCodec(heartbeat_ms=self.heartbeat_ms,
                                          max_header_bytes=self.max_header))
        if first in (b"\x00", b"\x01"):
            framer = CBFramer(max_frame_bytes=self.max_frame, max_header_bytes=self.max_header)
            self._framer = framer
            return self._stomp(StompCodec(cb=True, framer=framer,
                                          max_header_bytes=self.max_header))
        if first == b"{":
            self._eol = b"\n"
            self._last_words = _close_line
            self.receive = self._line  # type: ignore[method-assign]
            # The reader's limit bounds a line (Gate.start): no bound of the serve loop's.
            return serve.Framing(JsonCodec(rich=True), explicit_refusal=True,
                                 connect_frame=True)
        self.writer.write(encode_frame(Frame("ERROR", {"message": errors.MALFORMED_FRAME},
                                             b"unknown framing")))
        return None

    def _stomp(self, codec: StompCodec) -> serve.Framing:
        self._last_words = codec.closing_frame
        # The parsers bound each frame (BROKER_MAX_MESSAGE_BYTES) before buffering it.
        return serve.Framing(codec, explicit_refusal=True, binary=True, connect_frame=True)

    async def receive(self) -> serve.Inbound:
        """The next STOMP frame (``start`` puts ``_line`` here for JSON lines)."""
        frames = self._frames
        while not frames:
            if self._end is not None:
                end, self._end = self._end, None
                return end
            if self._first:
                data, self._first = self._first, b""
            else:
                data = await self._read()
                if not data:
                    return None
            assert self._framer is not None
            try:
                items = self._framer.feed(data)
            except StompFrameError as exc:
                items, self._end = exc.frames, serve.Malformed(str(exc))
            frames.extend(item for item in items if isinstance(item, Frame))  # not heart-beats
        return frames.popleft()

    @property
    def last_read(self) -> float:
        """heartbeat.Link: the client is silent only while the gate waits for it, from the
        start of the read now waiting, as a timeout on each read counts it. While the gate
        handles frames already read (a pipelined batch, a slow Redis call), the client is
        waiting for the gate, not silent: its heart-beats sit unread in the socket."""
        since = self._reading_since
        return time.monotonic() if since is None else since

    @last_read.setter
    def last_read(self, value: float) -> None:
        """Nothing to keep: ``last_read`` is derived from the read in progress."""

    async def _read(self) -> bytes:
        self._reading_since = time.monotonic()
        try:
            return await self.reader.read(READ_CHUNK)
        except (OSError, ssl.SSLError):
            return b""
        finally:
            self._reading_since = None

    async def _line(self) -> serve.Inbound:
        """The next JSON line: text, bytes when it is not UTF-8, ``TOO_BIG`` past the reader's
        limit, None at EOF (a last line without its newline is dropped). Blank lines are
        keep-alives. JSON lines have no heart-beats: ``last_read`` is not kept."""
        readline = self.reader.readline
        while True:
            try:
                line = await readline()
            except ValueError:  # a line over the limit
                return serve.TOO_BIG
            except (OSError, ssl.SSLError):
                return None
            if not line.endswith(b"\n"):
                return None
            if self._first:  # the "{" that chose the framing
                line, self._first = self._first + line, b""
            text = line.rstrip(b"\r\n")
            if not text.strip():
                continue
            try:
                return text.decode("utf-8")
            except UnicodeDecodeError:
                return text

    async def wait_closed(self) -> None:
        """Wait for the close (``Connection`` flushes what is queued first); a peer that does
        not read is cut off."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), CLOSE_GRACE * 3)
        if not self.done.is_set():
            self.writer.transport.abort()
            self.done.set()

    # ---- broker.connection.Transport

    def write_now(self, frame: str | bytes) -> bool:
        """broker.outbox.Writer: the stream buffers the frame; False once over its high-water
        mark (``writable`` then waits for the reader)."""
        if self.writer.is_closing():
            raise ConnectionResetError("connection lost")
        data = frame.encode("utf-8") if isinstance(frame, str) else frame
        self.writer.write(data + self._eol if self._eol else data)
        self.last_write = time.monotonic()
        return self.writer.transport.get_write_buffer_size() <= WRITE_HIGH_WATER

    async def writable(self) -> None:
        await self.writer.drain()

    async def write(self, frame: str | bytes) -> None:
        """An awaited write (a refusal): handed over as the outbox does, then drained."""
        self.write_now(frame)
        await self.writer.drain()

    async def close(self, code: int, reason: str) -> None:
        if self.done.is_set() or self.writer.is_closing():
            self.done.set()
            return
        last = self._last_words(code, reason) if code != errors.CLOSE_NORMAL else None
        with contextlib.suppress(Exception):
            if last:
                # no drain: a slow reader may never take it
                self.writer.write(last.encode("utf-8") if isinstance(last, str) else last)
            self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_GRACE)
        except Exception:  # noqa: BLE001 - a peer that does not read, or a failed socket
            self.writer.transport.abort()
        finally:
            self.done.set()
