"""The TCP gate's transport: the framing of one TCP (or TLS) connection, for ``broker.serve``.

One port serves three framings, told apart by the connection's first byte (``start``):

- ``C``/``S`` (or an EOL): standard STOMP 1.2, parsed by ``stompframe.StompParser``;
- ``0x00``/``0x01``: the Communication Broker's length-prefixed frames (``CBFramer``);
- ``{``: JSON lines, the rich JSON dialect after a first ``{"type":"connect", ...}`` line.

That byte chooses the codec and the reader of the stream (``tcpgate.readers``: it bounds each
inbound frame, and says the framing's last words before a close, since TCP has no close
codes). Everything else (admission, credentials from the first frame, the refusal table, the
welcome, heart-beats, the receive loop, the close) is the serve loop's, as for a WebSocket.

Outbound, ``write_now`` hands a frame to asyncio's buffer and says "full" once it holds the
high-water mark (``WRITE_HIGH_WATER``); the outbox then waits for ``writable`` (``drain()``),
and everything else waits in the connection's outbox, bounded by BROKER_MAX_OUTBOX_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from broker import errors, serve
from broker.codec import Codec
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec
from broker.codecs.stompframe import CBFramer, Frame, StompParser, encode_frame
from tcpgate.readers import FrameReader, LineReader, Reader

WRITE_HIGH_WATER = 65_536  # bytes asyncio may buffer per connection before write() waits
CLOSE_GRACE = 2.0  # seconds a closing connection may take to flush before it is aborted


class TcpTransport:
    """``broker.serve.Transport`` over an asyncio stream: the framing of one TCP connection.

    Before its first byte it has no codec; ``start`` reads that byte and chooses one, with the
    reader of that framing (``tcpgate.readers``). Then ``receive`` is that reader's: one frame
    at a time. ``close`` says why in the framing (the reader's ``last_words``) before closing.
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
        self.done = asyncio.Event()  # set once the socket is closed
        self._in: Reader | None = None  # the framing's reader, chosen by the first byte
        self._eol = b""  # its ``eol``, added to each frame written
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
        bounds = {"max_frame_bytes": self.max_frame, "max_header_bytes": self.max_header}
        if first in b"CS\r\n":
            stomp = StompCodec(heartbeat_ms=self.heartbeat_ms, max_header_bytes=self.max_header)
            return self._framing(FrameReader(self.reader, first, StompParser(**bounds), stomp),
                              stomp, binary=True)
        if first in (b"\x00", b"\x01"):
            framer = CBFramer(**bounds)
            cb = StompCodec(cb=True, framer=framer, max_header_bytes=self.max_header)
            return self._framing(FrameReader(self.reader, first, framer, cb), cb, binary=True)
        if first == b"{":
            return self._framing(LineReader(self.reader, first), JsonCodec(rich=True), binary=False)
        self.writer.write(encode_frame(Frame("ERROR", {"message": errors.MALFORMED_FRAME},
                                             b"unknown framing")))
        return None

    def _framing(self, reader: Reader, codec: Codec, *, binary: bool) -> serve.Framing:
        self._in, self._eol = reader, reader.eol
        # The parsers bound each frame (BROKER_MAX_MESSAGE_BYTES) before buffering it, the
        # stream reader's limit a JSON line (Gate.start): no bound of the serve loop's.
        return serve.Framing(codec, explicit_refusal=True, binary=binary, connect_frame=True)

    @property
    def receive(self) -> Callable[[], Coroutine[Any, Any, serve.Inbound]]:
        """The chosen reader's ``receive`` (``serve`` awaits it once a frame, nothing between)."""
        assert self._in is not None, "receive before start chose a framing"
        return self._in.receive

    @property
    def last_read(self) -> float:
        """heartbeat.Link: since when the client is silent, as the chosen reader counts it."""
        return time.monotonic() if self._in is None else self._in.last_read

    @last_read.setter
    def last_read(self, value: float) -> None:
        """Nothing to keep: ``last_read`` is derived from the read in progress."""

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
        last = (self._in.last_words(code, reason)
                if self._in is not None and code != errors.CLOSE_NORMAL else None)
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
