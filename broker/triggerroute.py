"""``POST /trigger`` answered in front of Django: the sidecar's ASGI route for trigger ingestion.

Django's ASGI handler runs each request's signals in a thread of its own (a thread started and
joined per request) and builds the whole request/response cycle around a view that needs none
of it: under load, /trigger spent its time handing requests between threads. ``TriggerRoute``
wraps the HTTP application (``combroker.asgi``): a POST to the trigger view's path (found by
its route name, wherever the URL configuration mounts it: ``httpguard.is_trigger_path``) is
answered here, every other request goes to the wrapped application as before.

What it does is what the view does, from the same code: the head is judged before the body is
read (``httpguard.trigger_head``: 401, 413 and the answer closes the connection), the body is
read up to BROKER_MAX_TRIGGER_BYTES (413 as soon as a chunked body passes it), and
``broker.ingest`` answers it. Other methods reach the view (405).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from . import ingest
from .httpguard import Limit, Receive, Scope, Send, is_trigger_path, respond, route_path, \
    trigger_head

log = logging.getLogger("broker.trigger")

_JSON = (b"content-type", b"application/json")


class TriggerRoute:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not is_trigger_path(route_path(scope))):
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
            answer = await ingest.answer(raw)
        except Exception:
            log.exception("POST /trigger failed")
            answer = ingest.Answer(500, {"error": "internal error"})
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
