"""The Python limit of trigger ingestion (the ``rawtrigger`` target, B7): a bare ASGI app.

Served by uvicorn with the broker's own flags (``lib.uvicorn_argv``). ``POST /trigger``: check
the bearer token (as the broker does), read the body (at most 1 MiB, the broker's
BROKER_MAX_TRIGGER_BYTES), ``json.loads`` it, one Redis ``PUBLISH`` of the trigger (redis.asyncio,
one connection pool, on the bench's private redis-server: ``RAW_TRIGGER_REDIS_URL``) to the
channel of its room, and answer 202 ``{"id": "..."}``. No Django, no room validation, no
history, no idempotence: nothing a real broker could skip.

The batch form (what issue 13 asks of the broker): a JSON array of trigger objects, at most
1,000, is published in one pipeline (one PUBLISH each, one round trip) and answered 202
``{"results": [{"id": ...}, ...]}``. Anything else answers 400, 401, 404, 405 or 413.

    RAW_TRIGGER_REDIS_URL=redis://127.0.0.1:P/0 BROKER_TRIGGER_TOKEN=bench-token \\
        uvicorn raw_trigger:application --app-dir bench --loop uvloop --http httptools ...
"""

from __future__ import annotations

import hmac
import itertools
import json
import os
from typing import Any

import redis.asyncio as aioredis

MAX_BYTES = 1 << 20
MAX_BATCH = 1000
TOKEN = ("Bearer " + os.environ.get("BROKER_TRIGGER_TOKEN", "bench-token")).encode()
PREFIX = "rawtrigger:"
_ids = itertools.count(1)
_PID = os.getpid()
_redis: aioredis.Redis | None = None


def redis() -> aioredis.Redis:
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(os.environ["RAW_TRIGGER_REDIS_URL"])
    return _redis


def new_id() -> str:
    return f"{_PID:x}-{next(_ids):x}"


def channel_and_message(entry: Any) -> tuple[str, str, str]:
    """(channel, message, id) of one trigger object; ValueError if it is not one."""
    if not isinstance(entry, dict) or "data" not in entry:
        raise ValueError("a trigger is an object with rooms and data")
    rooms = entry.get("rooms")
    if not isinstance(rooms, list) or not rooms:
        raise ValueError("rooms must be a non-empty list")
    tid = entry.get("id") if isinstance(entry.get("id"), str) else new_id()
    room = json.dumps(rooms[0], sort_keys=True, separators=(",", ":"))
    message = json.dumps({"id": tid, "rooms": rooms, "data": entry["data"]},
                         separators=(",", ":"))
    return PREFIX + room, message, tid


async def answer(send: Any, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


async def application(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await redis().ping()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _redis is not None:
                    await _redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] != "/trigger":
        return await answer(send, 404, {"error": "not found"})
    if scope["method"] != "POST":
        return await answer(send, 405, {"error": "method not allowed: use POST"})
    auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
    if not hmac.compare_digest(auth, TOKEN):
        return await answer(send, 401, {"error": "unauthorized"})
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BYTES:
            return await answer(send, 413, {"error": "body larger than 1 MiB"})
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    try:
        body = json.loads(b"".join(chunks))
        if isinstance(body, list):
            if not body or len(body) > MAX_BATCH:
                raise ValueError(f"a batch holds 1 to {MAX_BATCH} triggers")
            entries = [channel_and_message(e) for e in body]
        else:
            entries = [channel_and_message(body)]
    except ValueError as exc:
        return await answer(send, 400, {"error": str(exc)[:200]})
    if isinstance(body, list):
        async with redis().pipeline(transaction=False) as pipe:
            for channel, message, _ in entries:
                pipe.publish(channel, message)
            await pipe.execute()
        return await answer(send, 202, {"results": [{"id": tid} for _, _, tid in entries]})
    channel, message, tid = entries[0]
    await redis().publish(channel, message)
    return await answer(send, 202, {"id": tid})
