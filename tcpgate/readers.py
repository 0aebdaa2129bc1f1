"""How the TCP gate reads one connection's stream: a reader per framing, chosen by the first
byte (``tcpgate.transport``), with the framing's last words.

- ``FrameReader``: STOMP 1.2 and the Communication Broker's length-prefixed frames. Chunks of
  the stream are fed to a sans-I/O parser (``stompframe.StompParser``, ``CBFramer``), which
  bounds each frame (BROKER_MAX_MESSAGE_BYTES, headers BROKER_MAX_HEADER_BYTES) before
  buffering it; a chunk may carry several frames, heart-beat EOLs only count as reads. Its last
  words are the STOMP codec's ``closing_frame``: an ERROR frame with ``message:<reason>``.
- ``LineReader``: JSON lines, one frame a line (``readline``: the StreamReader's limit bounds a
  line, ``tcpgate.server.Gate.start``); a frame written ends with a newline (``eol``). Its last
  words are a ``{"type":"close","code":..,"reason":..}`` line.

Each hands in what ``broker.serve.Transport.receive`` returns, and says since when the client
is silent (``last_read``, ``broker.heartbeat.Link``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import time
from typing import Protocol

from broker import serve
from broker.codecs.stomp import StompCodec
from broker.codecs.stompframe import CBFramer, Frame, StompFrameError, StompParser

READ_CHUNK = 65_536


class Reader(Protocol):
    """One framing's reading side, and what it says before the close."""

    eol: bytes  # appended to every frame written (JSON lines: each frame is one line)

    @property
    def last_read(self) -> float: ...
    async def receive(self) -> serve.Inbound: ...
    def last_words(self, code: int, reason: str) -> str | bytes | None: ...


class FrameReader:
    """STOMP frames cut from the stream by ``parser``; ``first`` is the byte already read."""

    eol = b""

    def __init__(self, stream: asyncio.StreamReader, first: bytes,
                 parser: StompParser | CBFramer, codec: StompCodec) -> None:
        self._stream = stream
        self._unread = first
        self._parser = parser
        self._codec = codec
        self._frames: collections.deque[Frame] = collections.deque()
        self._end: serve.Inbound = None  # what follows the frames read: EOF, or Malformed
        self._reading_since: float | None = None  # when the read now waiting began

    async def receive(self) -> serve.Inbound:
        """The next frame; ``Malformed`` after the frames before a syntax error; None at EOF."""
        frames = self._frames
        while not frames:
            if self._end is not None:
                end, self._end = self._end, None
                return end
            if self._unread:
                data, self._unread = self._unread, b""
            else:
                data = await self._read()
                if not data:
                    return None
            try:
                items = self._parser.feed(data)
            except StompFrameError as exc:
                items, self._end = exc.frames, serve.Malformed(str(exc))
            frames.extend(item for item in items if isinstance(item, Frame))  # not heart-beats
        return frames.popleft()

    @property
    def last_read(self) -> float:
        """The client is silent only while the gate waits for it, from the start of the read
        now waiting, as a timeout on each read counts it. While the gate handles frames
        already read (a pipelined batch, a slow Redis call), the client is waiting for the
        gate, not silent: its heart-beats sit unread in the socket."""
        since = self._reading_since
        return time.monotonic() if since is None else since

    async def _read(self) -> bytes:
        self._reading_since = time.monotonic()
        try:
            return await self._stream.read(READ_CHUNK)
        except (OSError, ssl.SSLError):
            return b""
        finally:
            self._reading_since = None

    def last_words(self, code: int, reason: str) -> str | bytes | None:
        return self._codec.closing_frame(code, reason)


class LineReader:
    """JSON lines; ``first`` is the ``{`` already read, the start of the first line."""

    eol = b"\n"

    def __init__(self, stream: asyncio.StreamReader, first: bytes) -> None:
        self._stream = stream
        self._unread = first

    async def receive(self) -> serve.Inbound:
        """The next line: text, bytes when it is not UTF-8, ``TOO_BIG`` past the reader's
        limit, None at EOF (a last line without its newline is dropped). Blank lines are
        keep-alives."""
        readline = self._stream.readline
        while True:
            try:
                line = await readline()
            except ValueError:  # a line over the limit
                return serve.TOO_BIG
            except (OSError, ssl.SSLError):
                return None
            if not line.endswith(b"\n"):
                return None
            if self._unread:  # the "{" that chose the framing
                line, self._unread = self._unread + line, b""
            text = line.rstrip(b"\r\n")
            if not text.strip():
                continue
            try:
                return text.decode("utf-8")
            except UnicodeDecodeError:
                return text

    @property
    def last_read(self) -> float:
        """JSON lines have no heart-beats: never silent."""
        return time.monotonic()

    def last_words(self, code: int, reason: str) -> bytes:
        return json.dumps({"type": "close", "code": code, "reason": reason}).encode() + b"\n"
