"""The physical limit: a minimal ``websockets`` broadcast server (compression off, uvloop).

It speaks just enough of the High-templar dialect for the same load generator: a welcome
frame on connect, ``{"code":"success"}`` to any subscribe (which makes the client a
subscriber; the room is kept in the connection's set of rooms, the least a broker must
remember of a subscription). A connection to ``/pub`` is the trigger source: each frame it
sends is broadcast as is to every subscriber with ``websockets.broadcast`` (one encoding,
written to every transport). No auth, no rooms, no Redis: nothing a real broker could skip.

``--auth URL`` (the ``rawauth`` target, B3's Python limit): before the welcome, each connection
makes the call the broker makes, ``GET URL`` with the client's Cookie, User-Agent and
Authorization forwarded (``?token=`` as ``Authorization: Token ...``, the cookie's csrftoken
as X-CSRFToken, the peer as X-Real-IP, as ``broker/auth.py`` does), through one pooled
``aiohttp.ClientSession`` (a TCPConnector of at most ``--auth-limit`` connections, 64: the
broker's BROKER_AUTH_MAX_IN_FLIGHT default). A 200 with a JSON object welcomes the client with
its ``allowed_rooms``; anything else answers ``{"is_authorized": false}`` and closes (4001).
No request is shared between connections: each connection asks once.

    python bench/raw_server.py PORT [--auth URL] [--auth-limit 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.parse

import aiohttp
import uvloop
from websockets.asyncio.server import broadcast, serve

WELCOME = '{"is_authorized": true, "allowed_rooms": []}'
REFUSED = '{"is_authorized": false}'
subscribers: set = set()


def subscribed(ws, frame: str) -> None:
    """Remember the subscription's room on the connection (its JSON text, as it came)."""
    try:
        room = json.loads(frame).get("room")
    except (ValueError, AttributeError):
        room = None
    rooms = getattr(ws, "rooms", None)
    if rooms is None:
        rooms = ws.rooms = set()
    rooms.add(json.dumps(room, sort_keys=True, separators=(",", ":")))
    subscribers.add(ws)


async def serve_client(ws, welcome: str) -> None:
    await ws.send(welcome)
    try:
        async for frame in ws:
            if frame == "ping":
                await ws.send("pong")
                continue
            subscribed(ws, frame)
            await ws.send('{"code": "success"}')
    finally:
        subscribers.discard(ws)


async def handler(ws) -> None:
    if ws.request.path.startswith("/pub"):
        async for frame in ws:
            broadcast(subscribers, frame)
        return
    await serve_client(ws, WELCOME)


def auth_headers(ws) -> dict[str, str]:
    """The headers the broker sends the auth API for this connection (broker/auth.py:
    forwarded_headers, without its configurable extra headers)."""
    h = ws.request.headers
    out: dict[str, str] = {}
    for name in ("Cookie", "User-Agent", "Authorization"):
        value = h.get(name)
        if value:
            out[name] = value
    cookie = out.get("Cookie")
    if cookie:
        for part in cookie.split(";"):
            key, _, value = part.strip().partition("=")
            if key == "csrftoken" and value:
                out["X-CSRFToken"] = value
    peer = ws.remote_address
    if peer:
        out["X-Real-IP"] = peer[0]
    if "Authorization" not in out:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query)
        token = (query.get("token") or [""])[0]
        if token:
            out["Authorization"] = f"Token {token}"
    return out


def auth_handler(session, url: str):  # noqa: ANN001, ANN201
    async def handler_with_auth(ws) -> None:
        try:
            async with session.get(url, headers=auth_headers(ws)) as response:
                body = await response.read() if response.status == 200 else b""
            answer = json.loads(body) if body else None
        except (TimeoutError, OSError, ValueError, aiohttp.ClientError) as exc:
            answer = None
            if not isinstance(exc, ValueError):
                print(f"auth call failed: {exc!r}", flush=True)
        if not isinstance(answer, dict):
            await ws.send(REFUSED)
            await ws.close(4001)
            return
        welcome = json.dumps({"is_authorized": True,
                              "allowed_rooms": answer.get("allowed_rooms") or []})
        await serve_client(ws, welcome)

    return handler_with_auth


async def main(port: int, auth_url: str | None, auth_limit: int) -> None:
    session = None
    serve_with = handler
    if auth_url:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=auth_limit, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=10), auto_decompress=True)
        serve_with = auth_handler(session, auth_url)
    try:
        async with serve(serve_with, "127.0.0.1", port, compression=None, ping_interval=None,
                         max_queue=None, backlog=4096):
            await asyncio.Future()
    finally:
        if session is not None:
            await session.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--auth", help="the auth API's URL (GET per connection, before the welcome)")
    ap.add_argument("--auth-limit", type=int, default=64,
                    help="the pool's connections at most (the broker's "
                         "BROKER_AUTH_MAX_IN_FLIGHT default)")
    a = ap.parse_args()
    uvloop.run(main(a.port, a.auth, a.auth_limit))
