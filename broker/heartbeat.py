"""STOMP heart-beats (STOMP 1.2 "Heart-beating"), one way for every transport.

Once the codec has negotiated the periods (``heartbeat_out``/``heartbeat_in`` in ms, 0 = off,
see ``StompCodec.welcome``), the serve loop (``broker.serve``) calls ``start``; then
``keep_alive`` runs beside the connection until it closes:

- it queues an EOL (``codec.heartbeat()``) whenever nothing was written for ``heartbeat_out``;
- it closes the connection with 1001 ``heart-beat-timeout`` once nothing was read for
  ``2 × heartbeat_in + 1 s``.

The transport says when it last wrote and read (``time.monotonic()``): ``last_write`` and
``last_read``, updated by its ``write`` and on every read (a TCP chunk, a WebSocket message),
so a read costs a clock read, not a timer. A codec without heart-beats (JSON) has none.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from . import disconnect

if TYPE_CHECKING:
    from .connection import Connection


class Link(Protocol):
    last_write: float
    last_read: float


def silence_limit(heartbeat_in_ms: int) -> float:
    """Seconds without a byte from a client that promised heart-beats before it is dropped."""
    return heartbeat_in_ms * 2 / 1000 + 1


def start(conn: Connection, codec: Any, link: Link) -> asyncio.Task[None] | None:
    """Run ``keep_alive`` for an open connection whose codec negotiated heart-beats."""
    if not (getattr(codec, "heartbeat_out", 0) or getattr(codec, "heartbeat_in", 0)):
        return None
    link.last_write = link.last_read = time.monotonic()
    return asyncio.ensure_future(keep_alive(conn, codec, link))


async def keep_alive(conn: Connection, codec: Any, link: Link) -> None:
    period = codec.heartbeat_out / 1000
    limit = silence_limit(codec.heartbeat_in) if codec.heartbeat_in else 0.0
    if not period and not limit:
        return
    while not conn.closing:
        now = time.monotonic()
        waits: list[float] = []
        if period:
            idle = now - link.last_write
            if idle >= period * 0.9:
                conn.push(codec.heartbeat())
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
