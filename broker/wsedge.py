"""The WebSocket edge: the broker's WebSocket endpoint served on the asyncio protocol itself.

uvicorn hands each WebSocket upgrade to its ``--ws`` protocol class. With
``--ws broker.wsedge:WebSocketEdge`` (the production command, ``runbroker``), an upgrade to the
broker's path (``/ws``, ``/ws/``) is served here: websockets' sans-I/O ``ServerProtocol`` reads
the handshake and the frames, this class writes bytes to the transport, and the serve loop
(``broker.serve``) drives the session, as it does for the TCP gate. There is no ASGI between:
no scope copied per router, no receive queue and no task per connection beyond the serve loop's
own, no message dict per frame. An upgrade to any other path is handed, with its bytes, to
uvicorn's own implementation (websockets-sansio), so the ASGI application sees it as before.

What it keeps of uvicorn's: its settings (``--ws-max-size``, ``--ws-ping-interval`` and
``--ws-ping-timeout``, ``--ws-per-message-deflate``, ``--proxy-headers`` with
``--forwarded-allow-ips``), its default headers, its connection set (its graceful shutdown
closes what is left with 1012) and its task set.

Outbound, a frame with nothing ahead of it is written at once (``write_now``); a text frame is
framed once and the same bytes are written to every connection that gets the same text in a
row (``_wire``: a broadcast to subscribers with the same request id), unless the connection
compresses (permessage-deflate: each connection's compressor has its own state). Keepalive is
one sweep per event loop (``Keepalive``), not a timer per connection: a connection silent for
the ping interval is pinged, and one that stays silent for the ping timeout more is failed
with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import weakref
from collections import deque
from typing import Any, Final, cast
from urllib.parse import unquote

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from . import serve
from .conf import conf
from .handshake import Scope
from .wsframing import websocket_framing

log = logging.getLogger("broker.wsedge")
# websockets' own lines: at DEBUG it logs every frame, the handshake's credentials included, and
# at INFO a line per connection opened and closed. Neither is the broker's to log: warnings up.
_protocol_log = logging.getLogger("broker.wsedge.protocol")
_protocol_log.setLevel(logging.WARNING)

# The paths the edge serves (broker.routing's ``^ws/?$``); any other goes to uvicorn's own.
PATHS: Final = frozenset({"/ws", "/ws/"})
WRITE_HIGH_WATER: Final = 65_536  # bytes buffered per connection before the outbox waits
INBOX_HIGH_WATER: Final = 16  # messages read ahead of the serve loop before reading pauses
CLOSE_TIMEOUT: Final = 10.0  # seconds for the client's close frame after ours (uvicorn's)
_NO_SCOPE: Final[Scope] = {}
Payload = bytes | bytearray | memoryview  # a frame's data, as websockets gives it


def _ws_protocol_class() -> Any:
    """uvicorn's own implementation, for the paths that are not the broker's."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return WebSocketsSansIOProtocol


_last: tuple[str, bytes] = ("", b"")


def _wire(text: str) -> bytes:
    """The unmasked, uncompressed WebSocket text frame of ``text``, framed once for a run of
    connections that get the same text (RFC 6455 §5.2; a server never masks)."""
    global _last
    if _last[0] == text:
        return _last[1]
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 65_536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    wire = head + payload
    _last = (text, wire)
    return wire


class Keepalive:
    """One sweep per event loop over its open connections: ping those silent for
    ``interval`` seconds, fail those silent ``timeout`` seconds more (1011)."""

    _running: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Keepalive] = (
        weakref.WeakKeyDictionary())

    def __init__(self, interval: float, timeout: float | None) -> None:
        self.interval = interval
        self.timeout = timeout
        self.edges: set[WebSocketEdge] = set()
        self.task = asyncio.ensure_future(self._sweep())

    @classmethod
    def join(cls, edge: WebSocketEdge, interval: float | None, timeout: float | None) -> None:
        if not interval or interval <= 0:
            return
        loop = asyncio.get_running_loop()
        keepalive = cls._running.get(loop)
        if keepalive is None or keepalive.task.done():
            keepalive = cls._running[loop] = cls(interval, timeout)
        keepalive.edges.add(edge)

    @classmethod
    def leave(cls, edge: WebSocketEdge) -> None:
        with contextlib.suppress(RuntimeError):
            keepalive = cls._running.get(asyncio.get_running_loop())
            if keepalive is not None:
                keepalive.edges.discard(edge)

    async def _sweep(self) -> None:
        period = min(self.interval, self.timeout or self.interval) / 4
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for edge in list(self.edges):
                if edge.pinged_at is None:  # reset by anything the client sends
                    if now - edge.last_read >= self.interval:
                        edge.ping(now)
                elif self.timeout is not None and now - edge.pinged_at >= self.timeout:
                    edge.fail(1011, "keepalive ping timeout")


class WebSocketEdge(asyncio.Protocol):
    """One WebSocket connection on uvicorn's transport: the asyncio protocol, and the
    ``serve.Transport`` the serve loop drives (see the module's docstring)."""

    __slots__ = (
        "config", "server_state", "app_state", "transport", "conn", "scope", "remote_addr",
        "last_read", "last_write", "pinged_at", "compressed", "closed", "gone", "_inbox",
        "_reader", "_fragments", "_text", "_paused", "_writable", "_lost", "_close_timer",
        "_response",
    )

    name = "websocket"
    close_codes = True
    over_capacity_grace = None  # over capacity: HTTP 503 before the accept

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport | None = None
        self.conn: ServerProtocol | None = None
        self.scope: Scope = {}
        self.remote_addr: str | None = None
        self.last_read = self.last_write = time.monotonic()
        self.pinged_at: float | None = None
        self.compressed = False
        self.closed = False  # our close frame was sent (or the handshake refused)
        self.gone = False  # the socket is gone
        self._inbox: deque[str | bytes | None] | None = None  # messages not yet received
        self._reader: asyncio.Future[str | bytes | None] | None = None  # receive() waiting
        self._fragments: list[Payload] | None = None  # a fragmented message so far
        self._text = False  # the fragmented message is text
        self._paused = False  # reading paused: the inbox is full
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self._lost: asyncio.Future[None] | None = None  # wait_closed() waiting
        self._close_timer: asyncio.TimerHandle | None = None
        self._response: Response | None = None  # the accept, sent by start()

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:  # the upgrade request, whole, as uvicorn re-serialized it
            self._upgrade(data)
            return
        self.last_read = time.monotonic()
        self.pinged_at = None  # anything the client sends answers a ping
        conn.receive_data(data)
        for event in conn.events_received():
            if isinstance(event, Frame):
                self._frame(event)
        self._flush()
        if conn.parser_exc is not None:
            self._end_input()

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            self.conn.receive_eof()
            self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.server_state.connections.discard(self)
        Keepalive.leave(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._end_input()
        for waiter in (self._writable, self._lost):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, for what the broker's own left open: 1012."""
        if self.conn is not None and self.conn.state is State.OPEN and not self.closed:
            self.fail(1012, "")
        elif self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ the handshake

    def _upgrade(self, head: bytes) -> None:
        """The upgrade request: to the broker's path, answered here (the accept waits for
        ``start``; a request that is not a valid handshake gets its 4xx). To any other, handed
        with its bytes to uvicorn's own implementation, and this object is done.

        The request is read here, once, and the frames by a protocol that starts OPEN: one
        that read the handshake itself would keep the request, headers and all, in its parser
        for as long as the connection lives (2 KiB each)."""
        transport = self.transport
        assert transport is not None
        line = head.split(b" ", 2)
        path = unquote(line[1].partition(b"?")[0].decode("latin-1")) if len(line) > 2 else ""
        if path not in PATHS:
            other = _ws_protocol_class()(config=self.config, server_state=self.server_state,
                                         app_state=self.app_state)
            other.connection_made(transport)
            transport.set_protocol(other)
            other.data_received(head)
            return
        c = self.config
        extensions = [ServerPerMessageDeflateFactory(
            server_max_window_bits=12, client_max_window_bits=12,
            compress_settings={"memLevel": 5})] if c.ws_per_message_deflate else None
        conn = self.conn = ServerProtocol(extensions=extensions, max_size=c.ws_max_size,
                                          logger=_protocol_log, state=State.OPEN)
        self.server_state.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        try:
            request = _request(head)
        except Exception as exc:  # noqa: BLE001 - whatever the parser makes of bad input
            response = conn.reject(400, f"Failed to open a WebSocket connection: {exc}.\n")
        else:
            response = conn.accept(request)  # negotiates the extensions, checks the upgrade
        if response.status_code != 101:  # not a valid WebSocket handshake: its 4xx, closed
            self.closed = True
            transport.write(response.serialize())
            transport.close()
            return
        raw_path, _, query = request.path.partition("?")
        subprotocols: list[str] = []
        for header in request.headers.get_all("Sec-WebSocket-Protocol"):
            subprotocols.extend(token.strip() for token in header.split(","))
        # What broker.handshake reads, as uvicorn's scope gives it: the header values are the
        # bytes the client sent (websockets 17 decodes them as ISO-8859-1).
        peer = transport.get_extra_info("peername")
        self.scope = {
            "type": "websocket", "path": unquote(raw_path), "query_string": query.encode(),
            "headers": [(name.lower().encode("ascii"), value.encode("latin-1"))
                        for name, value in request.headers.raw_items()],
            "client": (peer[0], peer[1]) if isinstance(peer, tuple) else None,
            "subprotocols": subprotocols,
            # as uvicorn's: the proxy headers may make it "wss" (broker.handshake.secure_scope)
            "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
        }
        self._response = response
        task = asyncio.ensure_future(self._serve())  # held by uvicorn's task set, as its own
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _serve(self) -> None:
        try:
            if self.config.proxy_headers:
                await _proxied(self.scope, self.config.forwarded_allow_ips)
            client = self.scope.get("client")
            self.remote_addr = client[0] if client else None
            await serve.serve(self, max_connections=conf().BROKER_MAX_CONNECTIONS)
        except Exception:  # noqa: BLE001 - a bug: this connection ends, no other
            log.exception("WebSocket connection failed")
        finally:
            if self.transport is not None and not self.closed:
                self.transport.close()

    # ------------------------------------------------------------ serve.Transport: framing

    async def deny(self, reason: str) -> None:
        """Refuse the handshake with HTTP 503 and ``reason`` (as uvicorn and daphne do)."""
        conn = self.conn
        assert conn is not None
        self.closed = True
        if self.transport is not None:
            self.transport.write(conn.reject(503, reason).serialize())
            self.transport.close()

    async def start(self) -> serve.Framing:
        """Choose the codec by subprotocol, then accept (``broker.wsframing``)."""
        conn, response = self.conn, self._response
        assert conn is not None and response is not None
        framing, subprotocol = websocket_framing(self.scope, conf())
        self.scope, self._response = _NO_SCOPE, None  # nothing more is read of the handshake
        del response.headers["Date"]
        for name, value in self.server_state.default_headers:
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        if subprotocol:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        if framing.set_cookie is not None:  # the resume cookie (BROKER_RESUME_COOKIE)
            response.headers["Set-Cookie"] = framing.set_cookie
        if self.transport is not None:
            self.transport.write(response.serialize())
        self.compressed = bool(conn.extensions)
        Keepalive.join(self, self.config.ws_ping_interval, self.config.ws_ping_timeout)
        return framing

    async def receive(self) -> serve.Inbound:
        inbox = self._inbox
        if inbox:
            message = inbox.popleft()
            if not inbox:
                self._inbox = None  # an idle connection holds none
            if self._paused and len(inbox) < INBOX_HIGH_WATER // 2 and self.transport:
                self._paused = False
                self.transport.resume_reading()
            return message
        if self.gone:
            return None
        self._reader = asyncio.get_running_loop().create_future()
        try:
            return await self._reader
        finally:
            self._reader = None

    async def wait_closed(self) -> None:
        """Until the socket is gone (what the client still sends is dropped)."""
        if not self.gone:
            self._lost = asyncio.get_running_loop().create_future()
            await self._lost

    # ------------------------------------------------------------ broker.connection.Transport

    def write_now(self, frame: str | bytes) -> bool:
        """Hand ``frame`` to the transport; False once its buffer is over the high-water mark
        (``writable`` then waits). Raises for a connection that is closing or gone."""
        conn, transport = self.conn, self.transport
        if self.gone or self.closed or conn is None or conn.state is not State.OPEN \
                or transport is None:
            raise ConnectionResetError("connection closed")
        if isinstance(frame, str):
            if self.compressed:
                conn.send_text(frame.encode())
                self._flush()
            else:
                transport.write(_wire(frame))
        else:
            conn.send_binary(frame)
            self._flush()
        self.last_write = time.monotonic()
        return self._writable is None or self._writable.done()

    async def writable(self) -> None:
        if self.gone:
            raise ConnectionResetError("connection lost")
        waiter = self._writable
        if waiter is not None:
            await waiter

    async def write(self, frame: str | bytes) -> None:
        """An awaited write (a refusal): handed over as the outbox does, then drained."""
        if not self.write_now(frame):
            await self.writable()

    async def close(self, code: int, reason: str) -> None:
        if self.closed or self.gone or self.conn is None or self.conn.state is not State.OPEN:
            return
        self.closed = True
        self.conn.send_close(code, reason)
        self._flush()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()  # the client's close frame must be read
        transport = self.transport
        if transport is not None:
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, transport.close)

    # ------------------------------------------------------------ keepalive (Keepalive)

    def ping(self, now: float) -> None:
        conn = self.conn
        if conn is None or conn.state is not State.OPEN or self.closed:
            return
        self.pinged_at = now
        conn.send_ping(struct.pack("!d", now))
        self._flush()

    def fail(self, code: int, reason: str) -> None:
        """Close at once with ``code``: nothing more is read or written."""
        conn, transport = self.conn, self.transport
        self.closed = True
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.fail(code, reason)
            self._flush()
        if transport is not None:
            transport.close()

    # ------------------------------------------------------------ inbound

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments, self._text = [frame.data], opcode is Opcode.TEXT
                return
            self._message(frame.data, opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:
                return  # the protocol has failed the connection already
            fragments.append(frame.data)
            if frame.fin:
                self._fragments = None
                self._message(b"".join(fragments), self._text)
        elif opcode is Opcode.CLOSE:
            self._end_input()
            if self._close_timer is not None:  # the client answered our close: done
                self._close_timer.cancel()
                self._close_timer = None
        # pings are answered by the protocol (_flush writes the pong); pongs need nothing:
        # any frame read already counted as an answer (data_received)

    def _message(self, data: Payload, text: bool) -> None:
        if self.closed:
            return  # after our close frame: read, and dropped, until the client's
        if text:
            try:
                message: str | bytes = str(data, "utf-8")
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8")
                return
        else:
            message = bytes(data)
        self._hand_in(message)

    def _end_input(self) -> None:
        """No message follows: the serve loop's next receive returns None."""
        if self._inbox is None or not self._inbox or self._inbox[-1] is not None:
            self._hand_in(None)

    def _hand_in(self, message: str | bytes | None) -> None:
        reader = self._reader
        if reader is not None and not reader.done() and not self._inbox:
            reader.set_result(message)
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(message)
        if len(inbox) >= INBOX_HIGH_WATER and not self._paused and not self.gone \
                and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _flush(self) -> None:
        """Write what the protocol has to send; its end-of-stream mark closes the socket."""
        conn, transport = self.conn, self.transport
        if conn is None or transport is None:
            return
        for data in conn.data_to_send():
            if data:
                transport.write(data)
            elif not transport.is_closing():
                transport.close()


def _request(head: bytes) -> Request:
    """The handshake request in ``head`` (websockets' parser; its errors for bad input)."""
    reader = StreamReader()
    reader.feed_data(head)
    reader.feed_eof()
    parser = Request.parse(reader.read_line)
    try:
        while True:
            next(parser)
    except StopIteration as done:
        request: Request = done.value
        return request


# uvicorn's proxy headers middleware, by the trusted hosts it was made for: made once, not at
# every handshake (it parses the trusted addresses and networks when it is made).
_proxy_headers: dict[Any, Any] = {}


async def _proxied(scope: Scope, trusted: Any) -> None:
    """uvicorn's ``--proxy-headers``: a trusted proxy's ``X-Forwarded-For`` names the client
    (uvicorn's own middleware rewrites ``scope``)."""
    key = tuple(trusted) if isinstance(trusted, list) else trusted
    middleware = _proxy_headers.get(key)
    if middleware is None:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        middleware = _proxy_headers[key] = ProxyHeadersMiddleware(_keep, trusted_hosts=trusted)
    await middleware(cast(Any, scope), _nothing, _nothing)


async def _keep(scope: Any, receive: Any, send: Any) -> None:
    return None


async def _nothing(*args: Any) -> Any:
    raise RuntimeError("not used")
