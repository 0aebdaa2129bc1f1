"""This process's part of presence: its own counts, and keeping the store's copy of them true.

The hub tells ``Presence`` of each change (``change``: a subscription to a tracked room, or a
connection with a login, came or went). The count is changed here at once; the store gets the
changes of every call made meanwhile in one ``apply`` (``Coalesced``, in order), and the
transitions it answers go to ``on_transitions`` (the hub: join/leave frames, lifecycle events).

When the store refuses a batch (this process was found dead: a stall longer than the registry
allows, or Redis lost its data) or Redis fails, the changes stay here and ``upkeep`` sends the
whole state instead (``sync``) once the heartbeat is fresh again; changes queued before that
state was read are not sent again (each change has a number; the sync records the last one it
covers). ``upkeep`` also sweeps the processes found dead, so that their members leave. The
store is called by one caller at a time (``_lock``): a sync never runs beside an apply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from ..errors import BrokerUnavailable
from ..presence import PresencePolicy, Transition
from ..stores import PresenceStore
from ..coalesce import Coalesced

log = logging.getLogger("broker.presence")

_Change = tuple[int, str, str, int]  # (number, room key, member, +/-1)


class Presence:
    __slots__ = ("_apply", "_known", "_local", "_lock", "_seq", "_stale", "_synced",
                 "on_transitions", "policy", "store")

    def __init__(self, store: PresenceStore, policy: PresencePolicy,
                 on_transitions: Callable[[list[Transition]], None]) -> None:
        self.store = store
        self.policy = policy
        self.on_transitions = on_transitions
        self._local: Counter[tuple[str, str]] = Counter()
        self._seq = 0  # the number of the last change
        self._synced = 0  # changes up to this number are in the store by a sync
        self._known = False  # the store holds counts of this process
        self._stale = False  # the store's copy is not ours: sync at the next upkeep
        self._lock = asyncio.Lock()
        self._apply: Coalesced[_Change, None] = Coalesced(self._apply_batch)

    def change(self, room_key: str, member: str, delta: int) -> asyncio.Future[None]:
        """Count ``delta`` connections of ``member`` in ``room_key``; the future is done once
        the store has it (or it waits for the next sync). Never fails."""
        key = (room_key, member)
        count = self._local[key] + delta
        if count > 0:
            self._local[key] = count
        else:
            del self._local[key]
        self._seq += 1
        return self._apply.soon((self._seq, room_key, member, delta))

    async def _apply_batch(self, changes: list[_Change]) -> list[None]:
        done: list[None] = [None] * len(changes)
        async with self._lock:
            todo = [(room, member, delta) for seq, room, member, delta in changes
                    if seq > self._synced]
            if not todo or self._stale:
                return done  # the next sync sends the whole state, these included
            try:
                found = await self.store.apply(todo, self._known)
            except BrokerUnavailable as exc:
                log.warning("presence not stored (%s): sent again once Redis is back", exc)
                self._stale = True
                return done
            if found is None:
                log.warning("presence: this process was found dead (a stall, or Redis lost "
                            "its data): its whole state is sent again")
                self._stale = True
                return done
            self._known = True
        self._tell(found)
        return done

    def forgotten(self) -> None:
        """The registry forgot this process (Redis lost its data): so did the store."""
        self._stale = True

    async def upkeep(self) -> None:
        """At each upkeep tick, after the heartbeat: send the whole state if the store's copy
        may not be ours, then sweep the processes found dead. Raises BrokerUnavailable."""
        if self._stale:
            await self.sync()
        async with self._lock:
            swept, lost = await self.store.sweep(self._known)
        self._tell(swept)
        if lost:
            log.warning("presence: this process was found dead (a stall): its whole state is "
                        "sent again")
            await self.sync()

    async def sync(self) -> None:
        async with self._lock:
            state, seq = dict(self._local), self._seq
            found = await self.store.sync(state)
            self._synced, self._known, self._stale = seq, bool(state), False
        self._tell(found)

    async def leave(self) -> None:
        """The process stops: its members leave now, not once it is found dead."""
        self._local.clear()
        await self.sync()

    def _tell(self, transitions: list[Transition]) -> None:
        if transitions:
            try:
                self.on_transitions(transitions)
            except Exception:  # noqa: BLE001 - the counts are right; the telling failed
                log.exception("presence transitions not handled")
