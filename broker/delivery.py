"""What becomes of each delivery to one connection: shown, held, dropped; and the positions.

``Delivery`` is the per-connection state of issue 8's live stream (docs/guarantees.md), with
no I/O: the hub hands it typed deliveries (through the driver, broker.connection), the driver
hands it what it read from the history, and it answers by queueing frames on ``push`` (the
driver's outbox, with a mark for a frame that carries a position). Every rule of the seam, the
positions and the held frames' bound is here, and tested as plain function calls
(tests/unit/test_seam.py).

- **The seam.** A subscription to a history room holds its live frames (``Subscription.buffer``)
  from before the hub joins it until its replay is read (``start_seam``/``joined``). Then the
  replay is queued, and the held frames merged after it (``history.merge_seam``: a trigger both
  replayed and received live is dropped by id; one the client already had, by offset).
- **Replayed.** After a replay, a live copy of a trigger at or below the highest offset it
  covered (``Subscription.replayed``) arrived late: it is dropped.
- **Positions.** A frame with an offset of its subscription's own room is queued with a mark;
  ``written(mark)`` (the outbox, once the transport took it) moves ``Subscription.offset``. A
  resume replays after the offsets written, never after those merely queued. ``queued`` tracks
  the highest offset queued with every offset before it (live frames of one room may come out
  of offset order): where a lost Redis subscription starts its gap.
- **Lost live frames.** ``hold_live`` (the hub's Redis subscription broke) makes each history
  subscription hold its live frames from the last offset queued; ``recovering`` says what to
  read, and ``resynced`` replays it through the seam and tells the client (``resync`` frame).
- **The bound.** Held frames are owed to the client, so they count against the outbox's byte
  bound with what it queues. Past it, frames held since a lost subscription go first
  (``held-overflow``: the resync reads them back from history); frames held across a seam
  cannot go (nothing would bring them back), so then the connection is slow (``on_slow``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from . import metrics
from .codec import Codec
from .history import HistoryEntry, HistoryPage, merge_seam, recovered
from .messages import DirectMessage, Trigger
from .subscription import Subscription

log = logging.getLogger("broker.connection")

Mark = tuple[Subscription, int]
Frame = str | bytes
Held = tuple[str, int | None, Any]  # (trigger id, offset or None, frame), as history.Buffered
# Offsets of one history subscription queued past a gap that are remembered (``queued``).
AHEAD_MAX = 256


class Delivery:
    __slots__ = (
        "codec", "_limit", "_push", "_queued_bytes", "_on_slow", "_name", "_recovering",
        "_holding", "_holding_bytes", "_queued", "_ahead",
    )

    def __init__(self, codec: Codec, limit: int, *, push: Callable[[Frame, Mark | None], None],
                 queued_bytes: Callable[[], int], on_slow: Callable[[], None],
                 name: str = "") -> None:
        """``limit``: the bytes owed to the client (queued plus held) past which it is slow;
        ``push``: queue a frame (the driver's outbox); ``queued_bytes``: what the outbox holds;
        ``on_slow``: the connection is to close as slow. ``name``: for the log."""
        self.codec = codec
        self._limit = limit
        self._push = push
        self._queued_bytes = queued_bytes
        self._on_slow = on_slow
        self._name = name
        # History subscriptions holding live frames until the hub has rejoined (hold_live),
        # with the last offset queued to the client before.
        self._recovering: dict[Subscription, int] = {}
        # Subscriptions holding live frames in ``sub.buffer`` (a seam, or hold_live), and the
        # bytes they hold.
        self._holding: set[Subscription] = set()
        self._holding_bytes = 0
        # History subscriptions: the highest offset queued with every offset before it, and
        # the offsets queued past a gap.
        self._queued: dict[Subscription, int] = {}
        self._ahead: dict[Subscription, set[int]] = {}

    # ------------------------------------------------------------ deliveries

    def deliver(self, sub: Subscription, trigger: Trigger, room_key: str,
                offset: int | None) -> None:
        """One trigger for ``sub``, shown under ``room_key`` with that room's history
        ``offset`` (None: not recorded there): held while ``sub``'s replay is read, dropped
        when the replay sent it already, else queued (marked when the offset is of the
        subscription's own room: its resume position once written)."""
        if offset is None:
            frame = self.codec.publish(sub, trigger.data_json, room_key, trigger.id)
            if sub.buffer is None:
                self._push(frame, None)  # the common case: a live trigger, no history
            else:
                self.hold(sub, (trigger.id, None, frame))
            return
        frame = self.codec.publish(sub, trigger.data_json, room_key, trigger.id, offset=offset)
        if sub.buffer is not None:
            self.hold(sub, (trigger.id, offset, frame))
        elif room_key == sub.room.key:
            if sub.replayed is not None and offset <= sub.replayed:
                return  # already sent by the replay (its live copy came late)
            self._push(frame, (sub, offset))
        else:
            self._push(frame, None)

    def deliver_watched(self, sub: Subscription, message: DirectMessage) -> None:
        """A watcher's copy of a direct message (``sub`` watches ``message.room``)."""
        frame = self.codec.watched(sub, message)
        if sub.buffer is not None:
            self.hold(sub, (message.id, None, frame))
        else:
            self._push(frame, None)

    # ------------------------------------------------------------ positions

    @staticmethod
    def written(mark: Mark) -> None:
        """A frame with a position was written: its subscription resumes after it."""
        sub, offset = mark
        if sub.offset is None or offset > sub.offset:
            sub.offset = offset

    def queued(self, mark: Mark) -> None:
        """A frame with a position was queued: move the subscription's queued position, the
        highest offset queued with every offset before it. Those past a gap wait in
        ``_ahead`` until it fills."""
        sub, offset = mark
        done = self._queued.get(sub)
        if done is None or offset <= done:
            return
        ahead = self._ahead.get(sub)
        if offset > done + 1:
            if ahead is None:
                ahead = self._ahead[sub] = set()
            ahead.add(offset)
            if len(ahead) <= AHEAD_MAX:
                return
            # A gap that does not fill: a trigger recorded but never sent (a failed send), or
            # the room's sequence restarted.
            offset = min(ahead)
        if ahead:
            while offset + 1 in ahead:
                offset += 1
            rest = {o for o in ahead if o > offset}
            if rest:
                self._ahead[sub] = rest
            else:
                del self._ahead[sub]
        self._queued[sub] = offset

    def forget(self, sub: Subscription) -> None:
        """``sub`` ended: nothing of it is tracked any more."""
        self._queued.pop(sub, None)
        self._ahead.pop(sub, None)
        self._recovering.pop(sub, None)

    # ------------------------------------------------------------ the seam

    def start_seam(self, sub: Subscription) -> None:
        """Before the hub joins ``sub`` (a history room): hold its live frames."""
        sub.buffer = []

    def abort_seam(self, sub: Subscription) -> None:
        """The join or the history read failed: ``sub`` is not subscribed."""
        sub.buffer = None
        self._recount_held()

    def joined(self, sub: Subscription, since: int | None, page: HistoryPage
               ) -> tuple[dict[str, Any], Callable[[], None]]:
        """The replay of ``sub`` after ``since`` (None: none asked) was read as ``page``.
        Returns the subscribe reply's extra fields, and what to run once that reply is queued
        (the replay, then the held frames)."""
        extra: dict[str, Any] = {"offset": page.top}
        replay = list(page.entries) if since is not None else []
        # Live frames at or below ``held`` are ones the client already has.
        held = -1
        if since is None:
            sub.offset = page.top
        else:
            ok = recovered(since, page)
            extra["recovered"] = ok
            sub.offset = since if ok else 0
            held = since if ok else -1
        top = page.top
        return extra, lambda: self.flush_seam(sub, replay, held, top)

    def flush_seam(self, sub: Subscription, replay: Sequence[HistoryEntry], held: int,
                   top: int) -> None:
        """Queue ``replay``, then the live frames held in ``sub.buffer`` meanwhile minus the
        replayed ones and those at or below ``held`` (the client has them); then go live.
        Every offset up to ``top`` (the room's when the replay was read) is then queued."""
        key = sub.room.key
        self._queued[sub] = top
        self._ahead.pop(sub, None)
        sub.replayed = max([held, *(e.offset for e in replay)])
        for e in replay:
            if sub.filter is not None and not sub.filter.matches(e.tags):
                continue  # replayed as it would be live: only what its filter matches
            self._push(self.codec.publish(sub, e.data_json, key, e.id, offset=e.offset),
                       (sub, e.offset))
        live = merge_seam(replay, sub.buffer or [], held)
        sub.buffer = None
        self._recount_held()
        for _trigger_id, offset, frame in live:
            self._push(frame, (sub, offset) if offset is not None else None)

    # ------------------------------------------------------------ held frames

    def hold(self, sub: Subscription, entry: Held) -> None:
        """Keep a live frame of ``sub`` while its replay is read, within the bound."""
        assert sub.buffer is not None
        sub.buffer.append(entry)
        self._holding.add(sub)
        self._holding_bytes += len(entry[2])
        if self._holding_bytes + self._queued_bytes() <= self._limit:
            return
        dropped = 0
        for lost in self._recovering:
            if lost.buffer:
                dropped += len(lost.buffer)
                lost.buffer.clear()
        if dropped:
            metrics.drop("held-overflow", dropped)
            log.warning("conn %s: %d live frames held since the lost Redis subscription "
                        "dropped (over BROKER_MAX_OUTBOX_BYTES); the resync replays the "
                        "recorded ones", self._name, dropped)
            self._recount_held()
        if self._holding_bytes + self._queued_bytes() > self._limit:
            metrics.drop("slow", sum(len(s.buffer or ()) for s in self._holding))
            log.warning("conn %s: over %d bytes owed while a replay is read, closing as slow",
                        self._name, self._limit)
            for owed in self._holding:
                if owed.buffer:
                    owed.buffer.clear()
            self._recount_held()
            self._on_slow()

    def _recount_held(self) -> None:
        """Forget subscriptions that hold nothing any more, and sum what the others hold."""
        self._holding = {s for s in self._holding if s.buffer}
        self._holding_bytes = sum(len(e[2]) for s in self._holding for e in s.buffer or ())

    # ------------------------------------------------------------ lost live frames

    def hold_live(self, subs: Sequence[Subscription]) -> None:
        """The hub's subscription to Redis broke: triggers published from now until it has
        rejoined may never arrive. Each history subscription notes the last offset queued to
        the client and holds its live frames until ``resynced``."""
        for sub in subs:
            if (sub.pattern is None and sub.buffer is None and sub not in self._recovering
                    and sub in self._queued):
                self._recovering[sub] = self._queued[sub]
                sub.buffer = []

    def recovering(self) -> dict[Subscription, int]:
        """The held history subscriptions, each with the offset to read the history after;
        the caller reads them and calls ``resynced`` (this forgets them)."""
        recovering, self._recovering = self._recovering, {}
        return recovering

    def resynced(self, pages: Sequence[tuple[Subscription, int, HistoryPage | BaseException]],
                 current: Callable[[Subscription], bool]) -> None:
        """The hub has rejoined and each held subscription's history after ``since`` was read
        (or failed): tell the client, listing them with ``recovered``, then replay each gap
        through the seam. ``current(sub)``: the subscription still exists."""
        listed: list[dict[str, Any]] = []
        seams: list[tuple[Subscription, list[HistoryEntry], int, int]] = []
        for sub, since, page in pages:
            if isinstance(page, BaseException):
                log.warning("conn %s: history not read after a lost subscription: %s",
                            self._name, page)
                listed.append({"requestId": sub.request_id, "recovered": False})
                seams.append((sub, [], since, since))
                continue
            listed.append({"requestId": sub.request_id, "offset": page.top,
                           "recovered": recovered(since, page)})
            ahead = self._ahead.get(sub, set())  # queued already, past a gap
            seams.append((sub, [e for e in page.entries if e.offset not in ahead], since,
                          page.top))
        frame = self.codec.resync(listed)
        if frame is not None:
            self._push(frame, None)
        for sub, replay, since, top in seams:
            if sub.buffer is not None and current(sub):
                self.flush_seam(sub, replay, since, top)
