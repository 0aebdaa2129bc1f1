"""Persistent subscriptions with plain function calls: the rule, the restore at the open, the
kept entry and the memory store (the Redis store and the flow: tests/integration)."""

from __future__ import annotations

import json

from broker import errors, persistent
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec, WatchPattern
from broker.codecs.stompframe import Frame, encode_frame, parse_frame
from broker.effects import ForgetPersistent, JoinRoom, KeepPersistent, LeaveRooms
from broker.history import HistoryPage, HistoryPolicy
from broker.identity import identity_from_api
from broker.replies import Error
from broker.requests import Subscribe, Unsubscribe, UnsubscribeAll
from broker.stores.persistent import MemoryPersistent
from tests.unit.sessions import opened, rules, session

NEWS = {"target": "news"}
CHAT_ANY = {"target": "chat", "customer": "*"}
BOB = identity_from_api({"allowed_rooms": [NEWS, CHAT_ANY], "login_id": "bob"})
ANON = identity_from_api({"allowed_rooms": [NEWS]})
HISTORY = HistoryPolicy.from_setting([{"room": CHAT_ANY, "size": 5, "ttl": 60}])


def test_a_persistent_subscribe_keeps_the_request_for_the_login():
    s = rules(BOB, max_persistent=7, persistent_ttl=60.0)
    step = s.handle(Subscribe("n", NEWS, presence=True, persistent=True))
    assert isinstance(step.effect, JoinRoom) and step.effect.subscription.persistent
    assert step.effect.persist == KeepPersistent(
        "/agent/bob", '"n"', json.dumps({"room": NEWS, "presence": True},
                                        separators=(",", ":")), 7, 60.0)
    plain = s.handle(Subscribe(2, NEWS))
    assert plain.effect.persist is None and not plain.effect.subscription.persistent
    # an unsubscribe forgets the persistent ones only
    assert s.handle(Unsubscribe(2)).effect == LeaveRooms([plain.effect.subscription], None)
    s.handle(Subscribe(3, NEWS))
    leave = s.handle(UnsubscribeAll()).effect
    assert isinstance(leave, LeaveRooms) and leave.forget == ForgetPersistent(
        "/agent/bob", ('"n"',))


def test_what_a_persistent_subscribe_refuses(monkeypatch):
    def refused(identity, req):
        step = rules(identity).handle(req)
        assert step.effect is None and isinstance(step.reply, Error)
        return step.reply.code, step.reply.detail

    assert refused(BOB, Subscribe(1, NEWS, persistent="yes")) == (
        errors.INVALID_MESSAGE, "'persistent' must be a boolean")
    assert refused(ANON, Subscribe(1, NEWS, persistent=True))[0] == \
        errors.PERSISTENT_NEEDS_LOGIN
    watch = Subscribe(1, {"client": "*", "profile": "agent"}, pattern=WatchPattern("/agent/b.*"),
                      persistent=True)
    assert refused(identity_from_api({"login_id": "s", "profile": "service"}), watch)[0] == \
        errors.PERSISTENT_NOT_ALLOWED
    # A room is at most 1024 bytes: the entry's bound is for the fields a subscribe gains
    # (a filter); with today's fields it is reached only under a lower bound.
    monkeypatch.setattr("broker.rules.MAX_ENTRY_CHARS", 20)
    assert refused(BOB, Subscribe(1, NEWS, persistent=True))[0] == errors.PERSISTENT_TOO_LARGE
    monkeypatch.undo()
    assert rules(ANON).handle(Subscribe(1, NEWS, persistent=False)).effect is not None


def test_an_entry_is_the_subscribe_it_was():
    req = Subscribe({"k": 1}, CHAT_ANY, since=5, presence=True, persistent=True)
    entry = persistent.entry_of(req)
    assert json.loads(entry) == {"room": CHAT_ANY, "presence": True}  # never since
    back = persistent.request_of(json.dumps({"k": 1}), entry)
    assert back == Subscribe({"k": 1}, CHAT_ANY, presence=True, persistent=True)
    assert persistent.request_of('"x"', "[1]") is None
    assert persistent.request_of("{", "{}") is None


def test_the_open_restores_what_the_new_identity_allows_and_forgets_the_rest():
    s, out = session(JsonCodec(rich=True), history=HISTORY)
    s.authenticating()
    s.open(identity_from_api({"allowed_rooms": [CHAT_ANY], "login_id": "bob"}))
    lookup = s.persistent_lookup()
    assert lookup is not None and lookup.owner == "/agent/bob"
    entries = {'"c"': json.dumps({"room": {"target": "chat", "customer": "1"}}),
               '"n"': json.dumps({"room": NEWS}),  # no longer allowed
               '"z"': "not json"}
    steps, forget = s.restore_persistent(entries)
    assert forget == ForgetPersistent("/agent/bob", ('"n"', '"z"'))
    [step] = steps
    assert step.effect.persist is None and step.effect.since is None  # kept already; live
    s.restored_persistent(step, HistoryPage(9, 0, ()))
    s.welcome("c1")
    welcome = json.loads(out.frames[0])
    assert welcome["persistent"] == [
        {"requestId": "n", "room": NEWS, "refused": errors.ROOM_NOT_FOUND},
        {"requestId": "c", "room": {"target": "chat", "customer": "1"}, "offset": 9}]
    assert s.subscriptions['"c"'].persistent  # its unsubscribe forgets it


def test_a_resumed_subscription_wins_and_a_transient_refusal_keeps_the_entry():
    s, out = session(JsonCodec(rich=True), max_subscriptions=1)
    s.authenticating()
    s.open(BOB)
    for step in s.restore(json.dumps({"v": 1, "subs": [{"rid": "n", "room": NEWS}]})):
        s.restored(step, None)
    steps, forget = s.restore_persistent({'"n"': json.dumps({"room": NEWS}),
                                          '"c"': json.dumps({"room": CHAT_ANY})})
    assert steps == [] and forget is None  # "c": over this connection's own bound: kept
    s.welcome("c1")
    welcome = json.loads(out.frames[0])
    assert welcome["persistent"] == [
        {"requestId": "n", "room": NEWS},
        {"requestId": "c", "room": CHAT_ANY, "refused": errors.TOO_MANY_SUBSCRIPTIONS}]
    assert s.subscriptions['"n"'].persistent


def test_no_login_no_lookup_and_no_welcome_field():
    s, out = opened(ANON, JsonCodec(rich=True))
    assert s.persistent_lookup() is None and "persistent" not in json.loads(out.frames[0])
    s, out = session(JsonCodec(rich=False))
    s.authenticating()
    s.open(BOB)
    [step], _ = s.restore_persistent({'"n"': json.dumps({"room": NEWS})})
    s.restored_persistent(step, None)
    s.welcome("c1")
    assert json.loads(out.frames[0]) == {"is_authorized": True,
                                         "allowed_rooms": [NEWS, CHAT_ANY]}


def test_stomp_reads_the_header_and_names_the_restored_ids():
    codec = StompCodec()
    frame = encode_frame(Frame("SUBSCRIBE", {"id": "s", "destination": "/room/{\"target\":"
                                             "\"news\"}", "persistent": "true"}))
    req = codec.decode(frame)
    assert isinstance(req, Subscribe) and req.persistent is True
    odd = codec.decode(encode_frame(Frame("SUBSCRIBE", {"id": "s", "destination": "/agent/x",
                                                        "persistent": "maybe"})))
    assert odd.persistent == "maybe"  # refused by the rule as not a boolean
    connected = parse_frame(codec.welcome(BOB, "c1", None, persistent=[
        {"requestId": "s", "room": NEWS}, {"requestId": "t", "room": NEWS, "refused": "x"}]))
    assert json.loads(connected.headers["persistent"]) == ["s"]
    assert "persistent" not in parse_frame(codec.welcome(BOB, "c1", None)).headers


async def test_the_memory_store_bounds_each_login_and_forgets():
    store = MemoryPersistent()
    assert await store.keep("/agent/bob", '"a"', "{}", 2, 60)
    assert await store.keep("/agent/bob", '"b"', "{}", 2, 60)
    assert not await store.keep("/agent/bob", '"c"', "{}", 2, 60)  # over the bound
    assert await store.keep("/agent/bob", '"b"', '{"x":1}', 2, 60)  # the same id: replaced
    assert await store.keep("/agent/eve", '"c"', "{}", 2, 60)  # another login's own bound
    await store.forget("/agent/bob", ('"a"',))
    assert await store.load("/agent/bob", 60) == {'"b"': '{"x":1}'}
    assert await store.load("/agent/nobody", 60) == {}
    await store.load("/agent/eve", 0)  # its ttl: gone from now
    assert await store.load("/agent/eve", 60) == {}
