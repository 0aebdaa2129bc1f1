"""Sending messages to channel-layer groups: one round trip per Redis shard for a whole batch.

channels_redis's pub/sub layer makes each ``group_send`` one PUBLISH, awaited alone under a
lock per shard: a trigger for three groups was three round trips, and concurrent triggers
queued behind each other's. On that layer the sender serializes each message once and sends
the PUBLISHes of every (groups, message) pair in one pipeline per shard, in order, on the
layer's own connection pool, with the layer's serializer and channel names, so a receiver (of
any version) reads exactly what ``group_send`` would have sent. Calls made while a pipeline is
in flight go together in the next one (``broker.fanout.coalesce``): under load one write to
Redis carries the PUBLISHes of many triggers, and they leave in the order they were sent.

Any other layer (the in-memory one, channels_redis's classic ``RedisChannelLayer``, a layer a
project brings) gets ``group_send`` per group: a message's groups at once, as before, and the
messages of a batch one after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..coalesce import Coalesced

Send = tuple[set[str], dict[str, Any]]  # the groups, and the message's wire form


class Sender:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._pipelined: Coalesced[Sequence[Send], list[Exception | None]] | None = (
            Coalesced(self._pipelines) if _is_pubsub(layer) else None)

    async def send(self, sends: Sequence[Send]) -> list[Exception | None]:
        """Send each message to each of its groups; per message, in order, None or the
        exception that failed a send of it (one failure fails every message of its shard)."""
        if self._pipelined is not None:
            return await self._pipelined(sends)
        return await self._group_sends(sends)

    async def _group_sends(self, sends: Sequence[Send]) -> list[Exception | None]:
        """One message after another (its groups at once): in order, and a batch never
        holds more of the layer's connections than one message's groups (channels_redis's
        classic layer refuses past its pool's size: MaxConnectionsError)."""
        results: list[Exception | None] = []
        for groups, wire in sends:
            done = await asyncio.gather(*(self.layer.group_send(g, wire) for g in groups),
                                        return_exceptions=True)
            results.append(next((f for f in map(_failure, done) if f is not None), None))
        return results

    async def _pipelines(self, calls: list[Sequence[Send]]) -> list[list[Exception | None]]:
        flat = [send for sends in calls for send in sends]
        results = iter(await self._pipeline(flat))
        return [[next(results) for _ in sends] for sends in calls]

    async def _pipeline(self, sends: Sequence[Send]) -> list[Exception | None]:
        loop_layer = self.layer._get_layer()  # the layer's state on this event loop
        serialize = self.layer.serialize
        shards: dict[int, tuple[Any, list[tuple[str, bytes]], list[int]]] = {}
        for i, (groups, wire) in enumerate(sends):
            if not groups:
                continue
            body = serialize(wire)
            for group in groups:
                channel = loop_layer._get_group_channel_name(group)
                shard = loop_layer._get_shard(channel)
                entry = shards.get(id(shard))
                if entry is None:
                    entry = shards[id(shard)] = (shard, [], [])
                entry[1].append((channel, body))
                entry[2].append(i)
        results: list[Exception | None] = [None] * len(sends)
        done: list[BaseException | None]
        if len(shards) == 1:  # the common case: no task to start
            ((shard, publishes, _),) = shards.values()
            try:
                await _publish(shard, publishes)
                done = [None]
            except Exception as exc:  # noqa: BLE001 - the layer's errors are not a documented type
                done = [exc]
        else:
            done = await asyncio.gather(*(_publish(shard, publishes)
                                          for shard, publishes, _ in shards.values()),
                                        return_exceptions=True)
        for outcome, (_shard, _publishes, members) in zip(done, shards.values(), strict=True):
            failure = _failure(outcome)
            if failure is not None:
                for i in members:
                    results[i] = failure
        return results


async def _publish(shard: Any, publishes: list[tuple[str, bytes]]) -> None:
    """PUBLISH each (channel, body) on the shard's connection pool: one round trip."""
    shard._ensure_redis()
    if len(publishes) == 1:
        await shard._redis.publish(*publishes[0])
        return
    pipe = shard._redis.pipeline(transaction=False)
    for channel, body in publishes:
        pipe.publish(channel, body)
    await pipe.execute()


def _failure(outcome: object) -> Exception | None:
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, Exception):
            raise outcome  # cancelled: not a failure of the layer
        return outcome
    return None


def shard_of(layer: Any, group: str) -> object | None:
    """What orders ``group``'s join among others: on the pub/sub layer its shard's connection
    (one lock per shard writes the SUBSCRIBEs in turn); the in-memory and classic Redis layers
    have joined when ``group_add`` returns (the layer); None for a layer nobody knows."""
    if _is_pubsub(layer):
        loop_layer = layer._get_layer()
        shard: object = loop_layer._get_shard(loop_layer._get_group_channel_name(group))
        return shard
    if type(layer).__module__ in ("channels.layers", "channels_redis.core"):
        known: object = layer
        return known
    return None


def _is_pubsub(layer: Any) -> bool:
    """channels_redis's pub/sub layer, with the internals the pipeline uses (channels_redis
    4.x); a layer without them is sent to with ``group_send``."""
    try:
        from channels_redis.pubsub import (RedisPubSubChannelLayer, RedisPubSubLoopLayer,
                                           RedisSingleShardConnection)
    except ImportError:
        return False
    return (isinstance(layer, RedisPubSubChannelLayer)
            and all(hasattr(RedisPubSubLoopLayer, name)
                    for name in ("_get_group_channel_name", "_get_shard"))
            and hasattr(RedisSingleShardConnection, "_ensure_redis"))
