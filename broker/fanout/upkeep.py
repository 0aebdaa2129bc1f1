"""Upkeep: keeping the cluster's view of this process true, and noticing when fan-out broke.

- **The registry.** Connections are registered and unregistered as they come and go; a
  heartbeat every BROKER_REGISTRY_TTL/3 rewrites this process's whole state (connections,
  rooms, destinations, masks, stats); in between, twice a second, changed connection entries
  and the stats (the monitor console's per-second rates) are flushed. Registry writes are
  ordered by one lock: a heartbeat snapshots and writes the whole state under it, so it can
  never re-add an entry that a concurrent unregister just removed.
- **Acknowledged messages of dead processes.** Each heartbeat also releases the holds of
  connections whose process stopped heartbeating (SIGKILL), and tells the senders of the
  messages this completed.
- **Degraded, lost, resync.** Messages published while this process cannot hear them are
  lost to its clients: while Redis fails requests (``degraded``), after Redis lost this
  process's registry entries (a restart), and after a pub/sub connection of the layer
  reconnected (redis-py re-subscribes without a word, ``_SubscriptionWatch``). From the first
  sign, every connection holds its history subscriptions' live deliveries (``hold_live``);
  once a probe comes back through every subscription connection (the layer has re-subscribed
  every group), each connection is told to ``resync``: it replays what it missed from the
  history and tells its client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Protocol

from rooms import Room, SubscriptionIndex

from .. import metrics
from ..errors import BrokerUnavailable
from ..subscription import Subscription
from ..stores import Stores
from ..stores.registry import Change
from .channel import ProcessChannel
from ..coalesce import Coalesced
from .presence import Presence
from .receiver import Receiver
from .router import Router

log = logging.getLogger("broker.hub")


class Local(Protocol):
    """What upkeep reads of this process's fan-out state (the hub's)."""

    conns: dict[str, Receiver]
    owners: dict[str, set[Receiver]]
    index: SubscriptionIndex[Subscription]
    started_at: str
    presence: Presence


class _SubscriptionWatch:
    """Watches one pub/sub connection of the channel layer (channels_redis's pub/sub layer
    keeps one per Redis shard). Redis drops a subscriber that falls behind
    (``client-output-buffer-limit pubsub``), a restart or ``CLIENT KILL`` drops them all, and
    redis-py then reconnects and re-subscribes without a word: whatever was published in
    between is lost to this process. A connection reconnects only after such a loss, so every
    connect after the first is reported (redis-py runs its connect callbacks right after it
    has re-sent SUBSCRIBE, before any message of the new connection is read)."""

    def __init__(self, upkeep: Upkeep, pubsub: Any) -> None:
        self.upkeep = upkeep
        self.pubsub = pubsub

    def on_connect(self, connection: Any) -> None:
        self.upkeep.subscription_lost()

    def probe_channel(self) -> str | None:
        """A channel this connection is subscribed to, to probe it end to end."""
        for name in self.pubsub.channels:
            return name.decode() if isinstance(name, bytes) else str(name)
        return None


class Upkeep:
    def __init__(self, local: Local, layer: Any, channel: ProcessChannel, stores: Stores,
                 router: Router, registry_ttl: float) -> None:
        self.local = local
        self.layer = layer
        self.channel = channel
        self.stores = stores
        self.router = router
        self.registry_ttl = registry_ttl
        # Connections whose registry entry changed since the last flush.
        self.dirty: set[str] = set()
        self._registry_lock = asyncio.Lock()
        # Registry changes: those made while a write is under way go together in the next.
        self._writes: Coalesced[Change, None] = Coalesced(self._write_changes)
        # Redis failed a request of this process since the last successful heartbeat.
        self.degraded = False
        # Pub/sub connections watched for reconnects (by id), and whether one lost messages
        # that the clients have not been told about yet.
        self._watches: dict[int, _SubscriptionWatch] = {}
        self._lost = False
        self._resyncs: set[asyncio.Task[None]] = set()
        self._last_counts: tuple[float, int, int, int] = (time.monotonic(), 0, 0, 0)

    # ------------------------------------------------------------ registry writes

    async def register(self, conn: Receiver, destination: str | None, first: bool) -> None:
        await self._write(Change(conn.id, conn.info(), destination, first))

    async def unregister(self, conn_id: str, destination: str | None, last: bool) -> None:
        self.dirty.discard(conn_id)
        await self._write(Change(conn_id, None, destination, last))

    async def _write(self, change: Change) -> None:
        """Group commit: the changes queued while a write is under way go together, in order,
        in the next one (a connect storm's registrations in a few round trips to Redis, not
        one each). Raises what the write raised (BrokerUnavailable)."""
        try:
            await self._writes(change)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this caller was cancelled
            # the write was (the loop is ending)
            raise BrokerUnavailable("registry write cancelled") from None

    async def _write_changes(self, changes: list[Change]) -> list[None]:
        async with self._registry_lock:
            await self.stores.registry.write(changes)
        return [None] * len(changes)

    def stats(self) -> dict[str, Any]:
        local = self.local
        now = time.monotonic()
        t0, tr0, de0, dr0 = self._last_counts
        tr, de = metrics.counters["triggers"], metrics.counters["deliveries"]
        dr = sum(metrics.drops.values())
        dt = max(now - t0, 1e-6)
        self._last_counts = (now, tr, de, dr)
        return {"proc": self.stores.registry.proc_id, "pid": os.getpid(),
                "connections": len(local.conns), "rooms": local.index.room_count(),
                "triggers": tr, "deliveries": de, "drops": dr,
                "triggers_per_s": round((tr - tr0) / dt, 2),
                "deliveries_per_s": round((de - de0) / dt, 2),
                "drops_per_s": round((dr - dr0) / dt, 2), "online_since": local.started_at}

    async def heartbeat(self) -> bool:
        local = self.local
        async with self._registry_lock:
            self.dirty.clear()
            rooms: list[Room] = list(local.index.rooms())
            return await self.stores.registry.heartbeat(
                {cid: c.info() for cid, c in local.conns.items()},
                [r.key for r in rooms], list(local.owners), self.stats(),
                [(r.shape_key, r.mask) for r in rooms if not r.is_concrete])

    async def run(self) -> None:
        """Heartbeat every TTL/3; in between, twice a second, flush changed connection entries
        and this process's stats.

        While Redis is unreachable the heartbeat is retried on every tick. When it succeeds
        again, or after a pub/sub connection reconnected, the connections resync (see the
        module's docstring)."""
        interval = max(self.registry_ttl / 3, 0.2)
        next_beat = time.monotonic() + interval
        while True:
            await asyncio.sleep(min(0.5, interval))
            try:
                if self.degraded or self._lost or time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    known = await self.heartbeat()
                    if not known:
                        self.local.presence.forgotten()
                    await self._sweep_acks()
                    if self.degraded or self._lost or not known:
                        # Redis failed us, lost this process's entries (a restart), or dropped
                        # a subscription connection: messages published meanwhile may never
                        # have reached this process. Tell clients only once a message really
                        # comes back through every subscription connection, i.e. once the
                        # layer has re-subscribed every group.
                        self._lose()
                        if not await self._probe_subscriptions():
                            continue
                        self.degraded = self._lost = False
                        log.warning("fan-out is whole again: telling %d connections to resync",
                                    len(self.local.conns))
                        self._resync()
                else:
                    conns = self.local.conns
                    dirty, self.dirty = self.dirty, set()
                    await self.stores.registry.update(
                        {cid: conns[cid].info() for cid in dirty if cid in conns},
                        self.stats())
                await self.local.presence.upkeep()
            except BrokerUnavailable as exc:
                if not self.degraded:
                    log.error("redis unreachable, fan-out interrupted: %s", exc)
                self.degraded = True
                self._lose()
            except Exception:  # noqa: BLE001 - upkeep must outlive any single failure
                log.exception("registry upkeep failed")

    async def _sweep_acks(self) -> None:
        """Release acknowledged messages held by connections of dead processes (SIGKILL: they
        could not release them on close); tell the senders of the ones this completed."""
        for message_id, sender, recipient in await self.stores.acks.sweep():
            log.info("acknowledged message %s completed: its other holders' process is gone",
                     message_id)
            if sender:
                await self.router.confirmed(sender, message_id, recipient)

    # ------------------------------------------------------------ lost subscriptions

    def watch_layer(self) -> None:
        """Watch every pub/sub connection the layer has opened so far (channels_redis's
        RedisPubSubChannelLayer: one per shard, opened by the first subscription to it)."""
        get_layer = getattr(self.layer, "_get_layer", None)
        if get_layer is None:
            return  # the in-memory layer: nothing is lost in between
        shards = getattr(get_layer(), "_shards", None)
        if shards is None:
            log.warning("channel layer internals changed: lost pub/sub messages go unnoticed")
            return
        for shard in shards:
            pubsub = getattr(shard, "_pubsub", None)
            connection = getattr(pubsub, "connection", None)
            if connection is None or id(connection) in self._watches:
                continue
            watch = _SubscriptionWatch(self, pubsub)
            connection.register_connect_callback(watch.on_connect)
            self._watches[id(connection)] = watch

    def subscription_lost(self) -> None:
        log.error("a pub/sub connection to redis was lost and re-established: triggers "
                  "published in between never reached this process")
        metrics.counters["subscription_losses"] += 1
        self._lose()

    def redis_failed(self) -> None:
        """A request to the layer failed (the router's sends)."""
        self.degraded = True
        if not self._lost:  # the upkeep loop holds newer subscriptions on its next tick
            self._lose()

    def _lose(self) -> None:
        """Messages may be lost from now until the layer is whole again: the history
        subscriptions of every connection hold their live deliveries from here (the seam)."""
        self._lost = True
        for conn in list(self.local.conns.values()):
            conn.hold_live()

    async def _probe_subscriptions(self) -> bool:
        """A probe through this process's channel and through each watched pub/sub connection
        (on a channel it is subscribed to, so through its shard); True once all came back."""
        channels = {self.channel.name}
        for watch in self._watches.values():
            name = watch.probe_channel()
            if name is not None:
                channels.add(name)
        results = await asyncio.gather(*(self.channel.probe(channel=c) for c in channels))
        return all(results)

    def _resync(self) -> None:
        for conn in list(self.local.conns.values()):
            task = asyncio.ensure_future(conn.resync())
            self._resyncs.add(task)
            task.add_done_callback(self._resyncs.discard)
