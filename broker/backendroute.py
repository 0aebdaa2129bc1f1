"""The backend's POSTs answered in front of Django: ``POST /trigger`` and the server API's
``POST /api/<operation>``, the sidecar's ASGI route for both.

Django's ASGI handler runs each request's signals in a thread of its own (a thread started and
joined per request) and builds the whole request/response cycle around views that need none of
it: under load, /trigger spent its time handing requests between threads. ``BackendRoute``
wraps the HTTP application (``combroker.asgi``): a POST to the trigger view's or the server
API's path (found by their route names, wherever the URL configuration mounts them:
``httpguard.is_trigger_path``, ``httpguard.api_operation``) is answered here, every other
request goes to the wrapped application as before.

What it does is what the views do (``broker.views``), from the same code: the head is judged
before the body is read (``httpguard.trigger_head``: the trigger token, 401; a declared length
over BROKER_MAX_TRIGGER_BYTES, 413; the answer closes the connection), the body is read up to
that limit (413 as soon as a chunked body passes it), and ``broker.ingest`` (a trigger or a
batch) or ``broker.serverapi`` (an operation) answers it. Other methods reach the views (405).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from . import ingest, serverapi
from .httpguard import Limit, Receive, Scope, Send, api_operation, is_trigger_path, respond, \
    route_path, trigger_head
from .ingest import Answer

log = logging.getLogger("broker.trigger")

_JSON = (b"content-type", b"application/json")

Answerer = Callable[[bytes], Awaitable[Answer]]  # a body, accepted by its head -> the answer


def answerer(path: str) -> Answerer | None:
    """What answers a POST to ``path``: the trigger route's or a server API operation's."""
    if is_trigger_path(path):
        return ingest.answer
    operation = api_operation(path)
    if operation is not None:
        return functools.partial(serverapi.answer, operation)
    return None


class BackendRoute:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" and scope["method"] == "POST" else ""
        answer_body = answerer(path) if path else None
        if answer_body is None:
            await self.app(scope, receive, send)
            return
        authorization, length = "", None
        for name, value in scope["headers"]:
            name = name.lower()
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = value.decode("latin-1")
        verdict = trigger_head("POST", authorization, length)
        if isinstance(verdict, tuple):
            await respond(send, *verdict)
            return
        raw = await read_limited(receive, verdict)
        if raw is None:
            return  # the client went away
        if isinstance(raw, Limit):
            await respond(send, 413, raw.refusal())
            return
        try:
            answer = await answer_body(raw)
        except Exception:
            log.exception("POST %s failed", path)
            answer = Answer(500, {"error": "internal error"})
        content = answer.content()
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [_JSON, (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})


async def read_limited(receive: Receive, limit: Limit) -> bytes | Limit | None:
    """The body; ``limit`` once it passes it (what is left is not read); None when the client
    disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit.size:
            return limit
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
