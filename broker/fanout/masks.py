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

**Coalesced reads.** One read is in flight at a time; calls made while it runs wait for the
next one, which starts when it ends and reads every shape they asked for. Under load a read
serves many triggers, and none waits more than two round trips.
"""

from __future__ import annotations

import asyncio

from ..stores import Registry

# Shapes whose masks are kept; past it the cache starts over (a shape is one sorted key set:
# a deployment has tens of them, but triggers may name any).
MAX_SHAPES = 10_000


class Masks:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._known: dict[str, frozenset[int]] = {}
        self._next: asyncio.Future[dict[str, frozenset[int]]] | None = None
        self._wanted: set[str] = set()
        self._reading = False
        self._task: asyncio.Future[None] | None = None  # the read in flight

    def cached(self, shape_key: str) -> frozenset[int]:
        """The masks of ``shape_key`` last read (mask 0, the room itself, always included)."""
        return self._known.get(shape_key, _ROOM_ONLY)

    async def current(self, shape_keys: set[str]) -> dict[str, frozenset[int]]:
        """The masks of ``shape_keys`` by a read that starts after this call (mask 0 always
        included); the cache takes them. Raises ``BrokerUnavailable`` when Redis fails."""
        future = self._next
        if future is None:
            future = self._next = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
        self._wanted |= shape_keys
        if not self._reading:
            self._start()
        return await asyncio.shield(future)

    def _start(self) -> None:
        assert self._next is not None
        future, wanted = self._next, self._wanted
        self._next, self._wanted, self._reading = None, set(), True
        self._task = asyncio.ensure_future(self._read(future, wanted))

    async def _read(self, future: asyncio.Future[dict[str, frozenset[int]]],
                    wanted: set[str]) -> None:
        try:
            found = await self.registry.masks(sorted(wanted))
        except Exception as exc:  # noqa: BLE001 - BrokerUnavailable, or a bug: the callers'
            future.set_exception(exc)
        else:
            if len(self._known) + len(found) > MAX_SHAPES:
                self._known.clear()
            fresh = {shape: frozenset(masks) for shape, masks in found.items()}
            self._known.update(fresh)
            future.set_result(fresh)
        finally:
            self._reading = False
            if self._next is not None:
                self._start()


_ROOM_ONLY = frozenset({0})


def _retrieve(future: asyncio.Future[dict[str, frozenset[int]]]) -> None:
    """A read whose callers all went away (cancelled) must not log its error as unretrieved."""
    if not future.cancelled():
        future.exception()
