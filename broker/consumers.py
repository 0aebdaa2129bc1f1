"""The WebSocket transport: an ASGI adapter for the serve loop (``broker.serve``), framing only.

It answers the handshake (HTTP 503 when refused at once: over capacity, shutting down; else
the accept with the subprotocol that chose the codec: ``broker.wsframing``), hands each message
in, writes, closes. ``broker.eagersend`` steps each ASGI send once, by hand.

A plain ASGI application, not a Channels consumer: no channel-layer channel (the process's hub
receives from the layer once and fans out in memory), and no task nor stale-database-connection
cleanup per message (it reads the ASGI ``receive`` itself).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import daphne_ext, serve
from .conf import conf
from .eagersend import EagerSend
from .handshake import Scope
from .wsframing import websocket_framing

daphne_ext.patch()  # under daphne: close codes, backpressure, 503 refusals, SIGTERM, redacted log

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BrokerConsumer:
    """One WebSocket connection: ``serve.Transport`` over ASGI ``receive``/``send``."""

    __slots__ = ("scope", "_receive", "_send", "remote_addr", "flow", "last_write", "last_read",
                 "gone", "closed", "_sending")

    name = "websocket"
    close_codes = True
    over_capacity_grace = None  # over capacity: HTTP 503 before the accept

    @classmethod
    def as_asgi(cls) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI application for a route (``broker.routing``), as Channels' consumers."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await cls(scope, receive, send).run()

        return app

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        client = scope.get("client")
        self.remote_addr: str | None = client[0] if client else None
        extensions = scope.get("extensions") or {}
        # Backpressure under daphne (uvicorn's send already waits while its buffer is full).
        self.flow: daphne_ext.WriteFlow | None = extensions.get(daphne_ext.FLOW_EXTENSION)
        self.last_write = self.last_read = 0.0  # heartbeat.Link
        self.gone = False  # websocket.disconnect received
        self.closed = False  # websocket.close sent
        self._sending = EagerSend()  # write_now: the ASGI send stepped once, by hand

    async def run(self) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise ValueError(f"expected websocket.connect, got {message['type']!r}")
        await serve.serve(self, max_connections=conf().BROKER_MAX_CONNECTIONS)

    # ---- serve.Transport: the framing

    async def deny(self, reason: str) -> None:
        """Refuse the handshake: HTTP 503 where the server has the ASGI
        ``websocket.http.response`` extension (uvicorn; daphne through broker.daphne_ext),
        else the plain close before the accept, which servers answer with 403."""
        if daphne_ext.DENIAL_EXTENSION in (self.scope.get("extensions") or {}):
            await self._send({"type": "websocket.http.response.start", "status": 503,
                              "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await self._send({"type": "websocket.http.response.body", "body": reason.encode()})
        else:
            await self._send({"type": "websocket.close"})
        await self.wait_closed()

    async def start(self) -> serve.Framing:
        """Choose the codec by subprotocol, then accept: a slow or failing auth API then gives
        a close code the client can read, never an HTTP 500 during the handshake."""
        framing, subprotocol = websocket_framing(self.scope, conf())
        accept: Message = {"type": "websocket.accept", "subprotocol": subprotocol}
        if framing.set_cookie is not None:  # the resume cookie (BROKER_RESUME_COOKIE)
            accept["headers"] = [(b"set-cookie", framing.set_cookie.encode("latin-1"))]
        await self._send(accept)
        return framing

    async def receive(self) -> serve.Inbound:
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                self.last_read = time.monotonic()
                text = message.get("text")
                return text if text is not None else (message.get("bytes") or b"")
            if kind == "websocket.disconnect":
                self.gone = True
                return None

    async def wait_closed(self) -> None:
        """Read (and drop) what the client still sends until the socket is gone."""
        while not self.gone:
            await self.receive()

    # ---- broker.connection.Transport

    def write_now(self, frame: str | bytes) -> bool:
        """Hand ``frame`` to the ASGI server without a task (broker.outbox.Writer): its send
        stepped once, finished in a task only if it suspends (``broker.eagersend``)."""
        return self._sending.step(self.write(frame))

    async def writable(self) -> None:
        await self._sending.wait()

    async def write(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            await self._send({"type": "websocket.send", "text": frame})
        else:
            await self._send({"type": "websocket.send", "bytes": frame})
        self.last_write = time.monotonic()
        # Backpressure: uvicorn's send already waits while its buffer is full; under daphne
        # the flow says so. Either way the next frame waits in the bounded outbox.
        if self.flow is not None:
            await self.flow.wait()

    async def close(self, code: int, reason: str) -> None:
        if self.closed or self.gone:
            return
        self.closed = True
        message: Message = {"type": "websocket.close", "code": code}
        if reason:
            message["reason"] = reason
        await self._send(message)
