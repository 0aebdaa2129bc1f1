"""Settings of the sidecar on channels_redis's classic ``RedisChannelLayer`` instead of the
pub/sub layer: the layer a project may bring, which the broker sends to with ``group_send``
(``broker.fanout.sender``). Capacity raised as the hub's one channel carries every trigger."""

import os

from combroker.settings import *  # noqa: F403

CHANNEL_LAYERS = {"default": {
    "BACKEND": "channels_redis.core.RedisChannelLayer",
    "CONFIG": {"hosts": [u.strip() for u in os.environ["BROKER_REDIS_URL"].split(",")],
               "prefix": os.environ.get("BROKER_KEY_PREFIX", "combroker"),
               "capacity": 100_000, "expiry": 60},
}}
