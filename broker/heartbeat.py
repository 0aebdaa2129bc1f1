"""STOMP heart-beats (STOMP 1.2 "Heart-beating"), one way for every transport.

The codec negotiates the periods at the connect (``Codec.connect`` -> ``Connecting.heartbeats``,
a ``broker.codec.Heartbeats`` in ms, 0 = off); the serve loop (``broker.serve``) hands them and
the codec's heart-beat frame (``Codec.heartbeat()``) to ``start``; then ``keep_alive`` runs
beside the connection until it closes:

- it queues that frame (an EOL) whenever nothing was written for ``out_ms``;
- it closes the connection with 1001 ``heart-beat-timeout`` once nothing was read for
  ``2 × in_ms + 1 s``.

The transport says when it last wrote and read (``time.monotonic()``): ``last_write`` and
``last_read``, updated by its ``write`` and on every read (a TCP chunk, a WebSocket message),
so a read costs a clock read, not a timer. A codec without heart-beats (JSON) negotiates none.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from . import disconnect
from .codec import Heartbeats

if TYPE_CHECKING:
    from .connection import Connection


class Link(Protocol):
    last_write: float
    last_read: float


def silence_limit(heartbeat_in_ms: int) -> float:
    """Seconds without a byte from a client that promised heart-beats before it is dropped."""
    return heartbeat_in_ms * 2 / 1000 + 1


def start(conn: Connection, heartbeats: Heartbeats, frame: str | bytes, link: Link
          ) -> asyncio.Task[None] | None:
    """Run ``keep_alive`` for an open connection whose connect negotiated heart-beats."""
    if not (heartbeats.out_ms or heartbeats.in_ms):
        return None
    link.last_write = link.last_read = time.monotonic()
    return asyncio.ensure_future(keep_alive(conn, heartbeats, frame, link))


async def keep_alive(conn: Connection, heartbeats: Heartbeats, frame: str | bytes, link: Link
                     ) -> None:
    period = heartbeats.out_ms / 1000
    limit = silence_limit(heartbeats.in_ms) if heartbeats.in_ms else 0.0
    if not period and not limit:
        return
    while not conn.closing:
        now = time.monotonic()
        waits: list[float] = []
        if period:
            idle = now - link.last_write
            if idle >= period * 0.9:
                conn.push(frame)
                link.last_write = now
                idle = 0.0
            waits.append(period - idle)
        if limit:
            silent = now - link.last_read
            if silent >= limit:
                conn.close_soon(disconnect.HEARTBEAT_TIMEOUT)
                return
            waits.append(limit - silent)
        await asyncio.sleep(max(min(waits), 0.01))
