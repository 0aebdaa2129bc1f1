"""One hub per event loop, built from the settings: the construction edge of fan-out.

``get_hub()`` starts the running loop's hub on first use (every caller waits for the one
start) and returns it after; ``running_hub()`` is the hub if one runs. This is where the
settings are read (``conf()``) and where the stores are chosen: Redis when BROKER_REDIS_URL
is set (its first URL), else memory; nothing below reads settings.

Signal handling is not the hub's: the server edge installs it (``broker.shutdown``).
"""

from __future__ import annotations

import asyncio
import os
import secrets

from ..conf import conf, redis_urls
from ..errors import BrokerUnavailable
from ..stores import Stores
from .hub import Hub
from .settings import FanoutSettings

_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
_starting: dict[asyncio.AbstractEventLoop, asyncio.Future[Hub]] = {}


def fanout_settings() -> FanoutSettings:
    return FanoutSettings.of(conf())


def make_stores() -> Stores:
    """This process's stores, under a fresh process id."""
    proc_id = f"{os.getpid()}-{secrets.token_hex(4)}"
    urls = redis_urls()
    c = conf()
    if urls:
        return Stores.redis(proc_id, urls[0], c.BROKER_KEY_PREFIX, c.BROKER_REGISTRY_TTL,
                            c.BROKER_WEBHOOK_MAX_PENDING)
    return Stores.memory(proc_id, c.BROKER_WEBHOOK_MAX_PENDING)


async def get_hub() -> Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None:
        return hub
    starting = _starting.get(loop)
    if starting is None:
        from channels.layers import get_channel_layer

        async def start() -> Hub:
            new = Hub(get_channel_layer(), make_stores(), fanout_settings())
            await new.start()
            _hubs[loop] = new
            return new

        starting = _starting[loop] = asyncio.ensure_future(start())
    try:
        return await asyncio.shield(starting)
    except Exception as exc:  # noqa: BLE001 - layer or Redis errors of any type
        _starting.pop(loop, None)
        raise BrokerUnavailable(f"hub start failed: {type(exc).__name__}: {exc}") from None


def running_hub() -> Hub | None:
    try:
        return _hubs.get(asyncio.get_running_loop())
    except RuntimeError:
        return None


def hub_loop() -> asyncio.AbstractEventLoop | None:
    """The loop of a hub running in this process, if any (``publish_sync`` publishes there:
    the in-memory layer's queues belong to that loop)."""
    return next(iter(_hubs), None)
