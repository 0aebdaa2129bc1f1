"""The physical limit: a minimal ``websockets`` broadcast server (compression off, uvloop).

It speaks just enough of the High-templar dialect for the same load generator: a welcome
frame on connect, ``{"code":"success"}`` to any subscribe (which makes the client a
subscriber). A connection to ``/pub`` is the trigger source: each frame it sends is broadcast
as is to every subscriber with ``websockets.broadcast`` (one encoding, written to every
transport). No auth, no rooms, no Redis: nothing a real broker could skip.

    python bench/raw_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from websockets.asyncio.server import broadcast, serve

WELCOME = '{"is_authorized": true, "allowed_rooms": []}'
subscribers: set = set()


async def handler(ws) -> None:
    if ws.request.path.startswith("/pub"):
        async for frame in ws:
            broadcast(subscribers, frame)
        return
    await ws.send(WELCOME)
    try:
        async for frame in ws:
            if frame == "ping":
                await ws.send("pong")
                continue
            subscribers.add(ws)
            await ws.send('{"code": "success"}')
    finally:
        subscribers.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None,
                     max_queue=None, backlog=4096):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
