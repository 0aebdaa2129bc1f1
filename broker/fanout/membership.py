"""Group membership: which channel-layer groups this process's channel is in, ref-counted.

A subscription needs its room's group, its shape's group and, for a wildcard room, its mask
registered (``broker.fanout.router`` routes concrete triggers by the masks in use); a
connection owning a client destination needs its client room's group. Many subscriptions
share one group: the first holder joins, the last one leaves (``acquire``/``release``).

Invariant: ``_refs[name] > 0`` exactly while the resource is held or being acquired, so the
second subscriber of a room never hears "success" before the group join has completed.

A join returns only once messages sent to the group really reach this process
(``_join_group``): the pub/sub layer's group_add writes SUBSCRIBE and returns before Redis has
processed it, and a PUBLISH from another connection in between is not delivered to us. A
subscriber told "success" (or a history replay that reads the stream) at that moment would
miss a trigger. So a probe is published to the group itself, every 50 ms, until one comes
back.

One probe confirms many joins (``_confirmed``): a shard's SUBSCRIBEs are written on its one
connection in the order their ``group_add`` calls return (one lock per shard), and Redis
processes a connection's commands in order, so a probe that comes back through the last group
joined shows that every group joined on that shard before it is subscribed too. Joins that
return while a probe is out wait for the next one (``Coalesced``): under a connect storm one
round trip confirms every join of the storm's last few milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from rooms import Room

from ..errors import BrokerUnavailable
from ..stores import Registry
from .channel import ProcessChannel
from ..coalesce import Coalesced
from .router import room_group, shape_group
from .sender import shard_of

log = logging.getLogger("broker.hub")

JOIN_CONFIRM_TIMEOUT = 5.0  # seconds for a new group subscription to be confirmed

_Step = Callable[[], Awaitable[None]]


class Membership:
    """``on_joined`` runs after every group join (the upkeep watches a pub/sub connection the
    join may have opened)."""

    def __init__(self, layer: Any, channel: ProcessChannel, registry: Registry,
                 on_joined: Callable[[], None]) -> None:
        self.layer = layer
        self.channel = channel
        self.registry = registry
        self.on_joined = on_joined
        self._refs: Counter[str] = Counter()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._confirms: dict[object, Coalesced[str, None]] = {}  # by shard_of(group)

    # ------------------------------------------------------------ what callers hold

    async def join_room(self, room: Room) -> None:
        """Hold what a subscription to ``room`` needs; all or nothing."""
        held: list[tuple[str, _Step]] = []
        try:
            for name, on_first, on_last in self._room_resources(room):
                await self.acquire(name, on_first)
                held.append((name, on_last))
        except BaseException:
            for name, on_last in held:
                await self.release(name, on_last)
            raise

    async def leave_room(self, room: Room) -> None:
        for name, _on_first, on_last in self._room_resources(room):
            await self.release(name, on_last)

    async def join_owner(self, room: Room) -> None:
        """A connection owning the client destination whose room is ``room``."""
        group = room_group(room.key)
        await self.acquire(group, lambda: self._join_group(group))

    async def leave_owner(self, room: Room) -> None:
        group = room_group(room.key)
        await self.release(group, lambda: self._discard(group))

    # ------------------------------------------------------------ ref counting

    async def acquire(self, name: str, on_first: _Step) -> None:
        """Hold ``name``; the first holder runs ``on_first`` and every holder waits for it."""
        self._refs[name] += 1
        if self._refs[name] == 1:
            self._pending[name] = asyncio.ensure_future(on_first())
        pending = self._pending.get(name)
        if pending is None:
            return
        try:
            await asyncio.shield(pending)
        except BaseException:
            self._release_ref(name)
            raise
        finally:
            if pending.done() and self._pending.get(name) is pending:
                del self._pending[name]

    def _release_ref(self, name: str) -> bool:
        self._refs[name] -= 1
        if self._refs[name] <= 0:
            del self._refs[name]
            self._pending.pop(name, None)
            return True
        return False

    async def release(self, name: str, on_last: _Step) -> None:
        if self._release_ref(name):
            try:
                await on_last()
            except Exception as exc:  # noqa: BLE001 - leaving during an outage: Redis forgot us
                log.warning("release %s failed: %s", name, exc)

    # ------------------------------------------------------------ groups

    async def _join_group(self, group: str) -> None:
        """Join ``group`` and return only once messages sent to it reach this process."""
        try:
            await self.layer.group_add(group, self.channel.name)
        except Exception as exc:  # noqa: BLE001 - the layer's errors are not a documented type
            raise BrokerUnavailable(f"channel layer: {type(exc).__name__}: {exc}") from None
        self.on_joined()  # the first group on a shard opens its connection
        await self._confirmed(group)

    async def _confirmed(self, group: str) -> None:
        """Return once a probe through ``group``, or through a group joined after it on the
        same shard, came back (the docstring above says why that is enough)."""
        key = shard_of(self.layer, group)
        if key is None:  # a layer nobody knows: each join its own probe
            await self._probe_last([group])
            return
        confirm = self._confirms.get(key)
        if confirm is None:
            confirm = self._confirms[key] = Coalesced(self._probe_last)
        await confirm(group)

    async def _probe_last(self, groups: list[str]) -> list[None]:
        """Probe the last of ``groups`` joined (in the order their joins returned)."""
        if not await self.channel.probe(group=groups[-1], timeout=JOIN_CONFIRM_TIMEOUT,
                                        resend=0.05):
            raise BrokerUnavailable(f"joining {groups[-1]} (and {len(groups) - 1} other "
                                    f"groups) was not confirmed within "
                                    f"{JOIN_CONFIRM_TIMEOUT} s")
        return [None] * len(groups)

    async def _discard(self, group: str) -> None:
        await self.layer.group_discard(group, self.channel.name)

    def _room_resources(self, room: Room) -> list[tuple[str, _Step, _Step]]:
        group, sgroup = room_group(room.key), shape_group(room.shape_key)

        async def join_room() -> None:
            await self._join_group(group)
            await self.registry.room_added(room.key)

        async def leave_room() -> None:
            await self._discard(group)
            await self.registry.room_removed(room.key)

        async def join_shape() -> None:
            await self._join_group(sgroup)

        async def leave_shape() -> None:
            await self._discard(sgroup)

        out: list[tuple[str, _Step, _Step]] = [(group, join_room, leave_room),
                                               (sgroup, join_shape, leave_shape)]
        if not room.is_concrete:
            async def add_mask() -> None:
                await self.registry.add_mask(room.shape_key, room.mask)

            async def nothing() -> None:
                return None

            out.append((f"mask:{room.shape_key}:{room.mask}", add_mask, nothing))
        return out
