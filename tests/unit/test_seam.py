"""The seam between a history replay and live delivery, the positions, and the frames held
since a lost Redis subscription (broker.delivery), as plain function calls: no server, no
Redis, no hub, no monkey-patching. Triggers are delivered live *while* the history is being
read (between ``start_seam`` and ``joined``), some of them also in it.
"""

from __future__ import annotations

import json
from typing import Any

from broker.codecs.jsoncodec import JsonCodec
from broker.delivery import Delivery, Mark
from broker.history import HistoryEntry, HistoryPage
from broker.messages import DirectMessage, Trigger
from broker.subscription import Subscription
from rooms import parse_room

ROOM = parse_room({"target": "chat", "customer": "1"})
BASE = 100  # the room's offsets before the test


class Client:
    """The driver around a Delivery: an outbox that queues, and writes when told to."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.queued: list[tuple[Any, Mark | None]] = []
        self.written: list[dict[str, Any]] = []
        self.slow = False
        self.delivery = Delivery(JsonCodec(rich=True), limit, push=self.push,
                                 queued_bytes=self.queued_bytes, on_slow=self.on_slow)

    def push(self, frame: str | bytes, mark: Mark | None) -> None:
        if mark is not None:
            self.delivery.queued(mark)
        self.queued.append((frame, mark))

    def queued_bytes(self) -> int:
        return sum(len(f) for f, _ in self.queued)

    def on_slow(self) -> None:
        self.slow = True

    def write(self, n: int | None = None) -> None:
        """The transport takes the first ``n`` queued frames (all by default)."""
        n = len(self.queued) if n is None else n
        taken, self.queued = self.queued[:n], self.queued[n:]
        for frame, mark in taken:
            self.written.append(json.loads(frame))
            if mark is not None:
                Delivery.written(mark)


def sub_of(rid: str = "s") -> Subscription:
    return Subscription(rid, json.dumps(rid), ROOM)


def trigger(n: int) -> Trigger:
    return Trigger(f"t{n}", [ROOM.key], json.dumps(n), {ROOM.key: BASE + n})


def entry(n: int) -> HistoryEntry:
    return HistoryEntry(BASE + n, f"t{n}", json.dumps(n))


def page(*ns: int, top: int | None = None) -> HistoryPage:
    return HistoryPage(BASE + (top if top is not None else max(ns, default=0)), 1,
                       tuple(entry(n) for n in ns))


def live(client: Client, sub: Subscription, n: int) -> None:
    client.delivery.deliver(sub, trigger(n), ROOM.key, BASE + n)


def subscribed(client: Client, sub: Subscription, top: int = 0) -> None:
    """A fresh subscription (no ``since``) that has gone live at the room's ``top``."""
    client.delivery.start_seam(sub)
    extra, follow_up = client.delivery.joined(sub, None, page(top=top))
    assert extra == {"offset": BASE + top}
    follow_up()


def test_replay_then_live_without_gap_or_duplicate() -> None:
    client, sub = Client(), sub_of()
    since = BASE  # the client has everything up to trigger 0
    client.delivery.start_seam(sub)  # before the hub joins: live frames are held from now
    live(client, sub, 3)  # recorded before the read, its PUBLISH arrives now: a duplicate
    live(client, sub, 4)  # recorded and delivered during the read: in both
    read = page(1, 2, 3, 4)
    live(client, sub, 5)  # recorded after the read: live only
    assert client.queued == []  # all held
    extra, follow_up = client.delivery.joined(sub, since, read)
    assert extra == {"offset": BASE + 4, "recovered": True}
    follow_up()  # after the subscribe's reply
    live(client, sub, 6)  # afterwards: straight through
    client.write()
    assert [f["data"] for f in client.written] == [1, 2, 3, 4, 5, 6]
    assert [f["offset"] for f in client.written] == list(range(BASE + 1, BASE + 7))
    # the position a resume would replay after: the last offset written
    assert sub.offset == BASE + 6 and sub.buffer is None


def test_a_late_live_copy_of_a_replayed_trigger_is_dropped() -> None:
    client, sub = Client(), sub_of()
    client.delivery.start_seam(sub)
    _extra, follow_up = client.delivery.joined(sub, BASE, page(1, 2))
    follow_up()
    live(client, sub, 2)  # read from the history, its live copy reached us after the merge
    live(client, sub, 3)
    client.write()
    assert [f["data"] for f in client.written] == [1, 2, 3]


def test_held_frames_the_client_already_has_are_dropped() -> None:
    client, sub = Client(), sub_of()
    client.delivery.start_seam(sub)
    live(client, sub, 1)  # at or below ``since``: the client has it
    live(client, sub, 2)
    _extra, follow_up = client.delivery.joined(sub, BASE + 1, page(2, top=2))
    follow_up()
    client.write()
    assert [f["data"] for f in client.written] == [2]


def test_an_unrecoverable_since_starts_over_and_says_so() -> None:
    client, sub = Client(), sub_of()
    client.delivery.start_seam(sub)
    # since 5 is before the history's base (the room's stream was trimmed past it)
    extra, follow_up = client.delivery.joined(sub, 5, HistoryPage(BASE + 2, BASE, (
        entry(1), entry(2))))
    assert extra == {"offset": BASE + 2, "recovered": False} and sub.offset == 0
    follow_up()
    client.write()
    assert [f["data"] for f in client.written] == [1, 2]


def test_positions_move_only_when_written() -> None:
    client, sub = Client(), sub_of()
    subscribed(client, sub)
    assert sub.offset == BASE  # the room's top when it subscribed
    live(client, sub, 1)
    live(client, sub, 2)
    assert sub.offset == BASE  # queued, not written
    client.write(1)
    assert sub.offset == BASE + 1
    # a trigger that does not ask for history moves nothing
    client.delivery.deliver(sub, Trigger("plain", [ROOM.key], "0"), ROOM.key, None)
    client.write()
    assert sub.offset == BASE + 2
    assert client.written[-1] == {"type": "publish", "requestId": "s", "data": 0,
                                  "room": ROOM.original, "id": "plain"}


def test_an_offset_of_another_room_is_shown_but_moves_nothing() -> None:
    client, sub = Client(), sub_of()
    subscribed(client, sub)
    other = parse_room({"target": "chat", "customer": "2"})
    client.delivery.deliver(sub, Trigger("x", [other.key], "7", {other.key: 9}), other.key, 9)
    assert client.queued[-1][1] is None
    client.write()
    assert sub.offset == BASE and client.written[-1]["offset"] == 9


def test_a_lost_subscription_holds_from_the_last_offset_queued_then_replays_the_gap() -> None:
    client, sub = Client(), sub_of()
    subscribed(client, sub)
    live(client, sub, 1)
    client.delivery.hold_live([sub])  # Redis subscription lost: 2 and 3 never arrive live
    live(client, sub, 4)  # held (arrived after the hub rejoined, before the resync read)
    recovering = client.delivery.recovering()
    assert recovering == {sub: BASE + 1}
    client.delivery.resynced([(sub, BASE + 1, page(2, 3, 4))], lambda s: True)
    client.write()
    frames = client.written
    assert frames[1] == {"type": "resync", "subscriptions": [
        {"requestId": "s", "offset": BASE + 4, "recovered": True}]}
    assert [f["data"] for f in frames[:1] + frames[2:]] == [1, 2, 3, 4]
    assert sub.offset == BASE + 4 and sub.buffer is None
    assert client.delivery.recovering() == {}


def test_the_resync_does_not_replay_what_was_queued_past_a_gap() -> None:
    client, sub = Client(), sub_of()
    subscribed(client, sub)
    live(client, sub, 1)
    live(client, sub, 3)  # out of order: 2 is still on its way (another process)
    client.delivery.hold_live([sub])
    assert client.delivery.recovering() == {sub: BASE + 1}
    client.delivery.resynced([(sub, BASE + 1, page(2, 3))], lambda s: True)
    client.write()
    assert [f.get("data") for f in client.written] == [1, 3, None, 2]


def test_a_failed_read_says_not_recovered_and_goes_live() -> None:
    client, sub = Client(), sub_of()
    subscribed(client, sub)
    client.delivery.hold_live([sub])
    live(client, sub, 2)
    client.delivery.recovering()
    client.delivery.resynced([(sub, BASE, ConnectionError("down"))], lambda s: True)
    client.write()
    assert client.written[0] == {"type": "resync", "subscriptions": [
        {"requestId": "s", "recovered": False}]}
    assert [f["data"] for f in client.written[1:]] == [2] and sub.buffer is None


def test_an_ended_subscription_is_not_replayed() -> None:
    client, sub = Client(), sub_of()
    subscribed(client, sub)
    client.delivery.hold_live([sub])
    client.delivery.recovering()
    client.delivery.resynced([(sub, BASE, page(1))], lambda s: False)
    client.write()
    assert [f["type"] for f in client.written] == ["resync"]


def test_frames_held_since_a_lost_subscription_go_first_past_the_bound() -> None:
    client, lost, seam = Client(limit=400), sub_of("lost"), sub_of("seam")
    subscribed(client, lost)
    client.delivery.hold_live([lost])
    for n in range(1, 4):
        live(client, lost, n)
    client.delivery.start_seam(seam)
    live(client, seam, 4)  # past the bound: the lost subscription's frames are dropped
    assert lost.buffer == [] and seam.buffer is not None and len(seam.buffer) == 1
    assert not client.slow


def test_frames_held_across_a_seam_past_the_bound_make_the_connection_slow() -> None:
    client, sub = Client(limit=200), sub_of()
    client.delivery.start_seam(sub)
    live(client, sub, 1)
    assert not client.slow
    live(client, sub, 2)
    assert client.slow and sub.buffer == []


def test_watchers_copies_wait_behind_the_seam_too() -> None:
    client, sub = Client(), sub_of()
    client.delivery.start_seam(sub)
    message = DirectMessage("m1", ROOM.key, "/agent/bob", None, '{"type":"message"}', "1")
    client.delivery.deliver_watched(sub, message)
    assert client.queued == []
    _extra, follow_up = client.delivery.joined(sub, None, page(top=0))
    follow_up()
    client.write()
    assert client.written == [{"type": "publish", "requestId": "s", "data": {"type": "message"},
                               "room": ROOM.original, "id": "m1"}]
