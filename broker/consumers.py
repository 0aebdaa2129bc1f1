"""The WebSocket transport: a thin Channels consumer around ``broker.connection.Connection``.

It reads credentials from the handshake, picks the codec from the subprotocol, and moves text
frames in and out. It interprets nothing: every frame goes to the codec and the session.

The consumer deliberately has no channel-layer channel of its own (``channel_layer_alias`` names
no layer): the process's Hub receives from the layer once and fans out in memory, instead of one
layer channel and one receive task per connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from . import daphne_ext, disconnect, errors, heartbeat, logctx, metrics
from .auth import AuthUnavailable, Credentials, Refused
from .codecs.jsoncodec import RICH_SUBPROTOCOL, JsonCodec
from .codecs.stomp import CB_SUBPROTOCOL, STOMP_SUBPROTOCOLS, StompCodec
from .codecs.stompframe import StompFrameError
from .conf import conf
from .connection import Connection
from .errors import BrokerUnavailable
from .limits import admission, origin_allowed

log = logging.getLogger("broker.ws")

daphne_ext.patch()  # under daphne: close codes, backpressure, 503 refusals, SIGTERM, redacted log


def credentials_from_scope(scope: dict[str, Any]) -> Credentials:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        # UTF-8 text (a cookie set by another app may be "café"); any other byte survives as
        # an escape, so broker.auth.wire_value forwards exactly the bytes the client sent.
        value = raw_value.decode("utf-8", "surrogateescape")
        if name == "cookie" and name in headers:  # HTTP/2 may split cookies into several
            value = f"{headers[name]}; {value}"
        headers[name] = value
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    client = scope.get("client")

    def first(name: str) -> str | None:
        return (query.get(name) or [None])[0]

    # Static-key login (PROTOCOL §2.2) over WebSocket: ?app_key=&login_id=&profile_key=
    return Credentials(headers=headers, token=first("token"),
                       remote_addr=client[0] if client else None,
                       app_key=first("app_key"), login_id=first("login_id"),
                       profile_key=first("profile_key"))


def resume_token_from_scope(scope: dict[str, Any]) -> str | None:
    """``?resume=<token>`` (also ``?resume_token=``): an earlier connection's resume token."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("resume") or query.get("resume_token") or [None])[0]


async def _finish(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Drive a coroutine that ``write_now`` stepped once to its end, as a Task would: wait for
    what it waits on, then resume it (an awaited future's result or error reaches it on
    resume). Cancelled: the coroutine is closed (its ``finally`` blocks run)."""
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)  # a bare yield
            else:
                await asyncio.wait([waiting_on])
        except asyncio.CancelledError:
            coro.close()
            raise
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return


class BrokerConsumer(AsyncWebsocketConsumer):
    channel_layer_alias = "__combroker_no_layer__"

    name = "websocket"
    admitted = False  # counted in limits.admission; released exactly once, when the app ends
    flow: daphne_ext.WriteFlow | None = None
    beats: asyncio.Task[None] | None = None  # STOMP heart-beats (broker.heartbeat)
    last_write = last_read = 0.0  # heartbeat.Link
    _sending: asyncio.Future[None] | None = None  # a write that suspended (write_now)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.admitted:
                self.admitted = False
                admission.release()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' dispatch first closes stale Django database connections, in a thread, for
        # every message; the broker uses no database, and a thread hop per frame is costly.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        c = conf()
        # Refused before the WebSocket opens, so refusing costs no auth request: HTTP 503
        # over BROKER_MAX_CONNECTIONS or while shutting down.
        refusal = admission.admit(c.BROKER_MAX_CONNECTIONS)
        if refusal is not None:
            metrics.refused(refusal)
            log.warning("handshake refused: %s", refusal)
            await self._deny(503, refusal)
            return
        self.admitted = True
        extensions = self.scope.get("extensions") or {}
        self.flow = extensions.get(daphne_ext.FLOW_EXTENSION)
        offered = self.scope.get("subprotocols") or []
        stomp = next((p for p in STOMP_SUBPROTOCOLS if p in offered), None)
        rich = RICH_SUBPROTOCOL in offered and stomp is None
        # Standard STOMP offers heart-beats as the TCP gate does; the Communication Broker's
        # JS client (the ``stomp`` subprotocol) has none.
        cb = stomp == CB_SUBPROTOCOL
        self.codec: JsonCodec | StompCodec = (
            StompCodec(cb=cb, text=True,
                       heartbeat_ms=0 if cb else c.BROKER_STOMP_HEARTBEAT_MS)
            if stomp else JsonCodec(rich=rich))
        self.explicit_refusal = rich or stomp is not None  # a refusal frame, then 4003
        self.awaiting_connect = stomp is not None
        self.conn = Connection(self, self.codec)
        logctx.conn_id.set(self.conn.id)
        client = self.scope.get("client")
        self.remote_addr = client[0] if client else None
        # Accept first, then authenticate: a slow or failing auth API then gives a close code
        # the client can read, never an HTTP 500 during the handshake.
        await self.accept(stomp or (RICH_SUBPROTOCOL if rich else None))
        origin = next((v.decode("latin-1") for k, v in self.scope.get("headers", [])
                       if k.lower() == b"origin"), None)
        if not origin_allowed(origin, c.BROKER_ALLOWED_ORIGINS):
            # PROTOCOL §3: 1008; nothing else is sent and the auth API is not asked.
            metrics.refused(errors.ORIGIN_NOT_ALLOWED)
            log.warning("origin %r not in BROKER_ALLOWED_ORIGINS", (origin or "")[:200])
            self.awaiting_connect = False
            await self.close(errors.CLOSE_ORIGIN, errors.ORIGIN_NOT_ALLOWED)
            return
        if stomp is None:
            await self._open(credentials_from_scope(self.scope))
        # else: STOMP credentials come in the CONNECT frame, the first message

    async def _stomp_connect(self, data: str | bytes) -> None:
        assert isinstance(self.codec, StompCodec)
        try:
            creds = self.codec.credentials(data, self.remote_addr)
        except StompFrameError as exc:
            metrics.refused(errors.REFUSED)
            await self.send(text_data=self.codec.refused(str(exc)))
            await self.close(errors.CLOSE_REFUSED)
            return
        await self._open(creds)

    async def _open(self, creds: Credentials) -> None:
        rich = self.explicit_refusal
        try:
            await self.conn.open(creds, resume_token_from_scope(self.scope))
        except Refused as exc:
            metrics.refused(exc.cause)
            await self.send(text_data=self.codec.refused(exc.reason))
            code = exc.close_code(rich)
            # a reason with the codes that have their own (4408), none with 4003/1000 (§3)
            await self.close(code, exc.reason if code == errors.CLOSE_AUTH_TIMEOUT else None)
            return
        except (AuthUnavailable, BrokerUnavailable) as exc:
            reason = errors.AUTH_UNAVAILABLE if isinstance(exc, AuthUnavailable) else \
                errors.SERVICE_UNAVAILABLE
            metrics.refused(reason)
            if rich:
                await self.send(text_data=self.codec.refused(reason))
            await self.close(errors.CLOSE_AUTH_UNAVAILABLE, reason)
            return
        self.conn.welcome()  # the welcome, then what waited for it (broker.connection)
        if isinstance(self.codec, StompCodec):
            self.last_write = self.last_read = time.monotonic()
            self.beats = asyncio.ensure_future(
                heartbeat.keep_alive(self.conn, self.codec, self, watch_reads=True))
        if admission.shutting_down:  # authenticated while graceful_shutdown was closing
            self.conn.close_soon(disconnect.GOING_AWAY)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        self.last_read = time.monotonic()
        if self.conn.session is None:
            if self.awaiting_connect and not self.conn.closing:  # closing: the deadline passed
                self.awaiting_connect = False
                await self._stomp_connect(message.get("text") or message.get("bytes") or b"")
            return  # refused or closing: nothing may be asked any more
        text, data = message.get("text"), message.get("bytes")
        size = len(text.encode()) if text is not None else len(data or b"")
        if size > conf().BROKER_MAX_MESSAGE_BYTES:
            self.conn.close_soon(disconnect.TOO_BIG)
            return
        # STOMP frames may come as binary messages; to the JSON codec those are non-JSON
        stomp_bytes = text is None and isinstance(self.codec, StompCodec)
        await self.conn.receive(self.codec.decode(data if stomp_bytes else text))

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        if self.beats is not None:
            self.beats.cancel()
        conn = getattr(self, "conn", None)  # none when the handshake was refused
        if conn is not None:
            await conn.closed()
        raise StopConsumer()

    async def _deny(self, status: int, reason: str) -> None:
        """Refuse the handshake: HTTP ``status`` where the server has the ASGI
        ``websocket.http.response`` extension (uvicorn; daphne through broker.daphne_ext),
        else the plain close before the accept, which servers answer with 403."""
        if daphne_ext.DENIAL_EXTENSION in (self.scope.get("extensions") or {}):
            await self.base_send({"type": "websocket.http.response.start", "status": status,
                                  "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await self.base_send({"type": "websocket.http.response.body",
                                  "body": reason.encode()})
        else:
            await self.close()

    # ---- broker.connection.Transport

    def write_now(self, frame: str | bytes) -> bool:
        """Hand ``frame`` to the ASGI server without a task (broker.outbox.Writer).

        The ASGI ``send`` is a coroutine, but under uvicorn and daphne it almost always
        completes without suspending. So it is stepped once, here, by hand: if it finished, the
        frame is written and no task was made (one task per delivery was a quarter of the CPU
        of a broadcast, docs/performance.md). Only a send that suspends (backpressure) goes on
        in a task, which ``writable`` awaits."""
        send = self.write(frame)
        try:
            waiting_on = send.send(None)
        except StopIteration:
            return True
        except BaseException:
            send.close()
            raise
        self._sending = asyncio.ensure_future(_finish(send, waiting_on))
        return False

    async def writable(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            await sending

    async def write(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.send(bytes_data=frame)
        else:
            await self.send(text_data=frame)
        self.last_write = time.monotonic()
        # Backpressure: uvicorn's send already waits while its buffer is full; under daphne
        # the flow says so. Either way the next frame waits in the bounded outbox.
        if self.flow is not None:
            await self.flow.wait()
