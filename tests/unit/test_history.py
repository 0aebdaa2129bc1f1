"""Issue 8, the pure parts and the in-memory store: history rules, the recovery rule, the seam
merge, resume tokens, the session's new requests and the JSON codec's new frames."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from broker import errors
from broker.codecs.jsoncodec import JsonCodec
from broker.history import (
    HistoryEntry, HistoryPage, HistoryPolicy, merge_seam, parse_history_setting, recovered,
)
from broker.identity import identity_from_api
from broker.messages import Confirmed
from broker.resume import (
    SavedSubscription, decode_state, encode_state, fingerprint, new_token, plausible, token_key,
)
from broker.effects import ConfirmMessage, JoinRoom, PublishRooms, ReadHistory, SendDirect
from broker.replies import Error, HistoryResult, Success
from broker.requests import Confirm, History, Publish, Send, Subscribe
from broker.session import Session
from tests.unit.sessions import rules
from broker.subscription import Subscription
from broker.messages import DirectMessage
from broker.stores.acks import AckQuota, MemoryAcks
from broker.stores.history import MemoryHistory
from broker.stores.resume import MemoryResume
from rooms import parse_room

CHAT1 = {"target": "chat", "customer": "1"}
CHAT_ANY = {"target": "chat", "customer": "*"}
NEWS = {"target": "news"}
SETTING = [{"room": CHAT_ANY, "size": 3, "ttl": 60}, {"room": {"target": "*"}, "size": 9,
                                                       "ttl": 5}]


# ---------------------------------------------------------------- rules


def test_policy_first_matching_rule_concrete_rooms_only():
    policy = HistoryPolicy.from_setting(SETTING)
    assert policy.rule_for(parse_room(CHAT1)).size == 3
    assert policy.rule_for(parse_room(NEWS)).size == 9
    assert policy.rule_for(parse_room(CHAT_ANY)) is None  # a wildcard room is never recorded
    assert policy.rule_for(parse_room({"target": "chat"})).size == 9
    assert policy.rule_for(parse_room({"other": "x"})) is None
    assert policy.rule_for(parse_room({"target": 1})).size == 9  # "*" matches any value
    rooms = [parse_room(CHAT1), parse_room(CHAT_ANY), parse_room(CHAT1), parse_room(NEWS)]
    assert [(r.key, rule.size) for r, rule in policy.recorded(rooms)] == [
        (parse_room(CHAT1).key, 3), (parse_room(NEWS).key, 9)]
    assert not HistoryPolicy.from_setting(None) and not HistoryPolicy.from_setting([])


@pytest.mark.parametrize("value", [
    {"room": CHAT1}, ["nope"], [{"room": CHAT1, "size": 0, "ttl": 1}],
    [{"room": CHAT1, "size": 1, "ttl": 0}], [{"room": CHAT1, "size": True, "ttl": 1}],
    [{"room": "x", "size": 1, "ttl": 1}], [{"room": CHAT1, "size": 1, "ttl": 1, "extra": 1}],
])
def test_bad_settings(value):
    with pytest.raises(ValueError):
        parse_history_setting(value)


def page(top, base, *offsets):
    return HistoryPage(top, base, tuple(HistoryEntry(o, f"t{o}", "0") for o in offsets))


@pytest.mark.parametrize("since, p, expected", [
    (0, page(0, 0), True),  # never recorded: nothing missed "from the start"
    (5, page(0, 0), False),  # the room's state expired: cannot tell
    (105, page(105, 100), True),  # nothing new
    (103, page(105, 100, 104, 105), True),
    (103, page(105, 100, 105), False),  # 104 was trimmed
    (103, page(105, 100), False),  # expired entries, known sequence
    (0, page(105, 100, 101, 102, 103, 104, 105), True),
    (0, page(105, 100, 102, 103, 104, 105), False),
    (50, page(105, 100, 101, 102), False),  # an older sequence's offset
    (200, page(105, 100), False),  # an offset the room never issued
])
def test_recovered(since, p, expected):
    assert recovered(since, p) is expected


def test_merge_seam_drops_replayed_and_held():
    replay = [HistoryEntry(11, "a", "0"), HistoryEntry(12, "b", "0")]
    buffered = [("x", 10, "f10"), ("a", 11, "f11"), ("b", 12, "f12"), ("c", 13, "f13"),
                ("d", None, "plain")]
    assert [f for _i, _o, f in merge_seam(replay, buffered, 10)] == ["f13", "plain"]
    assert [f for _i, _o, f in merge_seam([], buffered, -1)] == [
        "f10", "f11", "f12", "f13", "plain"]


# ---------------------------------------------------------------- resume tokens


def test_tokens_and_fingerprints():
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 32 and plausible(a)
    assert not plausible("") and not plausible("x" * 500) and not plausible(None)
    assert token_key(a) != a and len(token_key(a)) == 64
    bob = identity_from_api({"login_id": "bob", "allowed_rooms": [CHAT1]})
    bob_elsewhere = identity_from_api({"login_id": "bob", "allowed_rooms": [NEWS]})
    bob_service = identity_from_api({"login_id": "bob", "profile": "service"})
    anon1 = identity_from_api({"allowed_rooms": [CHAT1]})
    anon2 = identity_from_api({"allowed_rooms": [NEWS]})
    assert fingerprint(bob) == fingerprint(bob_elsewhere)  # a login is who it is
    assert fingerprint(bob) != fingerprint(bob_service)
    assert fingerprint(anon1) != fingerprint(anon2) != fingerprint(bob)
    state = encode_state([SavedSubscription(1, parse_room(CHAT1), 7),
                          SavedSubscription("n", parse_room(NEWS), None)])
    assert decode_state(state) == [SavedSubscription(1, parse_room(CHAT1), 7),
                                   SavedSubscription("n", parse_room(NEWS), None)]
    assert decode_state("garbage") == [] and decode_state('{"subs":[{"room":5}]}') == []


# ---------------------------------------------------------------- session


def make(profile="agent", login="bob"):
    ident = identity_from_api({"allowed_rooms": [CHAT_ANY, NEWS], "login_id": login,
                               "profile": profile})
    return rules(ident, max_subscriptions=10, public_status=False,
                   history=HistoryPolicy.from_setting(SETTING[:1]))


def test_subscribe_since():
    s = make()
    step = s.handle(Subscribe(1, CHAT1, since=5))
    assert step.reply == Success(1) and isinstance(step.effect, JoinRoom)
    assert step.effect.since == 5 and step.effect.history.size == 3
    step = s.handle(Subscribe(2, CHAT1))
    assert step.effect.since is None and step.effect.history is not None
    # no rule: the since cannot be honoured, and the reply says so without I/O
    step = s.handle(Subscribe(3, NEWS, since=5))
    assert step.reply == Success(3, {"recovered": False}) and step.effect.history is None
    step = s.handle(Subscribe(4, CHAT_ANY, since=5))
    assert step.reply == Success(4, {"recovered": False}) and step.effect.history is None
    for bad in (-1, "5", 1.5, True, [1]):
        assert s.handle(Subscribe(9, CHAT1, since=bad)).reply.code == errors.INVALID_MESSAGE


def test_history_request_rules():
    s = make()
    step = s.handle(History("h", CHAT1))
    assert step.reply is None and step.effect == ReadHistory(parse_room(CHAT1), 3, None)
    assert s.handle(History("h", CHAT1, limit=50, since=0)).effect == ReadHistory(
        parse_room(CHAT1), 3, 0)  # at most the rule's size
    assert s.handle(History("h", CHAT1, limit=2)).effect.limit == 2

    def code(req):
        reply = s.handle(req).reply
        return reply.code if isinstance(reply, Error) else reply

    assert code(History(1, NEWS)) == errors.HISTORY_NOT_ENABLED
    assert code(History(1, CHAT_ANY)) == errors.HISTORY_NOT_ENABLED
    assert code(History(1, {"target": "secret"})) == errors.ROOM_NOT_FOUND
    assert code(History(1, "x")) == errors.INVALID_ROOM
    assert code(History(1, CHAT1, limit=0)) == errors.INVALID_MESSAGE
    assert code(History(1, CHAT1, since=-2)) == errors.INVALID_MESSAGE
    assert code(History({"x": 1}, CHAT1)) == errors.INVALID_MESSAGE
    admin = make("admin", "root")
    assert admin.handle(History(1, CHAT1)).reply.code == errors.PROFILE_CANNOT_SUBSCRIBE


def test_send_ack_publish_history_confirm():
    s = make()
    step = s.handle(Send(1, "/agent/eve", {"a": 1}, ack=True))
    assert step.effect == SendDirect("/agent/eve", '{"a":1}', None, True)
    assert s.handle(Send(1, "/agent/eve", 1)).effect.ack is False
    assert s.handle(Send(1, "/agent/eve", 1, ack=1)).reply.code == errors.INVALID_MESSAGE
    service = make("service", "billing")
    step = service.handle(Publish(1, [CHAT1], "x", history=True))
    assert step.effect == PublishRooms([parse_room(CHAT1)], '"x"', True)
    assert service.handle(Publish(1, [CHAT1], "x", history="y")).reply.code == \
        errors.INVALID_MESSAGE
    step = s.handle(Confirm("c", "m1"))
    assert step.reply == Success("c") and step.effect == ConfirmMessage("m1")
    for bad in (None, 5, "", "x" * 200):
        assert s.handle(Confirm("c", bad)).reply.code == errors.INVALID_MESSAGE
    anonymous = rules(identity_from_api({"allowed_rooms": [NEWS]}), max_subscriptions=1,
                        public_status=False)
    assert anonymous.handle(Confirm(1, "m1")) .effect is None  # nothing is addressed to it


# ---------------------------------------------------------------- JSON codec


def sub(rid=1, room=CHAT1):
    r = parse_room(room)
    return Subscription(rid, json.dumps(rid), r)


def test_codec_decodes_new_fields():
    c = JsonCodec(rich=True)
    assert c.decode('{"type":"subscribe","room":{"a":1},"requestId":1,"since":5}') == \
        Subscribe(1, {"a": 1}, since=5)
    assert c.decode('{"type":"send","to":"/agent/x","data":1,"ack":true}') == \
        Send(None, "/agent/x", 1, ack=True)
    assert c.decode('{"type":"publish","rooms":[],"data":1,"history":true}') == \
        Publish(None, [], 1, history=True)
    assert c.decode('{"type":"history","room":{"a":1},"limit":2,"since":3,"requestId":"h"}') \
        == History("h", {"a": 1}, 2, 3)
    assert c.decode('{"type":"confirm","id":"m"}') == Confirm(None, "m")
    # High-templar frames decode as before
    assert JsonCodec(rich=False).decode('{"type":"subscribe","room":{"a":1},"requestId":1}') \
        == Subscribe(1, {"a": 1})


def test_codec_frames():
    rich, ht = JsonCodec(rich=True), JsonCodec(rich=False)
    key = parse_room(CHAT1).key
    assert json.loads(rich.publish(sub(), '{"x":1}', key, "t1", offset=42)) == {
        "type": "publish", "requestId": 1, "data": {"x": 1}, "room": {"customer": "1",
                                                                     "target": "chat"},
        "id": "t1", "offset": 42}
    # the High-templar delivery is byte for byte what it was, offset or not
    assert ht.publish(sub(), '{"x":1}', key, "t1", offset=42) == \
        '{"type":"publish","requestId":1,"data":{"x":1}}'
    assert ht.answer(Success(1, {"offset": 5, "recovered": True})).frame == '{"code":"success"}'
    assert json.loads(rich.answer(Success(1, {"offset": 5, "recovered": True})).frame) == {
        "code": "success", "requestId": 1, "offset": 5, "recovered": True}
    result = HistoryResult("h", parse_room(CHAT1), 12, [HistoryEntry(11, "a", '"x"'),
                                                         HistoryEntry(12, "b", "[1]")], True)
    for codec in (rich, ht):
        assert json.loads(codec.answer(result).frame) == {
            "type": "history", "room": {"customer": "1", "target": "chat"}, "offset": 12,
            "recovered": True, "requestId": "h", "messages": [
                {"offset": 11, "id": "a", "data": "x"}, {"offset": 12, "id": "b", "data": [1]}]}
    assert json.loads(rich.answer(HistoryResult(None, parse_room(NEWS), 0, [])).frame) == {
        "type": "history", "room": NEWS, "offset": 0, "messages": []}
    assert json.loads(rich.confirmed(Confirmed("m1", "/agent/alice", "/agent/bob"))) == {
        "type": "confirmed", "id": "m1", "to": "/agent/bob"}
    ident = identity_from_api({"login_id": "bob"})
    plain = json.loads(rich.welcome(ident, "c", "tok"))
    assert "resumed" not in plain and plain["resume_token"] == "tok"
    resumed = json.loads(rich.welcome(ident, "c", "tok2", resumed=True,
                                      restored=[{"requestId": 1, "offset": 3}]))
    assert resumed["resumed"] is True and resumed["subscriptions"] == [
        {"requestId": 1, "offset": 3}]
    refused = json.loads(rich.welcome(ident, "c", "tok3", resumed=False))
    assert refused["resumed"] is False and "subscriptions" not in refused
    assert json.loads(ht.welcome(ident, "c", "tok", resumed=True)) == {
        "is_authorized": True, "allowed_rooms": []}


# ---------------------------------------------------------------- the in-memory store


async def test_memory_store_history(monkeypatch):
    store = MemoryHistory()
    rule = HistoryPolicy.from_setting(SETTING[:1]).rules[0]  # size 3, ttl 60
    t0 = time.time_ns() // 1000
    offsets = [(await store.append([("k", rule)], f"t{n}", str(n), 3600))["k"]
               for n in range(5)]
    first = offsets[0]
    assert first > t0 and offsets == list(range(first, first + 5))
    p = await store.read("k", since=None, limit=10)
    assert [e.offset for e in p.entries] == offsets[2:] and p.top == offsets[-1]
    assert p.base == first - 1
    assert [e.data_json for e in (await store.read("k", since=None, limit=2)).entries] \
        == ["3", "4"]
    assert (await store.read("k", since=None, limit=0)).entries == ()
    trimmed = await store.read("k", since=first, limit=None)
    assert not recovered(first, trimmed)  # size 3: the second one is gone
    recent = await store.read("k", since=offsets[2], limit=None)
    assert recovered(offsets[2], recent) and [e.id for e in recent.entries] == ["t3", "t4"]
    assert (await store.read("none", since=0, limit=None)) == HistoryPage(0, 0, ())
    # the entries expire after ttl; the sequence after the meta ttl
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 61)
    expired = await store.read("k", since=offsets[-2], limit=None)
    assert expired.top == offsets[-1] and expired.entries == ()
    assert not recovered(offsets[-2], expired)
    monkeypatch.setattr(time, "monotonic", lambda: now + 3601)
    assert (await store.read("k", since=0, limit=None)).top == 0
    restarted = (await store.append([("k", rule)], "t", "0", 3600))["k"]
    assert restarted > offsets[-1]  # a new sequence starts above the old one


async def test_memory_store_trigger_id_records_once(monkeypatch):
    """A client-supplied trigger id (once_ttl): a retry reuses the offsets it got; a room it
    was not recorded in yet is recorded; after once_ttl it is recorded again."""
    store = MemoryHistory()
    rule = HistoryPolicy.from_setting(SETTING[:1]).rules[0]
    first = await store.append([("a", rule)], "order-1", "1", 3600, once_ttl=10)
    again = await store.append([("a", rule), ("b", rule)], "order-1", "1", 3600,
                               once_ttl=10)
    assert again["a"] == first["a"] and again["b"] > 0
    assert [e.id for e in (await store.read("a", since=None, limit=None)).entries] == [
        "order-1"]
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 11)
    later = await store.append([("a", rule)], "order-1", "1", 3600, once_ttl=10)
    assert later["a"] == first["a"] + 1


async def test_memory_store_resume_and_acks(monkeypatch):
    resume, acks = MemoryResume(), MemoryAcks()
    await resume.save("k", "fp", "s", 10)
    assert await resume.take("k", "other") is None
    assert await resume.take("k", "fp") == "s"
    assert await resume.take("k", "fp") is None
    message = DirectMessage("m", "room", "/agent/bob", "/service/s", "{}", "1", ack=True)
    await acks.put(message, 10, AckQuota())
    assert await acks.pending("/agent/bob") == [message]
    assert await acks.pending("/agent/eve") == []
    await acks.hold("m", "c1")
    await acks.hold("m", "c2")
    assert await acks.confirm("m", "/agent/bob", "c1") == (False, None)
    assert await acks.confirm("m", "/agent/eve", "c2") == (False, None)
    assert await acks.confirm("m", "/agent/bob", "c2") == (True, "/service/s")
    assert await acks.pending("/agent/bob") == []
    await acks.put(dataclasses.replace(message, id="n"), 10, AckQuota())
    await acks.hold("n", "c1")
    assert await acks.release("c1", "/agent/bob", ["n"]) == []
    assert [m.id for m in await acks.pending("/agent/bob")] == ["n"]
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 11)
    assert await acks.pending("/agent/bob") == []
