"""The session's state machine with plain function calls: no server, no Redis, no patching.

Each rule that used to live in the driver (broker.connection) is decided by the session now:
the welcome-first hold, the rate limit on a passed clock, the auth deadline, acknowledged
messages owed, resume state saved and restored, and the replies built from effect results.
"""

from __future__ import annotations

import json

from broker import disconnect, errors, resume
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec
from broker.effects import (
    CompleteAck,
    Counts,
    HoldAck,
    JoinRoom,
    Kick,
    PublishRooms,
    ReadStats,
    SendDirect,
    Stats,
)
from broker.history import HistoryEntry, HistoryPage, HistoryPolicy
from broker.identity import identity_from_api
from broker.messages import DirectMessage, Trigger
from broker.requests import Admin, Ping, Publish, Send, Status, Subscribe
from broker.session import State
from rooms import parse_room
from tests.unit.sessions import Clock, opened, session

CHAT1 = {"target": "chat", "customer": "1"}
CHAT_ANY = {"target": "chat", "customer": "*"}
BOB = identity_from_api({"allowed_rooms": [CHAT_ANY], "login_id": "bob",
                         "publish_rooms": [CHAT_ANY]})
HISTORY = HistoryPolicy.from_setting([{"room": CHAT_ANY, "size": 5, "ttl": 60}])


def frames(out) -> list[dict]:
    return [json.loads(f) for f in out.frames]


def acked(mid: str, ack: bool = True) -> DirectMessage:
    frame = json.dumps({"type": "message", "id": mid, "data": 1})
    return DirectMessage(mid, "room", "/agent/bob", "/agent/alice", frame, "1", ack=ack)


# ---------------------------------------------------------------- connecting


def test_states_from_accept_to_closed():
    s, out = session(JsonCodec(rich=True))
    assert s.state is State.CONNECTING
    s.authenticating()
    assert s.state is State.AUTHENTICATING
    s.open(BOB)
    assert s.state is State.OPENING and s.identity is BOB
    s.welcome("c1")
    assert s.state is State.OPEN and frames(out)[0]["type"] == "welcome"
    s.end(disconnect.KICKED)
    s.end(disconnect.SLOW)  # once: the first reason is the one
    assert s.state is State.CLOSING and out.ended == [disconnect.KICKED] and s.closing
    assert s.close() == [] and s.state is State.CLOSED


def test_auth_deadline_runs_on_the_passed_clock():
    clock = Clock()
    s, out = session(JsonCodec(rich=False), clock, auth_deadline=10)
    clock.now += 4
    assert s.authenticating() == 6  # what is left of it is the auth API's budget
    s.auth_expired()  # being authenticated: left to that budget
    assert out.ended == []
    late, out = session(JsonCodec(rich=False), clock, auth_deadline=10)
    late.auth_expired()  # no credentials yet: 4408
    assert out.ended == [disconnect.AUTH_TIMEOUT] and late.closing
    none, _ = session(JsonCodec(rich=False), clock)
    assert none.authenticating() is None  # 0: no deadline


def test_duplicate_login_policy():
    for policy, refuses, replaces in (("allow", False, False), ("reject", True, False),
                                      ("replace", False, True)):
        s, _ = session(JsonCodec(rich=True), duplicate_login=policy)
        assert s.refuses_duplicate(BOB) is refuses
        s.authenticating()
        s.open(BOB)
        assert s.replaces_duplicate is replaces
    anonymous = identity_from_api({"allowed_rooms": [CHAT_ANY]})
    s, _ = session(JsonCodec(rich=True), duplicate_login="reject")
    assert not s.refuses_duplicate(anonymous)  # no destination: nothing to collide with


# ---------------------------------------------------------------- the welcome comes first


def test_frames_wait_for_the_welcome_then_follow_it_in_order():
    s, out = session(JsonCodec(rich=True))
    s.authenticating()
    s.open(BOB)
    s.deliver_message(acked("m1", ack=False))
    s.deliver_message(acked("m2", ack=False))
    assert out.frames == []  # held: the welcome is not queued yet
    s.welcome("c1")
    assert [f.get("id", f["type"]) for f in frames(out)] == ["welcome", "m1", "m2"]


def test_too_much_held_before_the_welcome_is_slow():
    s, out = session(JsonCodec(rich=True), max_outbox_bytes=100)
    s.authenticating()
    s.open(BOB)
    s.deliver_message(DirectMessage("m", "room", "/agent/bob", None, "x" * 101, "1"))
    assert out.ended == [disconnect.SLOW]
    s.welcome("c1")
    assert out.frames == []  # ended while opening: no welcome, nothing held is written


# ---------------------------------------------------------------- requests


def test_requests_before_the_welcome_or_after_the_end_are_not_read():
    s, out = session(JsonCodec(rich=True))
    assert s.receive(Ping(1)) is None and out.frames == []
    s, out = opened(BOB, JsonCodec(rich=True))
    s.end(disconnect.KICKED)
    assert s.receive(Ping(1)) is None and len(out.frames) == 1  # the welcome only


def test_rate_limit_on_the_passed_clock():
    clock = Clock()
    s, out = opened(BOB, JsonCodec(rich=True), clock, rate=1, burst=2)
    for n in range(2):
        s.receive(Ping(n))
    s.receive(Ping(2))  # over the burst: answered, not carried out
    assert [f["type"] for f in frames(out)[1:]] == ["pong", "pong", "error"]
    assert frames(out)[-1]["message"] == errors.RATE_LIMITED and out.ended == []
    clock.now += 3  # the debt (1) paid and the burst (2) back
    s.receive(Ping(3))
    assert frames(out)[-1]["type"] == "pong"
    for n in range(4):  # kept on regardless, faster than the refill: 4029
        s.receive(Ping(10 + n))
    assert out.ended == [disconnect.RATE_LIMITED]


def test_a_protocol_that_ends_on_goodbye_ends_after_the_reply():
    s, out = opened(BOB, StompCodec())
    codec = s.codec
    s.receive(codec.decode(codec.parse(b"DISCONNECT\nreceipt:9\n\n\x00")))
    assert b"RECEIPT" in out.frames[-1] and out.ended and out.ended[0].code == 1000


def test_replies_are_built_from_effect_results():
    admin = identity_from_api({"login_id": "root", "profile": "admin",
                               "allowed_rooms": [CHAT_ANY], "publish_rooms": [CHAT_ANY]})
    s, out = opened(admin, JsonCodec(rich=True))
    assert isinstance(s.receive(Publish(1, [CHAT1], {"a": 1})), PublishRooms)
    s.effect_done("t1")
    assert frames(out)[-1] == {"code": "success", "requestId": 1, "id": "t1"}
    assert isinstance(s.receive(Send(2, "/agent/nobody", 1)), SendDirect)
    s.effect_done(None)  # no such destination connected
    assert frames(out)[-1]["message"] == errors.DESTINATION_NOT_FOUND
    assert isinstance(s.receive(Admin(3, "kick", {"login_id": "x"})), Kick)
    s.effect_done([])
    assert frames(out)[-1]["message"] == errors.CONNECTION_NOT_FOUND
    assert isinstance(s.receive(Admin(4, "stats")), ReadStats)
    s.effect_done(Stats([{"triggers": 2, "drops": 1}, {"triggers": 3}], 7, 4))
    stats = frames(out)[-1]["stats"]
    assert stats["triggers"] == 5 and stats["drops"] == 1 and stats["connections"] == 7
    assert stats["rooms"] == 4
    assert s.receive(Admin(5, "kick", {})) is None  # refused before any I/O
    assert frames(out)[-1]["message"] == errors.INVALID_MESSAGE
    s.receive(Status(6))
    s.effect_done(Counts(3, 2, "2026-12-03T00:00:00Z"))
    assert frames(out)[-1]["open_connections"] == 3


# ---------------------------------------------------------------- the seam, through the session


def test_subscribe_to_a_history_room_replays_then_releases_what_waited():
    s, out = opened(BOB, JsonCodec(rich=True), history=HISTORY)
    join = s.receive(Subscribe("s", CHAT1, since=1))
    assert isinstance(join, JoinRoom) and join.subscription.buffer == []  # held from now
    room = parse_room(CHAT1)
    s.delivery.deliver(join.subscription, Trigger("t3", [room.key], "3", {room.key: 3}),
                       room.key, 3)
    s.effect_done(HistoryPage(3, 0, (HistoryEntry(2, "t2", "2"), HistoryEntry(3, "t3", "3"))))
    got = frames(out)[1:]
    assert got[0] == {"code": "success", "requestId": "s", "offset": 3, "recovered": True}
    assert [(f["data"], f["offset"]) for f in got[1:]] == [(2, 2), (3, 3)]  # t3 once
    # the reply carries the position the subscription resumes from (SSE writes it as the
    # reply's event id), then each replayed frame its own
    assert out.marks == [(join.subscription, 1), (join.subscription, 2), (join.subscription, 3)]


# ---------------------------------------------------------------- acknowledged messages


def test_acknowledged_messages_are_shown_once_and_owed_until_confirmed():
    s, out = opened(BOB, JsonCodec(rich=True))
    hold1 = s.deliver_acked(acked("m1"))
    assert isinstance(hold1, HoldAck) and hold1.message_id == "m1"
    assert s.deliver_message(acked("m1")) is None  # the stored copy of the same message
    hold2 = s.deliver_acked(acked("m2"))
    assert isinstance(hold2, HoldAck) and hold2.message_id == "m2"
    s.hold_recorded(hold1)
    s.hold_recorded(hold2)
    assert [f["id"] for f in frames(out)[1:]] == ["m1", "m2"]
    s.completed("m1")
    assert s.release_owed() == ["m2"] and s.release_owed() == []


def test_an_acknowledged_message_is_shown_once_its_hold_is_recorded():
    """Found in review of issue 12: the frame was queued before the store recorded this
    connection's hold, so another connection of the login could confirm in between and
    complete the message (the sender told ``confirmed``) while this one still owed it."""
    s, out = opened(BOB, JsonCodec(rich=True))
    hold = s.deliver_acked(acked("m1"))
    assert isinstance(hold, HoldAck)
    assert frames(out)[1:] == []  # not shown before the driver recorded the hold
    s.hold_recorded(hold)
    assert [f["id"] for f in frames(out)[1:]] == ["m1"]
    s.end(disconnect.GOING_AWAY)
    late = s.deliver_acked(acked("m2"))
    assert late is None  # closing: neither shown nor held


def test_without_confirmations_queued_counts_as_confirmed():
    s, out = opened(BOB, StompCodec())
    assert s.deliver_acked(acked("m1")) == CompleteAck("m1")
    assert s.release_owed() == []  # nothing owed: STOMP clients do not confirm


# ---------------------------------------------------------------- resume


def test_resume_state_saved_at_the_close_and_restored_for_the_same_identity():
    s, out = opened(BOB, JsonCodec(rich=True), history=HISTORY, resume_ttl=30)
    token = frames(out)[0]["resume_token"]
    for rid in ("a", "b"):
        s.receive(Subscribe(rid, CHAT1 if rid == "a" else CHAT_ANY))
        s.effect_done(HistoryPage(4, 0, ()) if rid == "a" else None)
    s.subscriptions['"a"'].offset = 4  # written up to offset 4
    saved = s.saved_state(s.close())
    assert saved is not None and saved.key == resume.token_key(token) and saved.ttl == 30
    assert saved.fingerprint == resume.fingerprint(BOB)

    again, out = session(JsonCodec(rich=True), history=HISTORY)
    again.authenticating()
    again.open(BOB)
    lookup = again.resume_lookup(token)
    assert lookup is not None and lookup.key == saved.key
    steps = again.restore(saved.state)
    assert [step.effect.subscription.request_id for step in steps] == ["a", "b"]
    assert steps[0].effect.since == 4  # replays after the offset written
    again.restored(steps[0], HistoryPage(6, 0, (HistoryEntry(5, "t5", "5"),
                                                HistoryEntry(6, "t6", "6"))))
    again.restored(steps[1], RuntimeError("redis went away"))  # dropped, not fatal
    again.welcome("c2")
    welcome, *replay = frames(out)
    assert welcome["resumed"] is True
    assert welcome["subscriptions"] == [{"requestId": "a", "offset": 6, "recovered": True}]
    assert [f["data"] for f in replay] == [5, 6] and list(again.subscriptions) == ['"a"']


def test_nothing_to_resume():
    s, out = opened(BOB, JsonCodec(rich=False))
    assert s.resume_token is None and s.saved_state(s.close()) is None  # plain dialect
    s, out = session(JsonCodec(rich=True))
    s.authenticating()
    s.open(BOB)
    assert s.resume_lookup("x" * 500) is None  # not a token: not looked up
    assert s.restore(None) == []
    s.welcome("c1")
    assert frames(out)[0]["resumed"] is False
    assert s.saved_state(s.close()) is None  # no subscriptions: nothing saved


# ---------------------------------------------------------------- lost live frames


def test_a_lost_redis_subscription_is_told_even_with_nothing_to_replay():
    s, out = opened(BOB, JsonCodec(rich=True))
    s.receive(Subscribe("l", CHAT1))  # no history room: nothing can be replayed
    s.effect_done(None)
    s.hold_live()
    assert s.recovering() == {}
    s.resynced([])
    assert frames(out)[-1] == {"type": "resync"}
