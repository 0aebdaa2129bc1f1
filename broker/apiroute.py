"""``POST /api/<operation>`` (the server API) answered in front of Django, as
``broker.triggerroute`` answers ``/trigger`` and for the same reason (Django's request cycle
would hand each request between threads).

``ApiRoute`` wraps the HTTP application (``combroker.asgi``): a POST to the server API's route
(found by its route name, wherever the URL configuration mounts it:
``httpguard.api_operation``) is answered here, every other request goes to the wrapped
application. The head is judged before the body is read as for ``/trigger``
(``httpguard.trigger_head``: the trigger token, 401; a declared length over
BROKER_MAX_TRIGGER_BYTES, 413), the body is read up to that limit, and ``broker.serverapi``
answers it. Other methods reach the view (405).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from . import serverapi
from .httpguard import Limit, Receive, Scope, Send, api_operation, respond, route_path, \
    trigger_head
from .ingest import Answer
from .triggerroute import read_limited

log = logging.getLogger("broker.api")

_JSON = (b"content-type", b"application/json")


class ApiRoute:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = (api_operation(route_path(scope))
                     if scope["type"] == "http" and scope["method"] == "POST" else None)
        if operation is None:
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
            answer = await serverapi.answer(operation, raw)
        except Exception:
            log.exception("POST /api/%s failed", operation)
            answer = Answer(500, {"error": "internal error"})
        content = answer.content()
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [_JSON, (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})
