"""Django settings for the bench's ``classic`` target: the sidecar's settings with channels_redis's
classic ``RedisChannelLayer`` (lists + Lua group sends) instead of the pub/sub layer, to measure
the layer decision (docs/performance.md). Capacity is raised so that the hub's one channel, which
carries every trigger of its process, does not drop messages at the default 100."""

import os

from combroker.settings import *  # noqa: F403

CHANNEL_LAYERS = {"default": {
    "BACKEND": "channels_redis.core.RedisChannelLayer",
    "CONFIG": {"hosts": [u.strip() for u in os.environ["BROKER_REDIS_URL"].split(",")],
               "prefix": os.environ.get("BROKER_KEY_PREFIX", "combroker"),
               "capacity": 100_000, "expiry": 60},
}}
