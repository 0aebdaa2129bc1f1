"""The hub: this process's index of subscriptions, and dispatch of what the layer brings.

One hub per process (event loop, ``broker.fanout.running``) owns one channel-layer channel
(``ProcessChannel``), the local ``SubscriptionIndex``, the owners of client destinations and
the live connections. It composes the other nouns of fan-out:

- ``Router`` (``router.py``): sends typed messages to groups; what the driver calls to publish;
- ``Membership`` (``membership.py``): the groups this process is in, ref-counted;
- ``Upkeep`` (``upkeep.py``): the registry, degraded/lost/resync;
- ``Presence`` (``presence.py``): this process's presence counts in the store; the hub turns
  their transitions into join/leave events for subscribers (``PresenceEvent``, to the room's
  group) and lifecycle events for the backend (``broker.lifecycle``);
- ``Stores`` (``broker.stores``): registry, history, resume states, acknowledged messages.

Dispatch: each channel-layer message becomes a typed value (``messages.from_wire``); the first
copy of an id is delivered and later copies are ignored (one copy per group arrives); a
trigger is matched against the index and handed to each matching subscription's owner
(``Receiver.deliver``) once, with the room it is shown under and, for a recorded trigger, its
offset there; a direct message goes to the owners of its destination and to the watchers of
its room. The hub never encodes a frame: the connection does (``broker.fanout.receiver``).

Regex watches (STOMP destination-type:1) are matched off the event loop by one worker thread,
in order; when it falls MAX_WATCH_BACKLOG messages behind, the watchers' copies are dropped
and each watcher is closed as slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rooms import Room, SubscriptionIndex

from .. import disconnect, lifecycle, messages, metrics
from ..errors import BrokerUnavailable
from ..identity import public_destination
from ..messages import (
    Close, Confirmed, DirectMessage, DropRooms, Notify, PresenceEvent, Probe, Recheck, Trigger,
    from_wire,
)
from ..presence import ANONYMOUS, ONLINE, Transition, lifecycle_events
from ..subscription import Subscription
from ..stores import Stores
from .channel import ProcessChannel
from ..coalesce import Coalesced
from .membership import Membership
from .presence import Presence
from .receiver import Receiver
from .router import CONTROL_GROUP, Router
from .settings import FanoutSettings
from .upkeep import Upkeep

log = logging.getLogger("broker.hub")

_SEEN_MAX = 65_536  # message ids remembered for dedupe; copies arrive within milliseconds
# Direct messages whose regex watches wait to be matched (see Hub._match_watches); beyond it
# the watchers' copies are dropped (counted as drops{cause="watch-backlog"}).
MAX_WATCH_BACKLOG = 1024
# Messages delivered once per id, whichever group's copy comes first.
_ONCE = frozenset({messages.TRIGGER, messages.DIRECT, messages.CONFIRMED, messages.PRESENCE})


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Hub:
    def __init__(self, layer: Any, stores: Stores, settings: FanoutSettings) -> None:
        self.layer = layer
        self.stores = stores
        self.index: SubscriptionIndex[Subscription] = SubscriptionIndex()
        self.conns: dict[str, Receiver] = {}
        self.owners: dict[str, set[Receiver]] = {}  # client destination -> local connections
        self.started_at = now_iso()
        self.channel = ProcessChannel(layer)
        self.router = Router(layer, stores, settings)
        self.upkeep = Upkeep(self, layer, self.channel, stores, self.router,
                             settings.registry_ttl)
        self.router.on_failure = self.upkeep.redis_failed
        self.membership = Membership(layer, self.channel, stores.registry,
                                     self.upkeep.watch_layer)
        self.presence = Presence(stores.presence, settings.presence_policy,
                                 self._presence_changed)
        self.webhooks = settings.webhooks  # lifecycle events are queued for the webhook
        # Who is online serves only the lifecycle events: counted when someone listens (the
        # webhook, or a receiver of the Django signal connected before the first connection).
        self.track_online = settings.presence_policy.enabled and lifecycle.wanted(self.webhooks)
        # lifecycle events leave in the order of their transitions, a batch at a time
        self._lifecycle: Coalesced[list[dict[str, Any]], None] = Coalesced(self._emit)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._telling: set[asyncio.Future[None]] = set()  # presence and lifecycle sends
        # Regex watches (STOMP destination-type:1) are matched by one worker thread, in order.
        self._matcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="combroker-watch")
        self._watch_backlog = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.channel.open()
        await self.layer.group_add(CONTROL_GROUP, self.channel.name)
        self.upkeep.watch_layer()
        await self.upkeep.heartbeat()
        self._tasks = [asyncio.ensure_future(self._receive_loop()),
                       asyncio.ensure_future(self.upkeep.run())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        try:
            await self.presence.leave()  # its members leave now, not once found dead
            await asyncio.wait_for(asyncio.gather(*self._telling, return_exceptions=True), 2.0)
        except (BrokerUnavailable, TimeoutError) as exc:
            log.warning("presence not left at stop (%s): swept once found dead", exc)
        self._matcher.shutdown(wait=False, cancel_futures=True)
        await self.stores.close()

    async def quiesce(self, timeout: float = 1.0) -> bool:
        """Wait until the messages the layer holds for this process now are dispatched (a
        probe sent now comes back behind them; graceful shutdown). False on timeout."""
        return await self.channel.probe(timeout)

    # ------------------------------------------------------------ connections

    async def attach(self, conn: Receiver) -> None:
        dest = conn.identity.destination
        self.conns[conn.id] = conn
        if dest and self.track_online:
            self.presence.change(ONLINE, dest, 1)  # detach counts it out, whatever happens
        try:
            room = conn.identity.client_room
            if dest and room is not None:
                await self.membership.join_owner(room)
                first = dest not in self.owners
                self.owners.setdefault(dest, set()).add(conn)
                await self.upkeep.register(conn, dest, first)
            else:
                await self.upkeep.register(conn, None, False)
        except BaseException:
            await self.detach(conn, [])
            raise
        metrics.gauges["connections"] = len(self.conns)
        metrics.counters["connections_opened"] += 1

    async def detach(self, conn: Receiver, subscriptions: list[Subscription]) -> None:
        if self.conns.pop(conn.id, None) is None:
            return
        await self.unsubscribe(subscriptions)
        dest = conn.identity.destination
        if dest and self.track_online:
            self.presence.change(ONLINE, dest, -1)
        last = False
        room = conn.identity.client_room
        if dest and room is not None and conn in self.owners.get(dest, ()):
            owners = self.owners[dest]
            owners.discard(conn)
            last = not owners
            if last:
                del self.owners[dest]
            await self.membership.leave_owner(room)
        metrics.gauges["connections"] = len(self.conns)
        with contextlib.suppress(BrokerUnavailable):
            # the heartbeat rewrites the registry from live state once Redis is back
            await self.upkeep.unregister(conn.id, dest, last)

    # ------------------------------------------------------------ subscriptions

    async def subscribe(self, sub: Subscription) -> None:
        await self.membership.join_room(sub.room)
        sub.room = self.index.shared(sub.room)  # one Room object per room, not per subscriber
        self.index.add(sub.room, sub)
        metrics.gauges["subscriptions"] += 1
        self.upkeep.dirty.add(sub.owner.id)
        if self.presence.policy.tracked(sub.room):
            # the member is in the room's presence before the client hears "success"
            await self.presence.change(sub.room.key, _member(sub), 1)

    async def unsubscribe(self, subs: list[Subscription]) -> None:
        for sub in subs:
            counted = sub in self.index.exactly(sub.room.key)
            self.index.discard(sub.room, sub)
            metrics.gauges["subscriptions"] -= 1
            if counted and self.presence.policy.tracked(sub.room):
                self.presence.change(sub.room.key, _member(sub), -1)
            await self.membership.leave_room(sub.room)
            if sub.owner is not None and sub.owner.id in self.conns:
                self.upkeep.dirty.add(sub.owner.id)

    # ------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel.name)
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

    def dispatch(self, wire: dict[str, Any]) -> None:
        """One channel-layer message for this process (its wire form). A later copy of a
        message with an id is dropped before it is parsed (one copy per group arrives)."""
        kind = wire.get("type")
        if kind == messages.TRIGGER:
            # Copies received, duplicates included: how often triggers woke this process.
            metrics.counters["triggers_received"] += 1
        if kind in _ONCE and not self._first_copy(str(wire.get("id"))):
            return
        message = from_wire(wire)
        if isinstance(message, Trigger):
            self._deliver_trigger(message)
        elif isinstance(message, DirectMessage):
            self._deliver_direct(message)
        elif isinstance(message, Confirmed):
            self._deliver_confirmed(message)
        elif isinstance(message, Close):
            self._close(message)
        elif isinstance(message, Probe):
            self.channel.answered(message)
        elif isinstance(message, PresenceEvent):
            self._deliver_presence(message)
        elif isinstance(message, (Notify, DropRooms, Recheck)):
            self._server_api(message)

    def _deliver_trigger(self, trigger: Trigger) -> None:
        offsets, exclude = trigger.offsets, trigger.exclude
        delivered: set[Subscription] = set()
        skipped = 0
        for key in trigger.rooms:
            for sub in self.index.match(Room.from_key(key)):
                if sub in delivered:
                    continue
                delivered.add(sub)
                if exclude is not None and sub.owner.id == exclude:
                    skipped += 1
                    continue  # the sender's own echo (``publish(..., exclude=)``)
                if sub.filter is not None and not sub.filter.matches(trigger.tags):
                    skipped += 1
                    continue  # its event filter refuses the trigger's tags (broker.filters)
                if offsets is None:
                    sub.owner.deliver(sub, trigger, key, None)
                    continue
                # A recorded trigger names the subscription's own room when it can: that is
                # the offset sequence the subscription resumes from.
                own = sub.room.key
                if own in offsets:
                    sub.owner.deliver(sub, trigger, own, offsets[own])
                else:
                    sub.owner.deliver(sub, trigger, key, offsets.get(key))
        metrics.counters["deliveries"] += len(delivered) - skipped

    def _deliver_direct(self, message: DirectMessage) -> None:
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

    def _deliver_presence(self, event: PresenceEvent) -> None:
        """To the subscriptions of exactly that room that asked for presence."""
        for sub in self.index.exactly(event.room_key):
            if sub.presence:
                sub.owner.deliver_presence(sub, event)

    # ------------------------------------------------------------ presence

    def _presence_changed(self, transitions: list[Transition]) -> None:
        """Transitions this process was told of (its own changes', or a dead process's
        sweep): join/leave to the rooms' presence subscribers, lifecycle events to the
        backend. Each is told to one process only, once."""
        events = [PresenceEvent(uuid.uuid4().hex, t.kind, t.room_key, t.member)
                  for t in transitions if t.room_key != ONLINE and t.member != ANONYMOUS]
        if events:
            self._tell(self.router.presence(events), "presence events")
        if not lifecycle.wanted(self.webhooks):
            return
        backend = lifecycle_events(transitions, self.presence.policy, time.time())
        if backend:
            self._tell(self._lifecycle.soon(backend), "lifecycle events")

    async def _emit(self, batches: list[list[dict[str, Any]]]) -> list[None]:
        await lifecycle.emit([e for batch in batches for e in batch], self.stores, self.webhooks)
        return [None] * len(batches)

    def _tell(self, sending: Any, what: str) -> None:
        task: asyncio.Future[None] = asyncio.ensure_future(sending)
        self._telling.add(task)

        def done(task: asyncio.Future[None]) -> None:
            self._telling.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s not sent: %s", what, task.exception())

        task.add_done_callback(done)

    def _deliver_confirmed(self, event: Confirmed) -> None:
        for conn in self.owners.get(event.to, ()):
            conn.deliver_confirmed(event)

    def _close(self, message: Close) -> None:
        for conn in list(self.conns.values()):
            identity = conn.identity
            if message.matches(conn.id, identity.login_id, identity.destination,
                               conn.connected_at):
                conn.close_soon(message.disconnect)

    def _server_api(self, message: Notify | DropRooms | Recheck) -> None:
        """The server API's messages (broker.api), on the control group: each local
        connection it reaches (by login, or every one for a broadcast) is handed it."""
        n = 0
        for conn in list(self.conns.values()):
            if not message.reaches(conn.identity):
                continue
            if isinstance(message, Notify):
                conn.deliver_notice(message)
                n += 1
            elif isinstance(message, DropRooms):
                conn.drop_rooms(message.rooms)
            else:
                conn.recheck()
        metrics.counters["deliveries"] += n


def _member(sub: Subscription) -> str:
    """Who a subscription counts as in its room's presence (``broker.presence``)."""
    return sub.owner.identity.destination or ANONYMOUS
