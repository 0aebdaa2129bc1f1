"""The TCP gate's server: it accepts TCP (or TLS) connections and serves each with
``broker.serve`` through a ``tcpgate.transport.TcpTransport``.

``start_server`` starts one on the running loop (``runtcpgate``, ``runbroker``'s gate), sharing
the loop's hub; ``ssl_context`` is its TLS (1.2 at least). ``Gate`` reads the size bounds from
the settings, bounds a JSON line by the stream reader's limit, gives a TLS handshake the auth
deadline, and stops with ``broker.shutdown`` (``Gate.shutdown``). The framings, the first byte
that chooses one and the outbound bound are ``tcpgate.transport``'s.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from broker import serve
from broker.conf import conf
from tcpgate.transport import TcpTransport

log = logging.getLogger("tcpgate")


def ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class Gate:
    """Accepts TCP connections and serves each until it closes."""

    def __init__(self, *, heartbeat_ms: int | None = None) -> None:
        c = conf()
        self.heartbeat_ms = c.BROKER_STOMP_HEARTBEAT_MS if heartbeat_ms is None else heartbeat_ms
        self.max_frame = c.BROKER_MAX_MESSAGE_BYTES
        self.max_header = min(c.BROKER_MAX_HEADER_BYTES, c.BROKER_MAX_MESSAGE_BYTES)
        self.max_connections = c.BROKER_MAX_CONNECTIONS
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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection (``broker.serve``). It is admitted at the accept (an
        unauthenticated socket holds a place of BROKER_MAX_CONNECTIONS); reads before the
        login have no timeout of their own, the auth deadline closes the socket. One over
        capacity gets only CLOSE_GRACE to send its credentials."""
        transport = TcpTransport(reader, writer, heartbeat_ms=self.heartbeat_ms,
                                 max_frame=self.max_frame, max_header=self.max_header)
        try:
            await serve.serve(transport, max_connections=self.max_connections)
        except Exception:
            log.exception("tcp connection failed")
            writer.transport.abort()


async def start_server(host: str, port: int, *, certfile: str | None = None,
                       keyfile: str | None = None, heartbeat_ms: int | None = None
                       ) -> tuple[Gate, asyncio.Server]:
    """Start a gate on the running loop (Django must be set up); it shares the loop's hub."""
    gate = Gate(heartbeat_ms=heartbeat_ms)
    server = await gate.start(host, port,
                              ssl=ssl_context(certfile, keyfile) if certfile else None)
    return gate, server
