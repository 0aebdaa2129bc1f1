"""The TCP gate: STOMP 1.2, Communication Broker framing and JSON lines over TCP or TLS.

It owns the byte stream of one TCP connection, nothing more (PROTOCOL §4.1). One port serves
three framings, told apart by the connection's first byte:

- ``C``/``S`` (or an EOL): standard STOMP 1.2, parsed by ``stompframe.StompParser``;
- ``0x00``/``0x01``: the Communication Broker's length-prefixed frames (``CBFramer``);
- ``{``: JSON lines, the rich JSON dialect after a first ``{"type":"connect", ...}`` line.

Each connection then drives ``broker.connection.Connection`` exactly as the WebSocket consumer
does: credentials once, each frame through the codec into ``Connection.receive``, and writes
and closes through the small ``Transport`` interface. The codecs decide what frames mean.

Memory per connection is bounded by explicit limits:

- inbound: one frame of at most BROKER_MAX_MESSAGE_BYTES (headers BROKER_MAX_HEADER_BYTES),
  enforced by the parsers before buffering; a JSON line by the StreamReader limit;
- outbound: ``write`` awaits ``drain()``, so at most the transport's high-water mark
  (``WRITE_HIGH_WATER``) waits in asyncio's buffer; everything else waits in the
  Connection's outbox, which closes the connection as ``slow`` past BROKER_MAX_OUTBOX_BYTES.

A transport without close codes says why it closes in its own framing: an ERROR frame with
``message:<reason>`` on STOMP, a ``{"type":"close","code":..,"reason":..}`` line on JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from typing import Any

from broker import disconnect, errors, heartbeat, metrics
from broker.auth import AuthUnavailable, Credentials, Refused
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec
from broker.codecs.stompframe import (
    HEARTBEAT, CBFramer, Frame, StompFrameError, StompParser, encode_frame,
)
from broker.conf import conf
from broker.connection import Connection
from broker.errors import BrokerUnavailable
from broker.limits import admission
from broker.session import load_json

log = logging.getLogger("tcpgate")

READ_CHUNK = 65_536
WRITE_HIGH_WATER = 65_536  # bytes asyncio may buffer per connection before write() waits
CLOSE_GRACE = 2.0  # seconds a closing connection may take to flush before it is aborted


def ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def credentials_from_connect(msg: dict[str, Any], remote_addr: str | None) -> Credentials:
    """The §2 credentials of a JSON-lines ``{"type":"connect", ...}`` line."""

    def text(name: str) -> str | None:
        value = msg.get(name)
        return value if isinstance(value, str) else None

    headers = {name: value for name in ("cookie", "authorization", "user-agent")
               if (value := text(name))}
    extra = msg.get("headers")
    if isinstance(extra, dict):  # for BROKER_AUTH_FORWARD_HEADERS
        headers.update({str(k).lower(): v for k, v in extra.items() if isinstance(v, str)})
    return Credentials(headers=headers, token=text("token"), remote_addr=remote_addr,
                       app_key=text("app_key"), login_id=text("login_id"),
                       profile_key=text("profile_key"))


class TcpTransport:
    """``broker.connection.Transport`` over an asyncio stream."""

    name = "tcp"

    def __init__(self, writer: asyncio.StreamWriter, json_lines: bool = False) -> None:
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.remote_addr: str | None = peer[0] if isinstance(peer, tuple) else None
        self.json_lines = json_lines
        self.codec: Any = None
        self.last_write = time.monotonic()
        self.last_read = self.last_write  # heartbeat.Link; the gate watches reads itself
        self.done = asyncio.Event()  # set once the socket is closed
        self.admitted = False  # counted in limits.admission; released once, by Gate.handle
        self.refusal: str | None = None  # not admitted at accept: refused at its CONNECT
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def write_now(self, frame: str | bytes) -> bool:
        """broker.outbox.Writer: the stream buffers the frame; False once over its high-water
        mark (``writable`` then waits for the reader)."""
        if self.writer.is_closing():
            raise ConnectionResetError("connection lost")
        data = frame.encode("utf-8") if isinstance(frame, str) else frame
        if self.json_lines:
            data += b"\n"
        self.writer.write(data)
        self.last_write = time.monotonic()
        return self.writer.transport.get_write_buffer_size() <= WRITE_HIGH_WATER

    async def writable(self) -> None:
        await self.writer.drain()

    async def write(self, frame: str | bytes) -> None:
        data = frame.encode("utf-8") if isinstance(frame, str) else frame
        if self.json_lines:
            data += b"\n"
        self.writer.write(data)
        self.last_write = time.monotonic()
        await self.writer.drain()

    def last_words(self, code: int, reason: str) -> bytes | None:
        if code == errors.CLOSE_NORMAL:
            return None
        if self.json_lines:
            return json.dumps({"type": "close", "code": code, "reason": reason}).encode() + b"\n"
        if isinstance(self.codec, StompCodec):
            frame = self.codec.closing_frame(code, reason)
            return frame.encode("utf-8") if isinstance(frame, str) else frame
        return None

    async def close(self, code: int, reason: str) -> None:
        if self.done.is_set() or self.writer.is_closing():
            self.done.set()
            return
        last = self.last_words(code, reason)
        with contextlib.suppress(Exception):
            if last:
                self.writer.write(last)  # no drain: a slow reader may never take it
            self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_GRACE)
        except Exception:  # noqa: BLE001 - a peer that does not read, or a failed socket
            self.writer.transport.abort()
        finally:
            self.done.set()


class Gate:
    """Accepts TCP connections and serves each until it closes."""

    def __init__(self, *, heartbeat_ms: int | None = None) -> None:
        c = conf()
        self.heartbeat_ms = c.BROKER_STOMP_HEARTBEAT_MS if heartbeat_ms is None else heartbeat_ms
        self.max_frame = c.BROKER_MAX_MESSAGE_BYTES
        self.max_header = min(c.BROKER_MAX_HEADER_BYTES, c.BROKER_MAX_MESSAGE_BYTES)
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, ssl: ssl.SSLContext | None = None
                    ) -> asyncio.Server:
        # ``limit`` bounds one JSON line; STOMP reads are chunked and bounded by their parsers.
        # A TLS handshake comes before the accept is handed to ``handle``: it gets the auth
        # deadline of its own (asyncio's default is 60 s).
        deadline = conf().BROKER_AUTH_DEADLINE
        self.server = await asyncio.start_server(
            self.handle, host, port, ssl=ssl, limit=self.max_frame + 2,
            ssl_handshake_timeout=deadline if ssl is not None and deadline > 0 else None)
        return self.server

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, then close every connection with 1001 ``going-away`` once its
        outbox is written, and stop the hub (``broker.shutdown``, as under daphne)."""
        from broker.shutdown import graceful_shutdown

        if self.server is not None:
            self.server.close()
        await graceful_shutdown(grace)

    # ------------------------------------------------------------ one connection

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Admit at accept (an unauthenticated socket holds a place of BROKER_MAX_CONNECTIONS),
        then serve. The connection's auth deadline runs from here: reads before the login have
        no timeout of their own, the deadline closes the socket (``Connection._auth_expired``).
        A connection over capacity at accept gets only CLOSE_GRACE to send its CONNECT; it is
        then admitted if a place was freed meanwhile (a port probe's, say), else refused in
        its framing."""
        transport = TcpTransport(writer)
        transport.refusal = admission.admit(conf().BROKER_MAX_CONNECTIONS)
        transport.admitted = transport.refusal is None
        conn = Connection(transport, None,
                          auth_deadline=None if transport.admitted else CLOSE_GRACE)
        try:
            try:
                first = await reader.read(1)
            except (OSError, ssl.SSLError):
                first = b""
            if not first:
                return
            if first in b"CS\r\n":
                await self._stomp(reader, conn, first, cb=False)
            elif first in (b"\x00", b"\x01"):
                await self._stomp(reader, conn, first, cb=True)
            elif first == b"{":
                transport.json_lines = True
                await self._json_lines(reader, conn, first)
            else:
                writer.write(encode_frame(Frame("ERROR", {"message": errors.MALFORMED_FRAME},
                                                b"unknown framing")))
        except Exception:
            log.exception("tcp connection failed")
        finally:
            if transport.admitted:
                transport.admitted = False
                admission.release()
            self.connections.discard(conn)
            if not conn.closing:
                conn.close_soon(disconnect.EOF)
            # the close flushes what is queued; a peer that does not read is cut off
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(transport.done.wait(), CLOSE_GRACE * 3)
            if not transport.done.is_set():
                writer.transport.abort()
            await conn.closed()
            await transport.close(errors.CLOSE_NORMAL, "")

    async def _read(self, reader: asyncio.StreamReader, conn: Connection,
                    timeout: float | None) -> bytes:
        if timeout is None:
            return await reader.read(READ_CHUNK)
        try:
            return await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
        except TimeoutError:
            if conn.session is None:
                return b""
            conn.close_soon(disconnect.HEARTBEAT_TIMEOUT)
            return b""

    async def _open(self, conn: Connection, transport: TcpTransport, codec: Any,
                    creds: Credentials, resume_token: str | None = None) -> bool:
        """Authenticate; welcome, or refuse and close. The outcomes (and metrics) are the
        WebSocket consumer's; a connection not admitted at accept is refused without an auth
        request."""
        reason = transport.refusal
        if reason is not None:  # a place may have been freed since the accept
            reason = transport.refusal = admission.admit(conf().BROKER_MAX_CONNECTIONS)
            transport.admitted = reason is None
        if reason is not None:
            metrics.refused(reason)
        else:
            try:
                await conn.open(creds, resume_token)
            except Refused as exc:
                reason = exc.reason
                metrics.refused(exc.cause)
            except (AuthUnavailable, BrokerUnavailable) as exc:
                reason = errors.AUTH_UNAVAILABLE if isinstance(exc, AuthUnavailable) else \
                    errors.SERVICE_UNAVAILABLE
                metrics.refused(reason)
        if reason is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transport.write(codec.refused(reason)), CLOSE_GRACE)
            await transport.close(errors.CLOSE_NORMAL, reason)
            return False
        self.connections.add(conn)
        conn.welcome()  # the welcome, then what waited for it (broker.connection)
        if admission.shutting_down:  # authenticated while graceful_shutdown was closing
            conn.close_soon(disconnect.GOING_AWAY)
        return True

    async def _stomp(self, reader: asyncio.StreamReader, conn: Connection, first: bytes,
                     *, cb: bool) -> None:
        transport = conn.transport
        assert isinstance(transport, TcpTransport)
        framer: CBFramer | StompParser
        if cb:
            framer = CBFramer(max_frame_bytes=self.max_frame, max_header_bytes=self.max_header)
            codec = StompCodec(cb=True, framer=framer, max_header_bytes=self.max_header)
        else:
            framer = StompParser(max_frame_bytes=self.max_frame, max_header_bytes=self.max_header)
            codec = StompCodec(heartbeat_ms=self.heartbeat_ms, max_header_bytes=self.max_header)
        transport.codec = conn.codec = codec
        beats: asyncio.Task[None] | None = None
        data = first
        try:
            while True:
                error: StompFrameError | None = None
                try:
                    items: list[Any] = list(framer.feed(data))
                except StompFrameError as exc:
                    items, error = list(exc.frames), exc
                for item in items:
                    if item is HEARTBEAT:
                        continue
                    if conn.session is None:
                        if not await self._stomp_connect(conn, transport, codec, item):
                            return
                        if codec.heartbeat_out:
                            beats = asyncio.ensure_future(heartbeat.keep_alive(
                                conn, codec, transport, watch_reads=False))
                    else:
                        await conn.receive(codec.decode(item))
                    if conn.closing:
                        return
                if error is not None:
                    if conn.session is None:
                        await transport.write(codec.error_frame(errors.MALFORMED_FRAME,
                                                                str(error)))
                        await transport.close(errors.CLOSE_NORMAL, errors.MALFORMED_FRAME)
                    else:
                        await conn.receive(codec.malformed(str(error)))
                    return
                timeout = (heartbeat.silence_limit(codec.heartbeat_in) if codec.heartbeat_in
                           else None) if conn.session is not None else None
                data = await self._read(reader, conn, timeout)
                if not data or conn.closing:
                    return
        finally:
            if beats is not None:
                beats.cancel()

    async def _stomp_connect(self, conn: Connection, transport: TcpTransport, codec: StompCodec,
                             frame: Frame) -> bool:
        try:
            creds = codec.credentials(frame, transport.remote_addr)
        except StompFrameError as exc:
            await transport.write(codec.refused(str(exc)))
            await transport.close(errors.CLOSE_NORMAL, str(exc))
            return False
        return await self._open(conn, transport, codec, creds)

    async def _json_lines(self, reader: asyncio.StreamReader, conn: Connection,
                          first: bytes) -> None:
        transport = conn.transport
        assert isinstance(transport, TcpTransport)
        codec = JsonCodec(rich=True)
        transport.codec = conn.codec = codec
        line: bytes | None = first
        while True:
            try:
                rest = await reader.readline()  # before the login, the auth deadline bounds it
            except ValueError:  # a line over the limit
                if conn.session is None:
                    await transport.close(errors.CLOSE_TOO_BIG, "message too big")
                else:
                    conn.close_soon(disconnect.TOO_BIG)
                return
            line = (line or b"") + rest
            if not rest.endswith(b"\n"):
                return  # EOF (a last line without its newline is dropped)
            text = line.rstrip(b"\r\n")
            line = None
            if not text.strip():
                continue  # keep-alive
            try:
                decoded: str | None = text.decode("utf-8")
            except UnicodeDecodeError:
                decoded = None
            if conn.session is None:
                try:
                    msg = load_json(decoded) if decoded is not None else None
                except ValueError:
                    msg = None
                if not isinstance(msg, dict) or msg.get("type") != "connect":
                    await transport.write(codec.refused(errors.NOT_CONNECTED))
                    await transport.close(errors.CLOSE_NORMAL, errors.NOT_CONNECTED)
                    return
                creds = credentials_from_connect(msg, transport.remote_addr)
                resume = msg.get("resume")  # an earlier connection's resume_token
                if not await self._open(conn, transport, codec, creds,
                                        resume if isinstance(resume, str) else None):
                    return
                continue
            await conn.receive(codec.decode(decoded))
            if conn.closing:
                return


async def start_server(host: str, port: int, *, certfile: str | None = None,
                       keyfile: str | None = None, heartbeat_ms: int | None = None
                       ) -> tuple[Gate, asyncio.Server]:
    """Start a gate on the running loop (Django must be set up); it shares the loop's hub."""
    gate = Gate(heartbeat_ms=heartbeat_ms)
    server = await gate.start(host, port,
                              ssl=ssl_context(certfile, keyfile) if certfile else None)
    return gate, server
