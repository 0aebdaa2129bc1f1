"""HTTP bodies are judged before they are read (issue 11, item 6).

Django's ASGI handler reads a request's whole body (spooled to disk past 2.5 MB) before any view
runs, and daphne's Twisted reads it whole before the application is called. A 200 MB POST to
``/trigger`` without a token was read whole, then refused. Here the head decides first:

- a ``/trigger`` route (whatever URL a project mounts ``broker.views.trigger`` at), and the
  server API's ``/api/<operation>``: a POST without the right token is answered 401, and a
  declared ``Content-Length`` over BROKER_MAX_TRIGGER_BYTES 413, before one byte of the body
  is read;
- every other route: a body over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (the sidecar sets 64 KiB:
  none of its other routes takes a body; None = no cap) is 413; ``multipart/form-data`` is left
  to Django's own upload limits, so a project that mounts the broker keeps its uploads;
- a body without a declared length (chunked) is counted as it arrives: 413 as soon as it
  passes the limit.

``check_head`` is the one judgement; ``BodyGuard`` applies it in front of the Django ASGI app
(``combroker.asgi``; uvicorn reads a body only as fast as the application asks for it), and
``broker.daphne_ext`` applies it inside daphne's request parsing, where the body is read.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .conf import conf

UNAUTHORIZED = "missing or wrong trigger token"

# ASGI's shapes as Django's handler declares them: the scope and the messages received are
# dicts; what is sent may be any mapping.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


def trigger_token_ok(header: str) -> bool:
    token = conf().BROKER_TRIGGER_TOKEN
    if not token:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() not in ("bearer", "token"):
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


# The route names of POST /trigger and POST /api/<operation> in broker/urls.py.
TRIGGER_ROUTE = "broker-trigger"
API_ROUTE = "broker-api"


def too_big(limit: int, setting: str) -> str:
    return f"body over {setting} ({limit} bytes)"


@lru_cache(maxsize=256)
def is_trigger_path(path: str) -> bool:
    """Whether ``path`` is the trigger view, by its route name (broker/urls.py), wherever the
    project mounts it; the guard does not import the views it stands in front of. (Cached: a
    process serves one URL configuration.)"""
    from django.urls import Resolver404, resolve

    try:
        return resolve(path).url_name == TRIGGER_ROUTE
    except Resolver404:
        return False


@lru_cache(maxsize=256)
def api_operation(path: str) -> str | None:
    """The operation when ``path`` is the server API's route (``/api/<operation>``, by its
    route name, wherever the project mounts it), else None. The server API is judged as the
    trigger route is: the same token, the same body limit."""
    from django.urls import Resolver404, resolve

    try:
        match = resolve(path)
    except Resolver404:
        return None
    return str(match.kwargs["operation"]) if match.url_name == API_ROUTE else None


@dataclass(frozen=True, slots=True)
class Limit:
    """The most body bytes a request may send, and the setting that says so."""

    size: int
    setting: str

    def refusal(self) -> str:
        return too_big(self.size, self.setting)


def trigger_head(method: str, authorization: str,
                 content_length: str | None) -> tuple[int, str] | Limit:
    """Judge a request to the trigger view by its head: a POST without the right token is 401,
    a declared length over BROKER_MAX_TRIGGER_BYTES 413. Returns the answer to give at once,
    ``(status, error)``, else the body's limit."""
    if method == "POST" and not trigger_token_ok(authorization):
        return 401, UNAUTHORIZED
    return _declared(content_length, Limit(conf().BROKER_MAX_TRIGGER_BYTES,
                                           "BROKER_MAX_TRIGGER_BYTES"))


def _declared(content_length: str | None, limit: Limit) -> tuple[int, str] | Limit:
    if content_length is not None:
        try:
            length = int(content_length)
        except ValueError:
            return 400, "Content-Length is not a number"
        if length > limit.size:
            return 413, limit.refusal()
    return limit


def check_head(method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | Limit | None:
    """Judge a request by its head (``headers``: lower-case names). Returns the answer to give
    at once, ``(status, error)``; else the body's limit (None: no cap)."""
    from django.conf import settings

    if is_trigger_path(path) or api_operation(path) is not None:
        return trigger_head(method, headers.get("authorization", ""),
                            headers.get("content-length"))
    if headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return None
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return None
    return _declared(headers.get("content-length"),
                     Limit(limit, "DATA_UPLOAD_MAX_MEMORY_SIZE"))


def route_path(scope: Scope) -> str:
    """The path the URL configuration resolves: the scope's, less its ``root_path``."""
    path: str = scope["path"]
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root):]
    return path


def error_body(error: str) -> bytes:
    return json.dumps({"error": error}).encode()


async def respond(send: Send, status: int, error: str) -> None:
    body = error_body(error)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """ASGI middleware in front of Django's HTTP application: ``check_head`` before the body,
    and the body's bytes counted as Django reads them. Over the limit, Django is told the
    client went away (it then stops reading and answers nothing) and the guard answers 413."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        verdict = check_head(scope["method"], route_path(scope), headers)
        if isinstance(verdict, tuple):
            await respond(send, *verdict)
            return
        if verdict is None:
            await self.app(scope, receive, send)
            return
        limit = verdict.size
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Mapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted, sending)
        if over and not started:
            await respond(send, 413, verdict.refusal())
