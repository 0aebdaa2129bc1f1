"""Fan-out: routing triggers between processes, and delivering them inside one process.

Routing (``Router``), the part that decides speed and cost:

- A subscription joins the channel-layer group of its own canonical room (``*`` kept as a
  literal value) and the group of its room's shape (its sorted key set).
- A concrete trigger room (no ``*``) goes to the groups of its wildcard variants, but only for
  the wildcard masks that some subscription in the cluster uses for that shape (the cluster keeps
  that set; mask 0, the room itself, is always included). A room with k keys has at most 2^k
  variants; in practice one or two are in use.
- A trigger room that holds ``*`` goes to its shape's group; each process that holds rooms of
  that shape matches the trigger against its local index.
- One channel-layer message per group, never one per connection. Every copy carries the whole
  trigger, so the first copy a process receives delivers to every local subscription it matches
  and later copies of the same trigger id are ignored: exactly once per subscription.

Delivery (``Hub``): one Hub per process (event loop) owns one channel-layer channel, the local
``SubscriptionIndex``, the owners of client destinations, and the live connections. It encodes
each frame once per subscription and pushes it into that connection's bounded outbox.

History and acknowledged delivery (issue 8, docs/guarantees.md): a trigger that asks for history
is recorded (``Cluster.history_append``) *before* it is sent, and carries each recorded room's
offset; a subscription whose replay is being read holds its live frames in ``buffer`` for the
driver to merge. An acknowledged direct message is stored before it is sent, and its recipient
connections take it through ``Conn.deliver_message``, which remembers what they owe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from rooms import Room, SubscriptionIndex

from . import disconnect, metrics
from .cluster import Cluster, MemoryCluster, RedisCluster, now_iso
from .conf import conf, redis_urls
from .disconnect import Disconnect
from .errors import BrokerUnavailable
from .identity import client_room, parse_address, public_destination
from .messages import Close, Confirmed, DirectMessage, Trigger, from_wire
from .session import Subscription, dump_json
from .store import AckQuota

log = logging.getLogger("broker.hub")

CONTROL_GROUP = "cb.ctl"
JOIN_CONFIRM_TIMEOUT = 5.0  # seconds for a new group subscription to be confirmed (_join_group)
_SEEN_MAX = 65_536  # trigger ids remembered for dedupe; copies arrive within milliseconds
# Direct messages whose regex watches wait to be matched (see Hub._match_watches); beyond it
# the watchers' copies are dropped (counted as drops{cause="watch-backlog"}).
MAX_WATCH_BACKLOG = 1024


def room_group(room_key: str) -> str:
    return "cb.r." + hashlib.blake2b(room_key.encode(), digest_size=12).hexdigest()


def shape_group(shape_key: str) -> str:
    return "cb.s." + hashlib.blake2b(shape_key.encode(), digest_size=12).hexdigest()


class Conn(Protocol):
    """What the hub needs from a connection (the Receiver seam; implemented by
    broker.connection.Connection). The hub matches and dedupes; the connection decides how a
    delivery is shown, held, dropped (already replayed) or queued with its position."""

    id: str
    identity: Any

    def deliver(self, sub: Subscription, trigger: Trigger, room_key: str,
                offset: int | None) -> None: ...
    def deliver_message(self, message: DirectMessage) -> None: ...
    def deliver_watched(self, sub: Subscription, message: DirectMessage) -> None: ...
    def deliver_confirmed(self, event: Confirmed) -> None: ...
    def hold_live(self) -> None: ...
    async def resync(self) -> None: ...
    def close_soon(self, why: Disconnect) -> None: ...
    def info(self) -> dict[str, Any]: ...


class Router:
    """Sends triggers, direct messages and control messages to the right groups."""

    def __init__(self, layer: Any, cluster: Cluster,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.layer = layer
        self.cluster = cluster
        self.on_failure = on_failure

    async def groups_for(self, rooms: list[Room]) -> set[str]:
        concrete = {r.shape_key for r in rooms if r.is_concrete}
        masks = await self.cluster.masks(sorted(concrete)) if concrete else {}
        groups: set[str] = set()
        for r in rooms:
            if r.is_concrete:
                groups.update(room_group(v.key) for v in r.variants(masks[r.shape_key]))
            else:
                groups.add(shape_group(r.shape_key))
        return groups

    async def send(self, groups: set[str], message: dict[str, Any]) -> None:
        try:
            await asyncio.gather(*(self.layer.group_send(g, message) for g in groups))
        except Exception as exc:  # noqa: BLE001 - the layer's errors are not a documented type
            if self.on_failure is not None:
                self.on_failure()
            raise BrokerUnavailable(f"channel layer: {type(exc).__name__}: {exc}") from None

    async def publish(self, rooms: list[Room], data_json: str, history: bool = False,
                      trigger_id: str | None = None) -> str:
        """``trigger_id``: the client's own (checked by ``broker.publish``), which makes a
        retry idempotent: recorded once (within BROKER_TRIGGER_ID_TTL) and, through the
        receivers' dedupe by id, delivered once to a subscription that had it already."""
        once_ttl = conf().BROKER_TRIGGER_ID_TTL if trigger_id is not None else 0
        trigger_id = trigger_id or uuid.uuid4().hex
        message: dict[str, Any] = {"type": "cb.trigger", "id": trigger_id,
                                   "rooms": [r.key for r in rooms], "data": data_json}
        if history:
            # Recorded before it is sent: a subscriber that reads the history after joining
            # the group can then miss nothing (it dedupes what it gets both ways by id).
            c = conf()
            recorded = c.history_policy.recorded(rooms)
            if recorded:
                message["offsets"] = await self.cluster.history_append(
                    [(r.key, rule) for r, rule in recorded], trigger_id, data_json,
                    c.BROKER_HISTORY_META_TTL, once_ttl)
        await self.send(await self.groups_for(rooms), message)
        metrics.counters["triggers"] += 1
        return trigger_id

    async def direct(self, sender: str | None, destination: str, room: Room, data_json: str,
                     text: str | None, ack: bool = False, content_type: str | None = None
                     ) -> str:
        message_id = uuid.uuid4().hex
        flag = ',"ack":true' if ack else ""
        # shown as clients name them (``/agent/bob``); the addresses route (broker.identity)
        message_json = (f'{{"type":"message","from":{dump_json(public_destination(sender))},'
                        f'"to":{dump_json(public_destination(destination))},"data":{data_json},'
                        f'"id":"{message_id}"{flag}}}')
        message: dict[str, Any] = {
            "type": "cb.direct", "id": message_id, "room": room.key, "to": destination,
            "from": sender, "message": message_json, "data": data_json, "text": text}
        if content_type is not None and text is not None:  # STOMP receivers see it (§4.3)
            message["content_type"] = content_type
        if ack:
            # Stored before it is sent, so a recipient connecting meanwhile finds it (and
            # dedupes the live copy by id).
            message["ack"] = True
            c = conf()
            await self.cluster.ack_store(message, c.BROKER_ACK_TTL, AckQuota(
                c.BROKER_ACK_MAX_PENDING_PER_RECIPIENT, c.BROKER_ACK_MAX_BYTES_PER_RECIPIENT,
                c.BROKER_ACK_MAX_PENDING_PER_SENDER, c.BROKER_ACK_MAX_BYTES_PER_SENDER,
                c.BROKER_ACK_MAX_TOTAL_BYTES))
        await self.send(await self.groups_for([room]), message)
        metrics.counters["direct_messages"] += 1
        return message_id

    async def confirmed(self, sender: str, message_id: str, recipient: str) -> None:
        """Tell the sender's connections, wherever they are, that a message is confirmed."""
        target = parse_address(sender)
        if target is None:
            return
        room = client_room(*target)
        await self.send(await self.groups_for([room]), {
            "type": "cb.confirmed", "id": f"confirmed.{message_id}", "message_id": message_id,
            "to": sender, "by": recipient})

    async def control(self, **message: Any) -> None:
        await self.send({CONTROL_GROUP}, {"type": "cb.control", **message})


class _SubscriptionWatch:
    """Watches one pub/sub connection of the channel layer (channels_redis's pub/sub layer
    keeps one per Redis shard). Redis drops a subscriber that falls behind
    (``client-output-buffer-limit pubsub``), a restart or ``CLIENT KILL`` drops them all, and
    redis-py then reconnects and re-subscribes without a word: whatever was published in
    between is lost to this process. A connection reconnects only after such a loss, so every
    connect after the first is reported (redis-py runs its connect callbacks right after it
    has re-sent SUBSCRIBE, before any message of the new connection is read)."""

    def __init__(self, hub: Hub, pubsub: Any) -> None:
        self.hub = hub
        self.pubsub = pubsub

    def on_connect(self, connection: Any) -> None:
        self.hub._subscription_lost()

    def probe_channel(self) -> str | None:
        """A channel this connection is subscribed to, to probe it end to end."""
        for name in self.pubsub.channels:
            return name.decode() if isinstance(name, bytes) else str(name)
        return None


class Hub:
    def __init__(self, layer: Any, cluster: Cluster) -> None:
        self.layer = layer
        self.cluster = cluster
        self.router = Router(layer, cluster, on_failure=self._on_redis_failure)
        self.index: SubscriptionIndex[Subscription] = SubscriptionIndex()
        self.conns: dict[str, Conn] = {}
        self.owners: dict[str, set[Conn]] = {}  # client destination -> its local connections
        self.started_at = now_iso()
        self.channel = ""
        self._refs: Counter[str] = Counter()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dirty: set[str] = set()
        # Registry writes are ordered: a heartbeat snapshots and writes the whole state under
        # this lock, so it can never re-add an entry that a concurrent unregister just removed.
        self._registry_lock = asyncio.Lock()
        # Redis failed a request of this process since the last successful heartbeat.
        self.degraded = False
        self._probes: dict[str, asyncio.Future[None]] = {}
        # Pub/sub connections watched for reconnects (by id), and whether one lost messages
        # that the clients have not been told about yet.
        self._watches: dict[int, _SubscriptionWatch] = {}
        self._lost = False
        self._resyncs: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_counts: tuple[float, int, int, int] = (time.monotonic(), 0, 0, 0)
        # Regex watches (STOMP destination-type:1) are matched by one worker thread, in order.
        self._matcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="combroker-watch")
        self._watch_backlog = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.channel = await self.layer.new_channel("cb.proc.")
        await self.layer.group_add(CONTROL_GROUP, self.channel)
        self._watch_layer()
        await self._heartbeat()
        self._tasks = [asyncio.ensure_future(self._receive_loop()),
                       asyncio.ensure_future(self._registry_loop())]
        from .shutdown import install_signal_hooks

        install_signal_hooks()  # uvicorn: SIGTERM closes clients with 1001 first

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._matcher.shutdown(wait=False, cancel_futures=True)
        await self.cluster.stop()

    async def quiesce(self, timeout: float = 1.0) -> bool:
        """Wait until the messages the layer holds for this process now are dispatched (a
        probe sent now comes back behind them; graceful shutdown). False on timeout."""
        return await self._probe(timeout)

    # ------------------------------------------------------------ refcounted resources

    async def _acquire(self, name: str, on_first: Callable[[], Awaitable[None]]) -> None:
        """Hold ``name``; the first holder runs ``on_first`` and every holder waits for it.

        Invariant: ``_refs[name] > 0`` exactly while the resource is held or being acquired, so
        the second subscriber of a room never replies before the group join has completed.
        """
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

    async def _release(self, name: str, on_last: Callable[[], Awaitable[None]]) -> None:
        if self._release_ref(name):
            try:
                await on_last()
            except Exception as exc:  # noqa: BLE001 - leaving during an outage: Redis forgot us
                log.warning("release %s failed: %s", name, exc)

    async def _join_group(self, group: str) -> None:
        """Join ``group`` and return only once messages sent to it really reach this process.

        The pub/sub layer's group_add writes SUBSCRIBE and returns before Redis has processed
        it; a PUBLISH arriving from another connection in between is not delivered to us. A
        subscriber told "success" (or a history replay that reads the stream) at that moment
        would miss a trigger. So a probe is published to the group itself, again every 50 ms,
        until one comes back: Redis then has processed the SUBSCRIBE.
        """
        try:
            await self.layer.group_add(group, self.channel)
        except Exception as exc:  # noqa: BLE001 - the layer's errors are not a documented type
            raise BrokerUnavailable(f"channel layer: {type(exc).__name__}: {exc}") from None
        self._watch_layer()  # the first group on a shard opens its connection
        if not await self._probe(group=group, timeout=JOIN_CONFIRM_TIMEOUT, resend=0.05):
            raise BrokerUnavailable(f"joining {group} was not confirmed within "
                                    f"{JOIN_CONFIRM_TIMEOUT} s")

    def _room_resources(self, room: Room) -> list[tuple[str, Callable[[], Awaitable[None]],
                                                         Callable[[], Awaitable[None]]]]:
        group, sgroup = room_group(room.key), shape_group(room.shape_key)

        async def join_room() -> None:
            await self._join_group(group)
            await self.cluster.room_added(room.key)

        async def leave_room() -> None:
            await self.layer.group_discard(group, self.channel)
            await self.cluster.room_removed(room.key)

        async def join_shape() -> None:
            await self._join_group(sgroup)

        async def leave_shape() -> None:
            await self.layer.group_discard(sgroup, self.channel)

        out = [(group, join_room, leave_room), (sgroup, join_shape, leave_shape)]
        if not room.is_concrete:
            async def add_mask() -> None:
                await self.cluster.add_mask(room.shape_key, room.mask)

            async def nothing() -> None:
                return None

            out.append((f"mask:{room.shape_key}:{room.mask}", add_mask, nothing))
        return out

    # ------------------------------------------------------------ connections

    async def attach(self, conn: Conn) -> None:
        dest = conn.identity.destination
        self.conns[conn.id] = conn
        try:
            if dest:
                room = conn.identity.client_room
                group = room_group(room.key)
                await self._acquire(group, lambda: self._join_group(group))
                first = dest not in self.owners
                self.owners.setdefault(dest, set()).add(conn)
                async with self._registry_lock:
                    await self.cluster.register(conn.id, conn.info(), dest, first)
            else:
                async with self._registry_lock:
                    await self.cluster.register(conn.id, conn.info(), None, False)
        except BaseException:
            await self.detach(conn, [])
            raise
        metrics.gauges["connections"] = len(self.conns)
        metrics.counters["connections_opened"] += 1

    async def detach(self, conn: Conn, subscriptions: list[Subscription]) -> None:
        if self.conns.pop(conn.id, None) is None:
            return
        await self.unsubscribe(subscriptions)
        dest = conn.identity.destination
        last = False
        if dest and conn in self.owners.get(dest, ()):
            owners = self.owners[dest]
            owners.discard(conn)
            last = not owners
            if last:
                del self.owners[dest]
            group = room_group(conn.identity.client_room.key)
            await self._release(group, lambda: self.layer.group_discard(group, self.channel))
        self._dirty.discard(conn.id)
        metrics.gauges["connections"] = len(self.conns)
        try:
            async with self._registry_lock:
                await self.cluster.unregister(conn.id, dest, last)
        except BrokerUnavailable:
            pass  # the heartbeat rewrites the registry from live state once Redis is back

    # ------------------------------------------------------------ subscriptions

    async def subscribe(self, sub: Subscription) -> None:
        held: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        try:
            for name, on_first, on_last in self._room_resources(sub.room):
                await self._acquire(name, on_first)
                held.append((name, on_last))
        except BaseException:
            for name, on_last in held:
                await self._release(name, on_last)
            raise
        self.index.add(sub.room, sub)
        metrics.gauges["subscriptions"] += 1
        self._dirty.add(sub.owner.id)

    async def unsubscribe(self, subs: list[Subscription]) -> None:
        for sub in subs:
            self.index.discard(sub.room, sub)
            metrics.gauges["subscriptions"] -= 1
            for name, _on_first, on_last in self._room_resources(sub.room):
                await self._release(name, on_last)
            if sub.owner is not None and sub.owner.id in self.conns:
                self._dirty.add(sub.owner.id)

    # ------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("channel layer receive failed")
                await asyncio.sleep(0.5)
                continue
            try:
                self.dispatch(message)
            except Exception:
                log.exception("dispatch of %s failed", message.get("type"))

    def _first_copy(self, message_id: str) -> bool:
        if message_id in self._seen:
            return False
        self._seen[message_id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "cb.trigger":
            # Copies received, duplicates included: how often triggers woke this process.
            metrics.counters["triggers_received"] += 1
            if self._first_copy(message["id"]):
                self._deliver_trigger(message)
        elif kind == "cb.direct":
            if self._first_copy(message["id"]):
                self._deliver_direct(message)
        elif kind == "cb.confirmed":
            if self._first_copy(message["id"]):
                self._deliver_confirmed(message)
        elif kind == "cb.control":
            self._control(message)
        elif kind == "cb.probe":
            probe = self._probes.get(message.get("token", ""))
            if probe is not None and not probe.done():
                probe.set_result(None)

    def _deliver_trigger(self, message: dict[str, Any]) -> None:
        trigger = from_wire(message)
        assert isinstance(trigger, Trigger)
        offsets = trigger.offsets
        delivered: set[Subscription] = set()
        for key in trigger.rooms:
            for sub in self.index.match(Room.from_key(key)):
                if sub in delivered:
                    continue
                delivered.add(sub)
                room_key, offset = key, None
                if offsets is not None:
                    # A recorded trigger names the subscription's own room when it can: that
                    # is the offset sequence the subscription resumes from.
                    own = sub.room.key
                    if own in offsets:
                        room_key, offset = own, offsets[own]
                    else:
                        offset = offsets.get(key)
                sub.owner.deliver(sub, trigger, room_key, offset)
        metrics.counters["deliveries"] += len(delivered)

    def _deliver_direct(self, wire: dict[str, Any]) -> None:
        message = from_wire(wire)
        assert isinstance(message, DirectMessage)
        n = 0
        for conn in self.owners.get(message.to, ()):
            conn.deliver_message(message)
            n += 1
        room = Room.from_key(message.room)
        patterned: list[Subscription] = []
        for sub in self.index.match(room):
            if sub.pattern is not None:
                patterned.append(sub)
                continue
            sub.owner.deliver_watched(sub, message)
            n += 1
        metrics.counters["deliveries"] += n
        if patterned:
            self._match_watches(room, patterned, message)

    def _match_watches(self, room: Room, subs: list[Subscription],
                       message: DirectMessage) -> None:
        """Match regex watches off the event loop. RE2 is linear, but a large program costs
        milliseconds per destination, times the watches: the worker thread pays it (RE2
        releases the GIL), so it delays only these copies (in order: one worker), never another
        client. A watch that ended meanwhile gets nothing."""
        if self._watch_backlog >= MAX_WATCH_BACKLOG:
            # The watchers cannot be served in time: like any consumer that falls that far
            # behind, each is told by its close (4008 ``slow``; STOMP: ERROR, then the close).
            metrics.drop("watch-backlog", len(subs))
            log.warning("regex watches %d messages behind: %d watchers' copies dropped, "
                        "their connections closed as slow", self._watch_backlog, len(subs))
            for sub in subs:
                sub.owner.close_soon(disconnect.SLOW)
            return
        self._watch_backlog += 1
        dest = public_destination(message.to)  # what a destination-type:1 pattern is matched to
        loop = asyncio.get_running_loop()

        def match() -> list[Subscription]:
            return [s for s in subs if s.pattern is not None and s.pattern.fullmatch(dest)]

        def matched(future: Future[list[Subscription]]) -> None:
            self._watch_backlog -= 1
            if future.cancelled():
                return
            if future.exception() is not None:
                log.error("regex watches failed", exc_info=future.exception())
                return
            live = set(self.index.match(room))
            hits = [s for s in future.result() if s in live]
            for sub in hits:
                sub.owner.deliver_watched(sub, message)
            metrics.counters["deliveries"] += len(hits)

        def done(future: Future[list[Subscription]]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed first (shutdown)
                loop.call_soon_threadsafe(matched, future)

        self._matcher.submit(match).add_done_callback(done)

    def _deliver_confirmed(self, message: dict[str, Any]) -> None:
        event = from_wire(message)
        assert isinstance(event, Confirmed)
        for conn in self.owners.get(event.to, ()):
            conn.deliver_confirmed(event)

    def _control(self, message: dict[str, Any]) -> None:
        close = from_wire(message)
        if not isinstance(close, Close):
            return
        for conn in list(self.conns.values()):
            if close.matches(conn.id, conn.identity.login_id, conn.identity.destination):
                conn.close_soon(close.disconnect)

    # ------------------------------------------------------------ registry upkeep

    def _stats(self) -> dict[str, Any]:
        now = time.monotonic()
        t0, tr0, de0, dr0 = self._last_counts
        tr, de = metrics.counters["triggers"], metrics.counters["deliveries"]
        dr = sum(metrics.drops.values())
        dt = max(now - t0, 1e-6)
        self._last_counts = (now, tr, de, dr)
        return {"proc": self.cluster.proc_id, "pid": os.getpid(), "connections": len(self.conns),
                "rooms": self.index.room_count(), "triggers": tr, "deliveries": de, "drops": dr,
                "triggers_per_s": round((tr - tr0) / dt, 2),
                "deliveries_per_s": round((de - de0) / dt, 2),
                "drops_per_s": round((dr - dr0) / dt, 2), "online_since": self.started_at}

    async def _heartbeat(self) -> bool:
        async with self._registry_lock:
            self._dirty.clear()
            rooms = list(self.index.rooms())
            return await self.cluster.heartbeat(
                {cid: c.info() for cid, c in self.conns.items()},
                [r.key for r in rooms], list(self.owners), self._stats(),
                [(r.shape_key, r.mask) for r in rooms if not r.is_concrete])

    async def _registry_loop(self) -> None:
        """Heartbeat every TTL/3; in between, twice a second, flush changed connection entries
        and this process's stats (the monitor console's per-second rates).

        While Redis is unreachable the heartbeat is retried on every tick. When it succeeds
        again, messages published during the outage are lost to this process's clients; the
        same holds after a pub/sub connection of the layer reconnected (``_SubscriptionWatch``).
        Each connection is then told (rich dialect: ``{"type":"resync"}``), and its history
        subscriptions get what they missed replayed (``Connection.resync``).
        """
        interval = max(conf().BROKER_REGISTRY_TTL / 3, 0.2)
        next_beat = time.monotonic() + interval
        while True:
            await asyncio.sleep(min(0.5, interval))
            try:
                if self.degraded or self._lost or time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    known = await self._heartbeat()
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
                                    len(self.conns))
                        self._resync()
                else:
                    dirty, self._dirty = self._dirty, set()
                    await self.cluster.update(
                        {cid: self.conns[cid].info() for cid in dirty if cid in self.conns},
                        self._stats())
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
        for message_id, sender, recipient in await self.cluster.ack_sweep():
            log.info("acknowledged message %s completed: its other holders' process is gone",
                     message_id)
            if sender:
                await self.router.confirmed(sender, message_id, recipient)

    def _watch_layer(self) -> None:
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

    def _subscription_lost(self) -> None:
        log.error("a pub/sub connection to redis was lost and re-established: triggers "
                  "published in between never reached this process")
        metrics.counters["subscription_losses"] += 1
        self._lose()

    def _lose(self) -> None:
        """Messages may be lost from now until the layer is whole again: the history
        subscriptions of every connection hold their live frames from here (the seam)."""
        self._lost = True
        for conn in list(self.conns.values()):
            conn.hold_live()

    async def _probe_subscriptions(self) -> bool:
        """A probe through this process's channel and through each watched pub/sub connection
        (on a channel it is subscribed to, so through its shard); True once all came back."""
        channels = {self.channel}
        for watch in self._watches.values():
            name = watch.probe_channel()
            if name is not None:
                channels.add(name)
        results = await asyncio.gather(*(self._probe(channel=c) for c in channels))
        return all(results)

    async def _probe(self, timeout: float = 2.0, group: str | None = None,
                     resend: float | None = None, channel: str | None = None) -> bool:
        """Send a probe through the layer, to ``channel`` (default: this process's own) or to
        ``group`` (every ``resend`` seconds if given); True once one comes back within
        ``timeout``: that path works end to end. Other processes in the group (or subscribed to
        that channel's group) ignore the unknown token."""
        token = uuid.uuid4().hex
        message = {"type": "cb.probe", "token": token}
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[token] = future
        deadline = time.monotonic() + timeout
        try:
            while True:
                if group is None:
                    await self.layer.send(channel or self.channel, message)
                else:
                    await self.layer.group_send(group, message)
                left = deadline - time.monotonic()
                wait = left if resend is None else min(resend, left)
                done, _ = await asyncio.wait([future], timeout=max(wait, 0))
                if done:
                    return True
                if time.monotonic() >= deadline:
                    return False
        except Exception:  # noqa: BLE001 - any failure means: not yet
            return False
        finally:
            self._probes.pop(token, None)

    def _on_redis_failure(self) -> None:
        self.degraded = True
        if not self._lost:  # the registry loop holds newer subscriptions on its next tick
            self._lose()

    def _resync(self) -> None:
        for conn in list(self.conns.values()):
            task = asyncio.ensure_future(conn.resync())
            self._resyncs.add(task)
            task.add_done_callback(self._resyncs.discard)


# ---------------------------------------------------------------- one hub per event loop

_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
_starting: dict[asyncio.AbstractEventLoop, asyncio.Future[Hub]] = {}


def make_cluster() -> Cluster:
    proc_id = f"{os.getpid()}-{secrets.token_hex(4)}"
    urls = redis_urls()
    c = conf()
    if urls:
        return RedisCluster(proc_id, urls[0], c.BROKER_KEY_PREFIX, c.BROKER_REGISTRY_TTL)
    return MemoryCluster(proc_id)


async def get_hub() -> Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None:
        return hub
    starting = _starting.get(loop)
    if starting is None:
        from channels.layers import get_channel_layer

        async def start() -> Hub:
            new = Hub(get_channel_layer(), make_cluster())
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
