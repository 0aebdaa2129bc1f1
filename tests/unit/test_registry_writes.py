"""The registry writes of a connect storm go together (broker.fanout.upkeep ``Upkeep._write``):
the connections that attach or detach while a write is under way are written in the next one,
in order, instead of one round trip each. A real Hub on the in-memory layer, with a memory
registry that counts its writes.
"""

from __future__ import annotations

import asyncio
import dataclasses

from channels.layers import InMemoryChannelLayer

from broker.fanout.hub import Hub
from broker.stores import Stores
from broker.stores.registry import Change, MemoryRegistry
from tests.unit.test_fanout import SETTINGS, Recorder, agent


class CountingRegistry(MemoryRegistry):
    """A memory registry whose writes take a moment (as a Redis round trip does) and are
    counted."""

    def __init__(self, proc_id: str) -> None:
        super().__init__(proc_id)
        self.writes: list[list[Change]] = []

    async def write(self, changes: list[Change]) -> None:
        self.writes.append(changes)
        await asyncio.sleep(0.01)
        await super().write(changes)


async def test_a_storm_of_attaches_and_detaches_is_written_in_a_few_batches_in_order():
    registry = CountingRegistry("p1")
    stores = dataclasses.replace(Stores.memory("p1"), registry=registry)
    hub = Hub(InMemoryChannelLayer(), stores, SETTINGS)
    await hub.start()
    try:
        conns = [Recorder(f"c{i}", agent(f"u{i}")) for i in range(50)]
        await asyncio.gather(*(hub.attach(c) for c in conns))
        assert len(registry.writes) <= 2, [len(w) for w in registry.writes]
        assert sum(len(w) for w in registry.writes) == 50
        assert await registry.status() == (50, 0)
        assert await registry.destination_exists("/agent/u7")

        registry.writes.clear()
        # detaches, and a registration and departure queued together: written in order
        late = Recorder("late", agent("late"))
        await asyncio.gather(*(hub.detach(c, []) for c in conns),
                             hub.upkeep.register(late, "/agent/late", True),
                             hub.upkeep.unregister("late", "/agent/late", True))
        assert len(registry.writes) <= 2, [len(w) for w in registry.writes]
        assert await registry.status() == (0, 0)
        assert not await registry.destination_exists("/agent/u7")
        assert not await registry.destination_exists("/agent/late")
    finally:
        await hub.stop()
