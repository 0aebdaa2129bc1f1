"""The wildcard masks in use per room shape, as this process last read them, and a fresh read.

A concrete trigger room is sent to the groups of its wildcard variants for the masks some
subscription of the cluster uses (``broker.fanout.router``). The masks live in the registry
(``P:masks:<shape>``), only ever added, and a subscription's mask is added before it is told
"success". Reading them before every send costs one Redis round trip per trigger, on the path
of every trigger; this keeps the last masks read per shape so a trigger is sent at once, and
the router checks them with ``current()`` while it sends:

**Correctness.** A subscription confirmed before a trigger was posted has its mask in Redis
before the trigger's request began. ``current()`` only answers with a read that *started after
it was called*, so that read sees the mask; the router sends the trigger to the groups of any
mask the read has and the cached masks lacked (receivers drop a second copy by trigger id),
and answers the trigger only after that. So the cache can be stale, never wrong: a stale mask
costs a PUBLISH nobody hears, a missing one a second send. Processes of earlier versions only
add masks, which this reads like any other; a Redis restarted empty loses masks until each
holder's heartbeat adds them back, as it always did.

**Coalesced reads** (``broker.fanout.coalesce``): one read is in flight at a time; calls made
while it runs wait for the next one, which starts when it ends and reads every shape they asked
for. Under load a read serves many triggers, and none waits more than two round trips.
"""

from __future__ import annotations

import asyncio

from ..stores import Registry
from ..coalesce import Coalesced

# Shapes whose masks are kept; past it the cache starts over (a shape is one sorted key set:
# a deployment has tens of them, but triggers may name any).
MAX_SHAPES = 10_000


class Masks:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._known: dict[str, frozenset[int]] = {}
        self._read: Coalesced[set[str], dict[str, frozenset[int]]] = Coalesced(self._read_all)

    def cached(self, shape_key: str) -> frozenset[int]:
        """The masks of ``shape_key`` last read (mask 0, the room itself, always included)."""
        return self._known.get(shape_key, _ROOM_ONLY)

    def current(self, shape_keys: set[str]) -> asyncio.Future[dict[str, frozenset[int]]]:
        """The masks of ``shape_keys`` (and maybe more shapes), to await, by a read that starts
        after this call, mask 0 always included; the cache takes them. Raises (when awaited)
        ``BrokerUnavailable`` when Redis fails."""
        return self._read.soon(shape_keys)

    async def _read_all(self, wanted: list[set[str]]) -> list[dict[str, frozenset[int]]]:
        found = await self.registry.masks(sorted(set().union(*wanted)))
        if len(self._known) + len(found) > MAX_SHAPES:
            self._known.clear()
        fresh = {shape: frozenset(masks) for shape, masks in found.items()}
        self._known.update(fresh)
        return [fresh] * len(wanted)


_ROOM_ONLY = frozenset({0})
