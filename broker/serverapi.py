"""The server API over HTTP: ``POST /api/<operation>`` bodies in, answers out (docs/protocol.md
"Server API").

The one implementation behind both ways the routes are served, as ``broker.ingest`` is for
``/trigger``: ``broker.backendroute`` (the sidecar answers them in front of Django) and
``broker.views.server_api`` (a project that mounts ``broker.urls``). The head was judged
before the body was read (``broker.httpguard``: the trigger token, 401; the body's size, 413);
here the body is read as a JSON object and handed to ``broker.api``:

- 200 ``{"ok": true, ...}``;
- 400 ``{"error": <code>, "detail": <text>}``: ``invalid-body`` (not a JSON object),
  ``missing-field``, or the rule ``broker.api.InvalidRequest`` names;
- 404 ``unknown-operation``; 503 ``unavailable`` when Redis is down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import api
from .errors import BrokerUnavailable
from .ingest import Answer, read_body

log = logging.getLogger("broker.api")

UNAVAILABLE = "channel layer or registry unavailable: nothing is known to have been done"


class _Missing(Exception):
    pass


def _need(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise _Missing(name)
    return body[name]


async def _publish_to_users(body: dict[str, Any]) -> dict[str, Any]:
    logins, data = _need(body, "logins"), _need(body, "data")
    message_id = await api.publish_to_users(logins, data)
    return {"id": message_id, "logins": len(set(logins))}


async def _broadcast(body: dict[str, Any]) -> dict[str, Any]:
    return {"id": await api.broadcast(_need(body, "data"))}


async def _disconnect(body: dict[str, Any]) -> dict[str, Any]:
    ids = await api.disconnect(login=body.get("login"), connection_id=body.get("connection_id"),
                               reason=body.get("reason"))
    return {"connections": ids}


async def _unsubscribe(body: dict[str, Any]) -> dict[str, Any]:
    return {"connections": await api.unsubscribe(_need(body, "login"), _need(body, "rooms"))}


async def _recheck(body: dict[str, Any]) -> dict[str, Any]:
    return {"connections": await api.recheck(_need(body, "login"))}


async def _history(body: dict[str, Any]) -> dict[str, Any]:
    return await api.history(_need(body, "room"), body.get("limit"), body.get("since"))


async def _presence(body: dict[str, Any]) -> dict[str, Any]:
    return await api.presence(_need(body, "room"))


async def _presence_stats(body: dict[str, Any]) -> dict[str, Any]:
    return await api.presence_stats(_need(body, "room"))


async def _connections(body: dict[str, Any]) -> dict[str, Any]:
    return {"connections": await api.connections(body.get("login"))}


OPERATIONS: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "publish_to_users": _publish_to_users,
    "broadcast": _broadcast,
    "disconnect": _disconnect,
    "unsubscribe": _unsubscribe,
    "recheck": _recheck,
    "history": _history,
    "connections": _connections,
    "presence": _presence,
    "presence_stats": _presence_stats,
}


def _error(status: int, code: str, detail: str) -> Answer:
    return Answer(status, {"error": code, "detail": detail})


async def answer(operation: str, raw: bytes) -> Answer:
    """The answer to ``POST /api/<operation>`` whose head was accepted and whose body is
    ``raw`` (an empty body is ``{}``: ``connections`` needs nothing)."""
    handler = OPERATIONS.get(operation)
    if handler is None:
        return _error(404, "unknown-operation", f"operations: {', '.join(sorted(OPERATIONS))}")
    body = read_body(raw) if raw.strip() else {}
    if isinstance(body, Answer):
        return _error(400, "invalid-body", body.body["error"])
    if not isinstance(body, dict):
        return _error(400, "invalid-body", "body must be a JSON object")
    try:
        result = await handler(body)
    except _Missing as exc:
        return _error(400, "missing-field", f"{operation} needs {exc.args[0]!r}")
    except api.InvalidRequest as exc:
        return _error(400, exc.code, exc.detail)
    except BrokerUnavailable as exc:
        log.error("POST /api/%s not done: %s", operation, exc)
        return _error(503, "unavailable", UNAVAILABLE)
    return Answer(200, {"ok": True, **result})
