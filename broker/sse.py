"""The SSE transport: ``GET /sse/`` (``text/event-stream``), an ASGI adapter for the serve loop
(``broker.serve``), framing only, as ``broker.consumers`` is for WebSocket.

What it reads of the request, before any stream (docs/protocol.md "SSE"):

- the subscriptions: ``?subscribe=<JSON array>`` (or ``POST /sse/`` with the body
  ``{"subscribe": [...]}``), each item what a rich (``combroker.v1``) ``subscribe`` frame
  carries without ``type``. Each is handed to the serve loop as that frame's text, so the codec
  and the session judge it exactly as over WebSocket (their errors come as events); the list
  itself is bounded by BROKER_MAX_SUBSCRIPTIONS and BROKER_MAX_MESSAGE_BYTES (400/413 with a
  named error). Then ``receive`` waits for the client to go.
- ``Last-Event-ID`` (EventSource sends it when it reconnects; a script passes
  ``?lastEventId=``): the positions this transport wrote as event ids. Each named request id
  of the new request resumes with ``since=<offset>``: no gap, no duplicate.
- the credentials and the Origin, as a WebSocket handshake's (``broker.handshake``).

What it writes: nothing until the connection is open, so every refusal is an HTTP status with
the rich ``refused`` frame as a JSON body (403 refused login or Origin, 503 auth API or Redis
unavailable, over capacity, shutting down); then the stream, each frame of the rich JSON codec
one event (``data:`` lines: a line break in a frame starts another ``data:`` line, so no frame
can end its event or add a field), an ``id:`` on each frame that moves a history
subscription's position (``Framing.positions``: told in write order by the outbox), a comment
as heart-beat every BROKER_SSE_HEARTBEAT seconds, and at every close a last
``event: close`` with the code and reason. ``broker.eagersend`` steps each ASGI send once;
under daphne a ``daphne_ext.ResponseFlow`` gives the stream backpressure. A page of an origin
BROKER_ALLOWED_ORIGINS allows may read it cross-origin (CORS with credentials).

``SseStream.as_asgi()`` is the ASGI application for a project's own router; ``SseRoute`` puts
it in front of an HTTP application at ``/sse/`` (``combroker.asgi``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote

from . import daphne_ext, errors, metrics, serve
from .backendroute import read_limited
from .codec import Capabilities, Heartbeats
from .codecs.jsoncodec import JsonCodec
from .conf import Settings, conf
from .delivery import Mark
from .eagersend import EagerSend
from .handshake import credentials_from_scope, origin_allowed_by
from .httpguard import Limit, Receive, Scope, Send, route_path
from .jsontext import dump_json, load_json
from .limits import origin_allowed
from .replies import Error

# The paths SseRoute serves.
SSE_PATHS: Final = ("/sse/", "/sse")

STREAM_HEADERS: Final = [(b"content-type", b"text/event-stream; charset=utf-8"),
                         (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
# What the rich dialect carries over a stream that only receives: no resume token (a stream
# resumes by its event ids, so no state is saved at its close), and an acknowledged message
# written to the stream counts as confirmed (the client cannot send ``confirm``), as over STOMP.
SSE_CAPS: Final = Capabilities(resumable=False, confirms=False)
# The transport's own heart-beat frame (no codec frame is empty), written as a comment.
HEARTBEAT: Final = ""
_COMMENT: Final = b":\n\n"
# The answer to a preflight (a page POSTing its subscribe list, or sending Last-Event-ID).
_PREFLIGHT: Final = [(b"access-control-allow-methods", b"GET, POST"),
                     (b"access-control-allow-headers", b"content-type, last-event-id"),
                     (b"access-control-max-age", b"600")]
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what ends a line of an event stream (and only that)


class BadRequest(Exception):
    """The request cannot open a stream: answered ``status`` with the named error ``code``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


# ------------------------------------------------------------------ the wire format

def event(frame: str, event_id: str | None = None) -> bytes:
    """One event carrying ``frame`` (and ``id:`` ``event_id``). A line break in the frame (JSON
    the codec writes has none; whitespace of data relayed as is could) starts another ``data:``
    line, which the client joins back with a newline: whatever a frame holds, it cannot end its
    event, start another or add a field."""
    if "\n" in frame or "\r" in frame:
        frame = "\ndata: ".join(_LINE_BREAK.split(frame))
    if event_id is None:
        return f"data: {frame}\n\n".encode()
    return f"id: {event_id}\ndata: {frame}\n\n".encode()


def close_event(code: int, reason: str) -> bytes:
    """The last event of every stream the broker ends."""
    return f"event: close\ndata: {dump_json({'code': code, 'reason': reason})}\n\n".encode()


def event_id(positions: dict[str, int]) -> str:
    """The positions (a request id's JSON text -> offset) as an event id: URL query syntax,
    each request id's JSON percent-encoded (so an id never holds a line break)."""
    return "&".join(f"{quote(key, safe='')}={offset}" for key, offset in positions.items())


def positions_from(text: str, max_positions: int) -> dict[str, int]:
    """The positions an event id of this transport names (``event_id``'s inverse), each
    request id as its canonical JSON text; BadRequest ``invalid-last-event-id`` for anything
    else."""
    if not text:
        return {}
    pairs = text.split("&")
    if not text.isascii() or len(pairs) > max_positions:
        raise BadRequest(400, errors.INVALID_LAST_EVENT_ID,
                         f"not <requestId JSON>=<offset>&... with at most {max_positions} pairs")
    positions: dict[str, int] = {}
    for pair in pairs:
        key, _, offset = pair.partition("=")
        try:
            rid = load_json(unquote(key, errors="strict"))
        except ValueError:
            rid = None
        if (not isinstance(rid, (str, int, float)) or isinstance(rid, bool)
                or not offset.isdigit() or len(offset) > 19):
            raise BadRequest(400, errors.INVALID_LAST_EVENT_ID,
                             f"{pair[:100]!r} is not <percent-encoded requestId JSON>=<offset>")
        positions[dump_json(rid)] = int(offset)
    return positions


def subscribe_frames(items: Any, since: dict[str, int], c: Settings) -> list[str]:
    """The rich ``subscribe`` frame of each item, with ``since`` from the positions the
    request resumes (``positions_from``); BadRequest when the list is not a list of objects
    or holds more than BROKER_MAX_SUBSCRIPTIONS."""
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise BadRequest(400, errors.INVALID_SUBSCRIBE_LIST,
                         "subscribe must be a JSON array of objects")
    if len(items) > c.BROKER_MAX_SUBSCRIPTIONS:
        raise BadRequest(400, errors.TOO_MANY_SUBSCRIPTIONS,
                         f"over BROKER_MAX_SUBSCRIPTIONS ({c.BROKER_MAX_SUBSCRIPTIONS})")
    frames = []
    for item in items:
        frame = {**item, "type": "subscribe"}
        if "requestId" in item:
            offset = since.get(dump_json(item["requestId"]))
            if offset is not None:
                frame["since"] = offset
        frames.append(dump_json(frame))
    return frames


def _loaded(raw: str | bytes, c: Settings) -> Any:
    """A subscribe list's (or POST body's) JSON, within BROKER_MAX_MESSAGE_BYTES."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > c.BROKER_MAX_MESSAGE_BYTES:
        raise BadRequest(413, errors.SUBSCRIBE_LIST_TOO_BIG,
                         f"over BROKER_MAX_MESSAGE_BYTES ({c.BROKER_MAX_MESSAGE_BYTES} bytes)")
    try:
        return load_json(raw)
    except ValueError:
        raise BadRequest(400, errors.INVALID_SUBSCRIBE_LIST, "not JSON") from None


def cors_headers(scope: Scope, allowed: tuple[str, ...]) -> list[tuple[bytes, bytes]]:
    """What lets a page of another origin read the stream (EventSource ``withCredentials``:
    with its cookies): its Origin echoed when BROKER_ALLOWED_ORIGINS allows it, as a
    WebSocket handshake from that page would be. None without an Origin (same origin, or
    not a browser)."""
    origin = next((v for k, v in scope.get("headers", []) if k.lower() == b"origin"), None)
    if origin is None or not origin_allowed(origin.decode("latin-1"), allowed):
        return []
    return [(b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"), (b"vary", b"origin")]


def _refusal_status(code: int, reason: str) -> int:
    """The HTTP status of a close before the stream opened (serve's refusal table)."""
    if code in (errors.CLOSE_REFUSED, errors.CLOSE_ORIGIN):
        return 403  # a refused login, an Origin not allowed: EventSource does not retry
    if reason == errors.INTERNAL_ERROR:
        return 500
    return 503  # auth API or Redis unavailable, auth-timeout, shutting down


# ------------------------------------------------------------------ the transport

class SseStream:
    """One event stream: ``serve.Transport`` over ASGI HTTP ``receive``/``send``."""

    __slots__ = ("scope", "_receive", "_send", "remote_addr", "last_write", "last_read",
                 "_codec", "_frames", "_started", "_closed", "_over", "_listening",
                 "_refusal", "_positions", "_id_due", "_sending", "_cors", "_flow")

    name = "sse"
    close_codes = True  # the last event says the code
    over_capacity_grace = None  # over capacity: HTTP 503 before the stream

    @classmethod
    def as_asgi(cls) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI application serving SSE at whatever route a project gives it."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await cls(scope, receive, send).run()

        return app

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        client = scope.get("client")
        self.remote_addr: str | None = client[0] if client else None
        self.last_write = self.last_read = 0.0  # heartbeat.Link
        self._codec = JsonCodec(rich=True, caps=SSE_CAPS)
        self._frames: deque[str] = deque()  # the subscribe frames still to hand in
        self._started = False  # a response head was sent
        self._closed = False
        self._over = asyncio.Event()  # the client went, or the response ended (or was given up)
        self._listening: asyncio.Task[None] | None = None  # reads until http.disconnect
        self._refusal: str | bytes | None = None  # serve's refusal frame, the refusal's body
        # Each history subscription's position (by its request id's JSON), as of the frames
        # written so far; an id is due on the next frame written.
        self._positions: dict[str, int] = {}
        self._id_due = False
        self._sending = EagerSend()
        self._cors = cors_headers(scope, conf().BROKER_ALLOWED_ORIGINS)
        # Backpressure under daphne, made when the stream starts (uvicorn's send already
        # waits while its buffer is full).
        self._flow: daphne_ext.ResponseFlow | None = None

    async def run(self) -> None:
        c = conf()
        if self.scope.get("method") == "OPTIONS":  # a page's preflight before a POST
            await self._send({"type": "http.response.start", "status": 204,
                              "headers": [*self._cors, *_PREFLIGHT]})
            await self._send({"type": "http.response.body", "body": b""})
            return
        try:
            self._frames.extend(await self._read_request(c))
        except BadRequest as exc:
            await self._respond(exc.status, self._codec.answer(
                Error(exc.code, None, exc.detail)).frame or "")
            return
        except TimeoutError:
            metrics.refused(errors.AUTH_TIMEOUT)
            await self._respond(408, self._codec.refused(errors.AUTH_TIMEOUT))
            return
        if self._over.is_set():
            return  # gone while sending its body
        try:
            await serve.serve(self, max_connections=c.BROKER_MAX_CONNECTIONS)
        finally:
            if self._listening is not None:
                self._listening.cancel()
            if self._flow is not None:
                self._flow.release()

    async def _read_request(self, c: Settings) -> list[str]:
        """The subscribe frames the request asks for (BadRequest when it cannot open)."""
        scope = self.scope
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        last_id = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                        if k.lower() == b"last-event-id"), None)
        if last_id is None and "lastEventId" in query:
            last_id = query["lastEventId"][0]
        since = positions_from(last_id or "", c.BROKER_MAX_SUBSCRIPTIONS)
        method = scope.get("method")
        if method == "GET":
            raw = query.get("subscribe")
            return subscribe_frames(_loaded(raw[0], c) if raw else [], since, c)
        if method != "POST":
            raise BadRequest(405, errors.MESSAGE_TYPE_NOT_ALLOWED, "GET or POST /sse/")
        limit = Limit(c.BROKER_MAX_MESSAGE_BYTES, "BROKER_MAX_MESSAGE_BYTES")
        async with asyncio.timeout(c.BROKER_AUTH_DEADLINE or None):
            body = await read_limited(self._receive, limit)
        if body is None:
            self._over.set()
            return []
        if isinstance(body, Limit):
            raise BadRequest(413, errors.SUBSCRIBE_LIST_TOO_BIG, body.refusal())
        loaded = _loaded(body, c)
        if not isinstance(loaded, dict):
            raise BadRequest(400, errors.INVALID_SUBSCRIBE_LIST,
                             'the body must be {"subscribe": [...]}')
        return subscribe_frames(loaded.get("subscribe", []), since, c)

    # ---- serve.Transport: the framing

    async def start(self) -> serve.Framing:
        c = conf()
        return serve.Framing(
            self._codec, explicit_refusal=True, max_bytes=c.BROKER_MAX_MESSAGE_BYTES,
            credentials=credentials_from_scope(self.scope),
            origin_allowed=origin_allowed_by(self.scope, c.BROKER_ALLOWED_ORIGINS),
            heartbeats=Heartbeats(out_ms=int(c.BROKER_SSE_HEARTBEAT * 1000)),
            heartbeat=HEARTBEAT, positions=self._positioned)

    async def deny(self, reason: str) -> None:
        """Over capacity or shutting down: 503 before the stream."""
        self._closed = True
        await self._respond(503, self._codec.refused(reason))

    async def receive(self) -> serve.Inbound:
        """Each subscribe frame; then None once the client went or the response ended."""
        if self._frames:
            return self._frames.popleft()
        if self._listening is None:
            self._listening = asyncio.ensure_future(self._until_disconnect())
        await self._over.wait()
        return None

    async def _until_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._over.set()

    async def wait_closed(self) -> None:
        await self._over.wait()

    # ---- positions (Framing.positions, from the outbox in write order)

    def _positioned(self, mark: Mark) -> None:
        """The next frame written moves ``mark``'s subscription to its offset: it gets an id."""
        sub, offset = mark
        known = self._positions.get(sub.request_id_json)
        if known is None or offset > known:
            self._positions[sub.request_id_json] = offset
        self._id_due = True

    # ---- broker.connection.Transport

    def write_now(self, frame: str | bytes) -> bool:
        """Hand ``frame`` to the ASGI server as one event, without a task (broker.outbox):
        its send stepped once, finished in a task only if it suspends (``broker.eagersend``)."""
        text = frame if isinstance(frame, str) else frame.decode()
        if text == HEARTBEAT:
            body = _COMMENT
        elif self._id_due:
            self._id_due = False
            body = event(text, event_id(self._positions))
        else:
            body = event(text)
        return self._sending.step(self._write(body))

    async def writable(self) -> None:
        await self._sending.wait()

    async def _write(self, body: bytes) -> None:
        if not self._started:  # the welcome: the connection is open
            self._started = True
            await self._send({"type": "http.response.start", "status": 200,
                              "headers": [*STREAM_HEADERS, *self._cors]})
            flow = (self.scope.get("extensions") or {}).get(daphne_ext.RESPONSE_FLOW_EXTENSION)
            if flow is not None:
                self._flow = flow()
        await self._send({"type": "http.response.body", "body": body, "more_body": True})
        self.last_write = time.monotonic()
        # Backpressure: under daphne the flow says the buffer is full; either way the next
        # frame then waits in the bounded outbox.
        if self._flow is not None:
            await self._flow.wait()

    async def write(self, frame: str | bytes) -> None:
        """serve's refusal frame: the body of the refusal ``close`` answers (nothing is sent
        before the connection is open)."""
        if self._started:
            await self._write(event(frame if isinstance(frame, str) else frame.decode()))
        else:
            self._refusal = frame

    async def close(self, code: int, reason: str) -> None:
        """Before the stream: the refusal's HTTP status and body. After: the last event, and
        the end of the response (its send is given up by the driver's close timeout when the
        client does not read)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._over.is_set():
                return
            if not self._started:
                await self._respond(_refusal_status(code, reason), self._refusal
                                    or self._codec.refused(reason or errors.REFUSED))
            else:
                await self._send({"type": "http.response.body", "body": close_event(code, reason),
                                  "more_body": False})
        finally:
            self._over.set()

    async def _respond(self, status: int, body: str | bytes) -> None:
        """A whole response instead of a stream (a refusal, a bad request)."""
        self._started = True
        content = body.encode() if isinstance(body, str) else body
        await self._send({"type": "http.response.start", "status": status,
                          "headers": [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(content)).encode()),
                                      (b"cache-control", b"no-store"), *self._cors]})
        await self._send({"type": "http.response.body", "body": content})
        self._over.set()


class SseRoute:
    """In front of an HTTP application (``combroker.asgi``): a request to ``/sse/`` is an
    event stream, every other request goes to the wrapped application."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) in SSE_PATHS:
            await SseStream(scope, receive, send).run()
        else:
            await self.app(scope, receive, send)
