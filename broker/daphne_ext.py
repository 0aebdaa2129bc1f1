"""What daphne lacks for a broker on the public edge, added to it. ``patch()`` applies only
when daphne serves the application (its modules are loaded before the application is: the
``daphne`` CLI, a project's own daphne), never imports daphne, and is idempotent.

- **Backpressure.** daphne's ``send`` never waits: a frame goes straight into Twisted's
  write buffer, which grows without bound when the client stops reading, so the connection's
  outbox (BROKER_MAX_OUTBOX_BYTES) never fills and a slow client could take any amount of
  memory. Each WebSocket gets a ``WriteFlow``, a streaming producer registered on its Twisted
  transport: Twisted pauses it when its buffer holds more than ``bufferSize`` (64 KiB) and
  resumes it once the buffer is written out. The application finds it in
  ``scope["extensions"]["combroker.flow"]``; the WebSocket transport awaits ``wait()`` after
  every frame, so frames wait in the bounded outbox, never in Twisted. An HTTP response that
  streams (the SSE transport, ``broker.sse``) asks for one when its stream starts: the
  callable in ``scope["extensions"]["combroker.response_flow"]`` registers a
  ``ResponseFlow`` as the request's producer (``release()`` at the end).
- **Refusing a handshake with a status.** The ASGI ``websocket.http.response`` extension
  (uvicorn has it): ``websocket.http.response.start`` then ``.body`` before the accept answer
  the handshake with that HTTP status (503 over capacity or shutting down), where a plain
  close before the accept can only give 403. The answer is the one uvicorn writes: the
  status's standard phrase, the application's headers and its body (``over-capacity``), where
  autobahn's own refusal (``failHandshake``) puts the reason in the status line and sends no
  header and no body.
- **Graceful shutdown.** daphne stops on SIGTERM/SIGINT by stopping the reactor, whose
  "before shutdown" trigger ``Server.kill_all_applications`` cancels every application at once.
  That trigger now first stops listening and runs ``broker.shutdown.graceful_shutdown``
  (clients closed with 1001 after their queues drain, within BROKER_SHUTDOWN_GRACE).
- **Close codes and reasons.** daphne hands ``websocket.close`` to autobahn's ``sendClose``,
  which accepts only 1000 and 3000-4999, and drops the reason: the contract's 1009 (message
  too big) and 1011 (``auth-unavailable``) raised inside daphne and left the socket open, and
  every reason (``replaced``, ``kicked``, ``slow``) was lost. The close frame is now sent with
  the code and reason the application asked for (uvicorn already does this).
- **Bodies judged before they are read.** Twisted reads a request's whole body before daphne
  calls the application, so ``broker.httpguard.BodyGuard`` alone would come too late: the head
  is judged (``httpguard.check_head``) once it is in, and the body counted as it arrives; a
  refusal (401, 413) is written at once and the connection closed, the rest never stored.
- **No credentials in the access log.** daphne writes it itself (not through logging), with
  the query string of HTTP requests; ``broker.logctx.redact`` now runs over each line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from http import HTTPStatus
from typing import Any

log = logging.getLogger("broker.daphne")

FLOW_EXTENSION = "combroker.flow"
RESPONSE_FLOW_EXTENSION = "combroker.response_flow"
DENIAL_EXTENSION = "websocket.http.response"
# Seconds a client has to answer the server's close frame before its TCP connection is
# aborted (autobahn's default is 1): a slow client that is still reading gets to see why it
# was closed (4008 ``slow``) behind the frames already buffered for it.
CLOSE_HANDSHAKE_TIMEOUT = 5.0


class WriteFlow:
    """Twisted ``IPushProducer`` for one WebSocket transport, awaited from asyncio.

    Invariant: ``wait()`` returns at once unless the transport's buffer went over its limit
    (``pauseProducing``) and has not been written out since (``resumeProducing``), or the
    connection is gone (``stopProducing``, which releases every waiter for good).
    """

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.registered = False
        self.stopped = False

    @property
    def paused(self) -> bool:
        return not self._writable.is_set()

    async def wait(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    # IPushProducer, called by Twisted in the reactor (= the event loop) thread
    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's names
        if not self.stopped:
            self._writable.clear()

    def resumeProducing(self) -> None:  # noqa: N802
        self._writable.set()

    def stopProducing(self) -> None:  # noqa: N802
        self.stopped = True
        self._writable.set()

    def register(self, transport: Any) -> None:
        # daphne upgraded an HTTP connection: its HTTPChannel is still the transport's
        # producer, though nothing reads its pause/resume any more. Take its place.
        transport.unregisterProducer()
        transport.registerProducer(self, True)
        self.registered = True


class ResponseFlow(WriteFlow):
    """A ``WriteFlow`` for one streamed HTTP response: the producer of its Twisted request,
    which the connection's HTTPChannel pauses and resumes with its transport's buffer."""

    def __init__(self, request: Any) -> None:
        super().__init__()
        self._request = request
        request.registerProducer(self, True)
        self.registered = True

    def release(self) -> None:
        """The response is over: the channel may serve its next request."""
        if self.registered:
            self.registered = False
            self._request.unregisterProducer()


def patch() -> None:
    server_module = sys.modules.get("daphne.server")
    ws_module = sys.modules.get("daphne.ws_protocol")
    if server_module is not None:
        _patch_server(server_module.Server)
    if ws_module is not None:
        _patch_protocol(ws_module.WebSocketProtocol)
        _patch_close(ws_module.WebSocketProtocol)
    http_module = sys.modules.get("daphne.http_protocol")
    if http_module is not None:
        _patch_request(http_module.WebRequest)
    access = sys.modules.get("daphne.access")
    if access is not None:
        _patch_access_log(access.AccessLogGenerator)


def _patch_server(cls: Any) -> None:
    if getattr(cls, "_combroker_patched", False):
        return
    from twisted.internet import defer

    create_application = cls.create_application
    listen_success = cls.listen_success
    kill_all_applications = cls.kill_all_applications

    def create_application_with_extensions(self: Any, protocol: Any, scope: dict[str, Any]
                                           ) -> Any:
        if scope.get("type") == "websocket":
            flow = protocol._combroker_flow = WriteFlow()
            extensions = dict(scope.get("extensions") or {})
            extensions.setdefault(DENIAL_EXTENSION, {})
            extensions[FLOW_EXTENSION] = flow
            scope["extensions"] = extensions
        elif scope.get("type") == "http":  # made only by a response that streams
            extensions = dict(scope.get("extensions") or {})
            extensions[RESPONSE_FLOW_EXTENSION] = functools.partial(ResponseFlow, protocol)
            scope["extensions"] = extensions
        return create_application(self, protocol, scope)

    def remember_port(self: Any, port: Any) -> Any:
        self.__dict__.setdefault("_combroker_ports", []).append(port)
        return listen_success(self, port)

    def graceful_then_kill(self: Any) -> Any:
        """The reactor's "before shutdown" trigger: the reactor waits for its Deferred."""
        from .shutdown import graceful_shutdown

        async def graceful() -> None:
            for port in self.__dict__.get("_combroker_ports", []):
                try:
                    port.stopListening()  # new connections are refused by the kernel
                except Exception as exc:  # noqa: BLE001 - keep shutting down
                    log.warning("stopListening failed: %s", exc)
            await graceful_shutdown()

        d = defer.Deferred.fromFuture(asyncio.ensure_future(graceful()))
        d.addErrback(lambda failure: log.error("graceful shutdown failed: %s",
                                               failure.getErrorMessage()))
        d.addBoth(lambda _: kill_all_applications(self))
        return d

    cls.create_application = create_application_with_extensions
    cls.listen_success = remember_port
    cls.kill_all_applications = graceful_then_kill
    cls._combroker_patched = True


def _patch_protocol(cls: Any) -> None:
    if getattr(cls, "_combroker_ext_patched", False):
        return
    from autobahn.websocket.types import ConnectionDeny

    on_open = cls.onOpen
    handle_reply = cls.handle_reply

    def on_open_with_flow(self: Any) -> None:
        on_open(self)
        self.closeHandshakeTimeout = CLOSE_HANDSHAKE_TIMEOUT
        flow = getattr(self, "_combroker_flow", None)
        if flow is not None and self.transport is not None:
            try:
                flow.register(self.transport)
            except Exception as exc:  # noqa: BLE001 - without it, daphne's old behaviour
                log.warning("no backpressure for %s: %s", self.client_addr, exc)

    def handle_reply_with_denial(self: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.http.response.start" and self.state == self.STATE_CONNECTING:
            self._combroker_denial = message
            return
        if kind == "websocket.http.response.body":
            start = self.__dict__.pop("_combroker_denial", None)
            if start is None or not hasattr(self, "handshake_deferred"):
                return
            status = int(start.get("status", 403))
            body = bytes(message.get("body") or b"")
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Refused"
            headers = "".join(
                f"{bytes(name).decode('latin-1')}: {bytes(value).decode('latin-1')}\r\n"
                for name, value in start.get("headers") or ()
                if bytes(name).lower() not in (b"content-length", b"connection"))
            self._combroker_answer = (
                f"HTTP/1.1 {status} {phrase}\r\n{headers}Connection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
            # autobahn is not annotated: its ConnectionDeny(code, reason) is an untyped call.
            # Its failHandshake (patched below) writes the answer above.
            denial = ConnectionDeny(code=status, reason=phrase)  # type: ignore[no-untyped-call]
            self.handshake_deferred.errback(denial)
            del self.handshake_deferred
            self.server.protocol_disconnected(self)
            self.server.log_action("websocket", "rejected", {
                "path": self.request.path,
                "client": ("{}:{}".format(*self.client_addr) if self.client_addr else None)})
            return
        handle_reply(self, message)

    fail_handshake = cls.failHandshake

    def fail_handshake_with_answer(self: Any, reason: str, code: int = 400,
                                   responseHeaders: Any = None) -> None:  # noqa: N803
        answer = self.__dict__.pop("_combroker_answer", None)
        if answer is None:
            fail_handshake(self, reason, code, responseHeaders)
            return
        self.wasNotCleanReason = reason
        self.sendData(answer)
        self.dropConnection(abort=False)

    cls.onOpen = on_open_with_flow
    cls.handle_reply = handle_reply_with_denial
    cls.failHandshake = fail_handshake_with_answer
    cls._combroker_ext_patched = True


def _patch_close(cls: Any) -> None:
    if getattr(cls, "_combroker_close_patched", False):
        return
    from autobahn.util import encode_truncate  # autobahn is daphne's dependency

    handle_reply = cls.handle_reply

    def handle_reply_with_close_code(self: Any, message: dict[str, Any]) -> None:
        # Before the accept, daphne answers HTTP 403 (its own path); once closing or closed,
        # sendCloseFrame does nothing, where sendClose would still raise on the code.
        if message.get("type") == "websocket.close" and self.state != self.STATE_CONNECTING:
            code = message.get("code") or 1000
            reason = message.get("reason") or ""
            self.sendCloseFrame(code=int(code), isReply=False,
                                reasonUtf8=encode_truncate(reason, 123) if reason else None)
            return
        handle_reply(self, message)

    cls.handle_reply = handle_reply_with_close_code
    cls._combroker_close_patched = True


def _patch_request(cls: Any) -> None:
    """daphne's ``WebRequest`` (a Twisted ``Request``): ``gotLength`` runs once the head is
    in, ``handleContentChunk`` for each piece of the body, ``process`` once it is all in."""
    if getattr(cls, "_combroker_patched", False):
        return
    from urllib.parse import unquote

    from .httpguard import check_head, error_body

    got_length = cls.gotLength
    handle_chunk = cls.handleContentChunk
    process = cls.process

    def refuse(self: Any, status: int, error: str) -> None:
        self._combroker_refused = True
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the answer
        body = error_body(error)
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        self.channel.transport.write(head.encode() + body)
        self.channel.transport.loseConnection()

    def judged_got_length(self: Any, length: Any) -> Any:
        self._combroker_refused = False
        self._combroker_taken = 0
        self._combroker_limit = None
        try:
            method = self.channel._command.decode("latin-1")
            path = unquote(self.channel._path.decode("latin-1").split("?", 1)[0])
            headers = {name.decode("latin-1").lower(): values[-1].decode("latin-1")
                       for name, values in self.requestHeaders.getAllRawHeaders()}
            verdict = check_head(method, path, headers)
        except Exception:  # noqa: BLE001 - daphne's own checks then apply
            log.exception("request head not judged")
            verdict = None
        if isinstance(verdict, tuple):
            refuse(self, *verdict)
        else:
            self._combroker_limit = verdict
        return got_length(self, length)

    def counted_chunk(self: Any, data: bytes) -> Any:
        if getattr(self, "_combroker_refused", False):
            return None  # answered already: the rest is dropped, never stored
        self._combroker_taken += len(data)
        limit = self._combroker_limit
        if limit is not None and self._combroker_taken > limit.size:
            refuse(self, 413, limit.refusal())
            return None
        return handle_chunk(self, data)

    def guarded_process(self: Any) -> Any:
        if getattr(self, "_combroker_refused", False):
            return None
        return process(self)

    cls.gotLength = judged_got_length
    cls.handleContentChunk = counted_chunk
    cls.process = guarded_process
    cls._combroker_patched = True


def _patch_access_log(cls: Any) -> None:
    if getattr(cls, "_combroker_redacted", False):
        return
    from .logctx import redact

    write_entry = cls.write_entry

    def write_redacted(self: Any, host: Any, date: Any, request: Any, *args: Any,
                       **kwargs: Any) -> None:
        write_entry(self, host, date, redact(request) if isinstance(request, str) else request,
                    *args, **kwargs)

    cls.write_entry = write_redacted
    cls._combroker_redacted = True
