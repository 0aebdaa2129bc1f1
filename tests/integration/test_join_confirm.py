"""Group joins confirmed by one probe per shard (``broker.fanout.membership``).

A join returns only once a PUBLISH to the group from another process reaches this one. Under a
connect storm the joins share probes: one probe through the last group joined on a shard
confirms every group joined there before it. Real Redis, the real pub/sub layer, and a second
layer instance standing for another process that publishes to each group the moment its join
returns: every one of those messages must arrive, and the joins must have taken fewer probes
than there were groups. (The race a probe closes is narrow; the history seam tests are the ones
that found it. Here the probe count is what fails with one probe per join.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer

from broker.fanout.channel import ProcessChannel
from broker.fanout.membership import Membership
from broker.messages import PROBE, Probe
from broker.stores import MemoryRegistry
from tests.harness import RedisServer

JOINS = 200


def _layer(redis: RedisServer) -> RedisPubSubChannelLayer:
    return RedisPubSubChannelLayer(hosts=[redis.url], prefix="joinconfirm")


async def _storm(redis: RedisServer) -> tuple[set[str], set[str], int]:
    layer, other = _layer(redis), _layer(redis)
    channel = ProcessChannel(layer)
    await channel.open()
    probes_sent = 0
    probe = channel.probe

    async def counted_probe(*args: Any, **kwargs: Any) -> bool:
        nonlocal probes_sent
        probes_sent += 1
        return await probe(*args, **kwargs)

    channel.probe = counted_probe  # type: ignore[method-assign]
    membership = Membership(layer, channel, MemoryRegistry("p"), lambda: None)
    received: set[str] = set()
    everything = asyncio.Event()

    async def receive() -> None:
        while True:
            message = await layer.receive(channel.name)
            if message["type"] == PROBE:
                channel.answered(Probe(message["token"]))
            elif message["type"] == "sent":
                received.add(message["group"])
                if len(received) == JOINS:
                    everything.set()

    receiver = asyncio.ensure_future(receive())
    sent: set[str] = set()

    async def join_then_publish(i: int) -> None:
        group = f"storm.{i}"

        async def join() -> None:
            await membership._join_group(group)

        await membership.acquire(group, join)
        # the join said "listening": another process publishes at once
        await other.group_send(group, {"type": "sent", "group": group})
        sent.add(group)

    try:
        await asyncio.gather(*(join_then_publish(i) for i in range(JOINS)))
        await asyncio.wait_for(everything.wait(), 10)
    except TimeoutError:
        pass
    finally:
        receiver.cancel()
        await layer.flush()
        await other.flush()
    return sent, received, probes_sent


def test_a_storm_of_joins_shares_probes_and_loses_nothing(redis_server: RedisServer) -> None:
    sent, received, probes = asyncio.run(_storm(redis_server))
    assert len(sent) == JOINS
    assert received == sent, f"lost after the join returned: {sorted(sent - received)[:5]}"
    assert probes < JOINS / 2, f"{probes} probes for {JOINS} joins"
