"""A lean HTTP/1.1 client: kept-alive connections to one origin (the auth API's).

Made for a connect storm (docs/performance.md, B3): a request is one write of the bytes the
caller's headers are, its answer parsed as it arrives by httptools (llhttp, in C: the production
server's parser already), each body chunk handed to the caller's ``Body`` as it comes; an idle
connection is taken from a list, with no socket poll per request (a connection the server
closes is dropped when the event loop reports it) and no task per request.

Nothing is added to the caller's headers but ``Host`` and the caller's own defaults: no
User-Agent, no decompression (the ``Body`` decodes), no redirect followed (a 3xx is an answer
like any other). A connection is reused only after a whole answer that lets it be
(``Connection: close``, HTTP/1.0 and a body read to the end of the stream do not); a refusal's
body is not waited for: its head is the answer, and its connection is closed unless the body came
with it. A GET that finds its reused connection closed by the server before any byte of an answer
(the server's keep-alive timeout, a restart) is sent once more on a new connection: a GET is
safe to repeat.

A POST (``post``: a body with its Content-Length, written with the head in one write) is not
safe to repeat: once any byte of it is written, the server may have read and acted on it
whatever comes back, and a close before the answer does not tell a server that timed the
connection out from one that acted and then died. So a POST is sent again on a new connection
only when nothing of it was written: its reused connection was already known closed (the event
loop had reported the close, or the transport was closing) before the write. Any later failure
(a close before the whole answer, a reset) is the caller's HttpError or OSError, and the
caller's own retry policy decides (broker.webhooks: retried, so a receiver may see a request
twice when its answer was lost).

The pool does not bound its connections: its caller does (broker.auth's semaphore, one
connection per request in flight). A connection idle for KEEP_ALIVE seconds is closed instead of
reused. An answer's head is read up to MAX_HEAD_BYTES (the caller's Body bounds the body).
One pool per event loop.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Protocol, cast
from urllib.parse import quote, urlsplit

import httptools


# Seconds a connection may stay idle in the pool before it is closed rather than reused
# (httpx's default too): servers close theirs after a few seconds (gunicorn 2, Node 5), and a
# request sent as they do must be sent again.
KEEP_ALIVE = 5.0
# Bytes of an answer's head (status line and headers, 1xx heads included) read at most.
MAX_HEAD_BYTES = 65_536


class HttpError(Exception):
    """The server broke HTTP: not HTTP, truncated, or closed before its answer was whole."""


class _Stale(HttpError):
    """A reused connection the server had closed: the request may be sent again."""


class Body(Protocol):
    """Where a wanted answer's body goes, a chunk at a time; either may raise, and the answer
    is then that exception (the connection is closed)."""

    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> bytes: ...


# (status, Content-Encoding) -> the Body to read the answer's body into, or None: the head is
# the answer, the body is not read.
BodyFor = Callable[[int, bytes], Body | None]


class HttpPool:
    """Kept-alive HTTP/1.1 connections to the origin of one URL, asked with GET or POST."""

    def __init__(self, url: str, defaults: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """``defaults``: headers every request carries unless its own headers name them.
        Raises ValueError for a URL this client cannot ask (not http(s), no host, a user:pass@)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # (the URL itself is not said: it may hold a password)
            raise ValueError(f"not an http:// or https:// URL with a host "
                             f"(scheme {parts.scheme[:20]!r})")
        if "@" in parts.netloc:
            raise ValueError("user:password@ in the URL is not supported")
        self.host = parts.hostname
        tls = parts.scheme == "https"
        self.port = parts.port or (443 if tls else 80)  # (.port raises ValueError if invalid)
        host = self.host.encode("idna")
        if b":" in host:  # an IPv6 address
            host = b"[" + host + b"]"
        if parts.port is not None:
            host += b":%d" % parts.port
        target = quote(parts.path or "/", safe="!$%&'()*+,/:;=@~")
        if parts.query:
            target += "?" + quote(parts.query, safe="!$%&'()*+,/:;=?@~")
        self._target = target.encode("ascii")
        self._request_line = b"GET %s HTTP/1.1\r\n" % self._target
        self._defaults = [(b"host", b"Host", host),
                          *((name.lower(), name, value) for name, value in defaults)]
        self._ssl = ssl.create_default_context() if tls else None
        self._idle: list[_Connection] = []

    def head(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The request: ``headers`` as they are (names and values are the caller's bytes,
        already valid), then each default they do not name."""
        return self._head(self._request_line, headers)

    def _head(self, request_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        lines = [request_line]
        named = set()
        for name, value in headers:
            named.add(name.lower())
            lines.append(b"%s: %s\r\n" % (name, value))
        for lower, name, value in self._defaults:
            if lower not in named:
                lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"\r\n")
        return b"".join(lines)

    async def get(self, head: bytes, body_for: BodyFor) -> tuple[int, bytes]:
        """Send ``head`` (``head()``) and return the answer's status and body (b"" when
        ``body_for`` wanted none). Raises HttpError, OSError, or what the Body raised."""
        return await self._send(head, body_for, repeatable=True)

    async def post(self, headers: Iterable[tuple[bytes, bytes]], body: bytes,
                   body_for: BodyFor) -> tuple[int, bytes]:
        """POST ``body`` with ``headers`` (as ``head()`` takes them, without Content-Length,
        which is added) and return the answer as ``get`` does. Sent again on a new connection
        only if nothing of it was written (the module's docstring)."""
        length = (b"Content-Length", b"%d" % len(body))
        request = self._head(b"POST %s HTTP/1.1\r\n" % self._target, [*headers, length])
        return await self._send(request + body, body_for, repeatable=False)

    async def _send(self, request: bytes, body_for: BodyFor,
                    repeatable: bool) -> tuple[int, bytes]:
        """``repeatable``: the request may be sent again after a reused connection closed
        without a byte of answer (GET); else only if nothing of it was written (POST)."""
        idle = self._idle
        now = time.monotonic()
        if idle and now - idle[0].idle_since > KEEP_ALIVE:
            idle.pop(0).close()  # the longest idle: one each time, none left for ever
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have timed out
            if conn.closed:
                continue
            if now - conn.idle_since > KEEP_ALIVE:
                conn.close()
                continue
            try:
                return await conn.ask(request, body_for, repeatable)
            except _Stale:
                break  # closed by the server as it was asked: once more, on a new connection
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Connection(self), self.host, self.port, ssl=self._ssl,
            server_hostname=self.host if self._ssl is not None else None)
        return await conn.ask(request, body_for, repeatable)

    def _release(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)


class _Connection(asyncio.Protocol):
    """One connection: at most one request at a time, its answer parsed as it arrives."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0  # monotonic, when last put back in the pool
        self._reused = False
        self._repeatable = True  # the request in progress may be sent again once written
        self._head_bytes = 0  # of the answer's head so far
        # The request in progress (None: idle), and what its answer has said so far.
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body_for: BodyFor | None = None
        self._received = False
        self._status = 0  # of the final answer's head, once read
        self._encoding = b""
        self._framed = False  # Content-Length or chunked: the body's end is known
        self._interim = False  # a 1xx head, skipped
        self._body: Body | None = None
        self._complete = False
        self._keep = False
        self._error: BaseException | None = None

    async def ask(self, request: bytes, body_for: BodyFor,
                  repeatable: bool = True) -> tuple[int, bytes]:
        transport = self._transport
        if transport is None or transport.is_closing():  # nothing written: any may go again
            raise _Stale("closed") if self._reused else HttpError("closed")
        self._repeatable = repeatable
        answer: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._answer = answer
        self._body_for = body_for
        self._received = self._complete = self._keep = False
        self._status, self._error, self._head_bytes = 0, None, 0
        transport.write(request)
        try:
            return await answer
        except BaseException:
            if self._answer is answer:  # cancelled (the caller's timeout): never read it
                self._answer = None
                self._close()
            raise

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # nothing was asked: the server speaks out of turn
            self._close()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._complete and self._error is None:
                self._error = HttpError(f"not an HTTP answer: {exc}")
            self._keep = False  # (after a whole answer: what follows it is not HTTP)
        if not self._status and not self._complete:  # the head is not whole yet
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and self._error is None:
                self._error = HttpError(f"answer head over {MAX_HEAD_BYTES} bytes")
        if self._error is not None:
            self._settle(error=self._error)
        elif self._complete:
            self._finish()
        elif self._status and self._body is None:
            self._settle((self._status, b""))  # the head is the answer; its body is not read

    def eof_received(self) -> bool:
        return False  # close: connection_lost says what the answer was

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        if self._answer is None:
            return
        if self._status and self._body is not None and not self._framed and not self._error:
            self._finish()  # a body without a length ends with the stream
        elif not self._received and self._reused and self._repeatable:
            self._settle(error=_Stale("closed by the server before answering"))
        else:
            self._settle(error=HttpError("connection closed before the answer was whole"))

    # ---- httptools callbacks (they never raise: an error is kept for data_received)

    # Once an answer is whole, what follows it (a 204's body, a second answer) is not read,
    # and the connection is not reused.

    def on_message_begin(self) -> None:
        if self._complete:
            self._keep = False
            return
        self._status, self._encoding, self._framed = 0, b"", False
        self._interim, self._body = False, None

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:
            return
        name = name.lower()
        if name == b"content-encoding":
            self._encoding = value
        elif name in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue...): the final one follows
            self._interim = True
            return
        assert self._body_for is not None
        try:
            self._body = self._body_for(status, self._encoding)
        except Exception as exc:  # noqa: BLE001 - the answer is this error
            self._error = exc
        self._status = status

    def on_body(self, chunk: bytes) -> None:
        if self._body is not None and self._error is None and not self._complete:
            try:
                self._body.feed(chunk)
            except Exception as exc:  # noqa: BLE001 - the answer is this error
                self._error = exc

    def on_message_complete(self) -> None:
        if self._complete:
            return
        if self._interim:
            self._interim = False
            return
        self._complete = True
        self._keep = self._parser.should_keep_alive()

    # ---- the end of a request

    def _finish(self) -> None:
        try:
            body = self._body.finish() if self._body is not None else b""
        except Exception as exc:  # noqa: BLE001 - the answer is this error
            self._settle(error=exc)
        else:
            self._settle((self._status, body), keep=self._complete and self._keep)

    def _settle(self, result: tuple[int, bytes] | None = None, *,
                error: BaseException | None = None, keep: bool = False) -> None:
        answer, self._answer = self._answer, None
        self._body = None
        if answer is not None and not answer.done():
            if error is not None:
                answer.set_exception(error)
            else:
                assert result is not None
                answer.set_result(result)
        if keep and not self.closed:
            self._reused = True
            self._pool._release(self)
        else:
            self._close()

    def close(self) -> None:
        """Close an idle connection (the pool's keep-alive expired)."""
        self.closed = True
        self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
