"""combroker's reusable Django app: the real-time broker (see docs/architecture.md).

``from broker import publish, publish_sync, publish_many, publish_many_sync`` sends triggers
from code inside a deployment (``broker.publish``); the server API's operations from Python
are ``broker.api`` (``from broker import api``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


async def publish(rooms: list[Any], data: Any, *, history: bool = False,
                  trigger_id: str | None = None, exclude: str | None = None) -> str:
    from .publish import publish as _publish

    return await _publish(rooms, data, history=history, trigger_id=trigger_id, exclude=exclude)


def publish_sync(rooms: list[Any], data: Any, timeout: float = 10.0, *,
                 history: bool = False, trigger_id: str | None = None,
                 exclude: str | None = None) -> str:
    from .publish import publish_sync as _publish_sync

    return _publish_sync(rooms, data, timeout, history=history, trigger_id=trigger_id,
                         exclude=exclude)


async def publish_many(triggers: Iterable[Mapping[str, Any]]) -> list[str | Exception]:
    from .publish import publish_many as _publish_many

    return await _publish_many(triggers)


def publish_many_sync(triggers: Iterable[Mapping[str, Any]],
                      timeout: float = 10.0) -> list[str | Exception]:
    from .publish import publish_many_sync as _publish_many_sync

    return _publish_many_sync(triggers, timeout)
