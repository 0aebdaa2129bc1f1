"""combroker's reusable Django app: the real-time broker (see docs/architecture.md).

``from broker import publish, publish_sync`` sends triggers from code inside a deployment.
"""

from __future__ import annotations

from typing import Any


async def publish(rooms: list[Any], data: Any, *, history: bool = False) -> str:
    from .publish import publish as _publish

    return await _publish(rooms, data, history=history)


def publish_sync(rooms: list[Any], data: Any, timeout: float = 10.0, *,
                 history: bool = False) -> str:
    from .publish import publish_sync as _publish_sync

    return _publish_sync(rooms, data, timeout, history=history)
