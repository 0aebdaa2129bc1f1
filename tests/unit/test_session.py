"""The session core and the JSON codec, driven with plain function calls (no I/O)."""

import json

import pytest

from broker import errors
from broker.codecs.jsoncodec import JsonCodec
from broker.identity import Identity, Profile, identity_from_api
from broker.effects import Kick, ListConnections, ReadStats, JoinRoom, LeaveRooms, PublishRooms, QueryStatus, SendDirect
from broker.replies import Error, Pong, Success
from broker.requests import (
    Admin,
    Invalid,
    Ping,
    Publish,
    Send,
    Status,
    Subscribe,
    Unsubscribe,
    UnsubscribeAll,
)
from broker.session import Session
from tests.unit.sessions import opened, rules
from rooms import parse_room

CHAT1 = {"target": "chat", "customer": "1"}
CHAT_ANY = {"target": "chat", "customer": "*"}


def make(profile="agent", rooms=(CHAT_ANY,), max_subs=3, public_status=False, publish=()):
    ident = identity_from_api({"allowed_rooms": list(rooms), "login_id": "bob",
                               "profile": profile, "publish_rooms": list(publish)})
    return rules(ident, max_subscriptions=max_subs, public_status=public_status)


def codes(step):
    return step.reply.code if isinstance(step.reply, Error) else "success"


@pytest.mark.parametrize("request_, expected", [
    (Subscribe(1, CHAT1), "success"),
    (Subscribe(1, CHAT_ANY), "success"),
    (Subscribe(None, CHAT1), errors.NO_REQUEST_ID),
    (Subscribe(1, {"target": "news"}), errors.ROOM_NOT_FOUND),
    (Subscribe(1, ["not", "a", "room"]), errors.INVALID_ROOM),
    (Subscribe(1, {"a": None}), errors.INVALID_ROOM),
    (Subscribe(1, None), errors.INVALID_ROOM),
    (Subscribe({"x": 1}, CHAT1), errors.INVALID_MESSAGE),
    (Unsubscribe(5), errors.NOT_SUBSCRIBED),
    (Unsubscribe(None), errors.NO_REQUEST_ID),
    (Status(), errors.MESSAGE_TYPE_NOT_ALLOWED),
    (Admin(1, "connections"), errors.MESSAGE_TYPE_NOT_ALLOWED),
    (Send(1, 42, "x"), errors.INVALID_MESSAGE),
    (Send(1, "bob", "x"), errors.DESTINATION_NOT_FOUND),
    (Publish(1, [CHAT1], "x"), errors.ROOM_NOT_ALLOWED),
    (Publish(1, "nope", "x"), errors.INVALID_MESSAGE),
    (Publish(1, [{"bad": []}], "x"), errors.INVALID_ROOM),
    (Invalid(errors.NON_JSON_MESSAGE), errors.NON_JSON_MESSAGE),
])
def test_agent_requests(request_, expected):
    assert codes(make().handle(request_)) == expected


def test_subscribe_table_and_request_id_rules():
    s = make()
    step = s.handle(Subscribe(1, CHAT1))
    assert isinstance(step.effect, JoinRoom) and step.effect.subscription.room == parse_room(CHAT1)
    # same id, same room: success and nothing to do
    again = s.handle(Subscribe(1, {"customer": "1", "target": "chat"}))
    assert isinstance(again.reply, Success) and again.effect is None
    assert codes(s.handle(Subscribe(1, CHAT_ANY))) == errors.REQUEST_ID_IN_USE
    # "1" is another request id than 1
    assert codes(s.handle(Subscribe("1", CHAT_ANY))) == "success"
    assert codes(s.handle(Subscribe(2, CHAT_ANY))) == "success"
    assert codes(s.handle(Subscribe(3, CHAT_ANY))) == errors.TOO_MANY_SUBSCRIPTIONS
    step = s.handle(Unsubscribe(1))
    assert isinstance(step.effect, LeaveRooms) and len(s.subscriptions) == 2
    step = s.handle(UnsubscribeAll())
    assert isinstance(step.effect, LeaveRooms) and len(step.effect.subscriptions) == 2
    assert s.subscriptions == {}


def test_a_failed_join_is_forgotten_and_answered():
    ident = identity_from_api({"allowed_rooms": [CHAT_ANY], "login_id": "bob"})
    s, out = opened(ident, JsonCodec(rich=True))
    assert isinstance(s.receive(Subscribe(1, CHAT1)), JoinRoom)
    s.effect_failed(errors.SERVICE_UNAVAILABLE, "redis down")
    assert s.subscriptions == {}
    assert json.loads(out.frames[-1])["message"] == errors.SERVICE_UNAVAILABLE
    assert codes(s.handle(Subscribe(1, CHAT_ANY))) == "success"


def test_effects_for_send_publish_status_admin():
    s = make(profile="service")
    assert isinstance(s.handle(Send(1, "/agent/x", {"a": 1})).effect, SendDirect)
    step = s.handle(Publish(1, [{"anything": "goes"}], [1, 2]))
    assert isinstance(step.effect, PublishRooms) and step.effect.data_json == "[1,2]"
    assert codes(s.handle(Admin(1, "kick"))) == errors.MESSAGE_TYPE_NOT_ALLOWED
    admin = make(profile="admin")
    assert isinstance(admin.handle(Status()).effect, QueryStatus)
    assert isinstance(admin.handle(Admin(1, "stats")).effect, ReadStats)
    assert codes(admin.handle(Admin(1, "explode"))) == errors.UNKNOWN_ACTION
    assert codes(admin.handle(Subscribe(1, CHAT1))) == errors.PROFILE_CANNOT_SUBSCRIBE
    assert isinstance(make(public_status=True).handle(Status()).effect, QueryStatus)


def test_publish_rooms_permit_non_service():
    s = make(publish=[CHAT_ANY])
    assert codes(s.handle(Publish(1, [CHAT1], "x"))) == "success"
    assert codes(s.handle(Publish(1, [CHAT1, {"target": "news"}], "x"))) == errors.ROOM_NOT_ALLOWED


# ------------------------------------------------------------------ JSON codec


@pytest.mark.parametrize("text, expected", [
    ("ping", Ping(text=True)),
    ("not json", Invalid(errors.NON_JSON_MESSAGE)),
    (None, Invalid(errors.NON_JSON_MESSAGE)),
    ("[1,2]", Invalid(errors.INVALID_MESSAGE)),
    ('"str"', Invalid(errors.INVALID_MESSAGE)),
    ("{}", Invalid(errors.MESSAGE_TYPE_NOT_ALLOWED)),
    ('{"type":"dance","requestId":4}', Invalid(errors.MESSAGE_TYPE_NOT_ALLOWED, 4)),
    ('{"type":"subscribe","room":{"a":1},"requestId":"r"}', Subscribe("r", {"a": 1})),
    ('{"type":"unsubscribe","requestId":2}', Unsubscribe(2)),
    ('{"type":"status"}', Status()),
    ('{"type":"send","to":"/agent/x"}', Invalid(errors.INVALID_MESSAGE, None,
                                               "send needs 'to' and 'data'")),
])
def test_json_decode(text, expected):
    assert JsonCodec(rich=False).decode(text) == expected


def test_json_frames_high_templar_exact():
    ht = JsonCodec(rich=False)
    ident = Identity(api_rooms=(parse_room(CHAT1), parse_room(CHAT1), parse_room(CHAT_ANY)))
    assert json.loads(ht.welcome(ident, "c1", None)) == {
        "is_authorized": True, "allowed_rooms": [CHAT1, CHAT_ANY]}
    assert json.loads(ht.refused("refused")) == {"is_authorized": False}
    assert json.loads(ht.answer(Success(7)).frame) == {"code": "success"}
    assert json.loads(ht.answer(Error("room-not-found", 7)).frame) == {
        "code": "error", "message": "room-not-found"}
    assert ht.answer(Pong(text=True)).frame == "pong"
    assert json.loads(ht.answer(Pong(3)).frame) == {"type": "pong", "requestId": 3}


def test_json_frames_rich_dialect():
    rich = JsonCodec(rich=True)
    ident = identity_from_api({"login_id": "bob", "profile": "super_agent",
                               "allowed_rooms": [CHAT1]})
    w = json.loads(rich.welcome(ident, "c1", "tok"))
    assert w["type"] == "welcome" and w["destination"] == "/super_agent/bob"
    assert w["allowed_rooms"] == [CHAT1, {"client": "*", "profile": "agent"}]
    assert json.loads(rich.answer(Error("x", "r1", "why")).frame) == {
        "type": "error", "code": "error", "message": "x", "requestId": "r1", "detail": "why"}
    assert json.loads(rich.answer(Success("r1", {"id": "t"})).frame) == {
        "code": "success", "requestId": "r1", "id": "t"}
    assert json.loads(rich.refused("auth-unavailable")) == {
        "type": "refused", "is_authorized": False, "reason": "auth-unavailable"}


def test_profiles_rules_table():
    assert Profile.SERVICE.code == 3
    admin = identity_from_api({"login_id": "root", "profile": "admin", "allowed_rooms": [CHAT1]})
    assert admin.allowed_rooms == ()
    service = identity_from_api({"login_id": "s", "profile": "service"})
    assert service.may_publish(parse_room({"any": "room"}))
    assert service.may_subscribe(parse_room({"client": "x", "profile": "super_agent"}))
    assert not service.may_subscribe(parse_room({"client": "x", "profile": "service"}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, {"x": float("-inf")}]])
def test_dump_json_refuses_values_that_are_not_json(value):
    # publish()/publish_sync() callers can pass these; no client could parse the frame.
    from broker.jsontext import dump_json

    with pytest.raises(ValueError):
        dump_json(value)


# ---------------------------------------------------------------- bounds (issue 11, items 9, 13)


def test_decoder_and_encoder_agree_on_depth():
    """What load_json lets in, dump_json writes; past MAX_JSON_DEPTH neither does (publish()
    callers get the same ValueError). Before, ~970 levels parsed and failed to encode."""
    from broker.jsontext import JsonTooDeep, MAX_JSON_DEPTH, dump_json, load_json

    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert dump_json(load_json(at_limit)) == at_limit
    over = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    for text in (over, "[" * 970 + "]" * 970, '{"a":' * 970 + "1" + "}" * 970):
        with pytest.raises(JsonTooDeep):
            load_json(text)
    value: object = []
    for _ in range(MAX_JSON_DEPTH):
        value = [value]
    with pytest.raises(JsonTooDeep):
        dump_json(value)
    for _ in range(2000):
        value = [value]
    with pytest.raises(JsonTooDeep):  # not RecursionError
        dump_json(value)
    # brackets inside strings are not nesting; many siblings are not depth
    assert load_json(json.dumps(["[" * 500, [{}] * 500]))[0] == "[" * 500
    with pytest.raises(UnicodeDecodeError):  # bytes are UTF-8 (RFC 8259), never UTF-16
        load_json('{"a":1}'.encode("utf-16"))


@pytest.mark.timeout(60)
def test_depth_check_is_linear_on_hostile_text():
    """Found in review of the depth limit: cutting strings out with a pattern that handles
    escapes itself is quadratic on an unclosed string full of ``\\"`` (retried from every
    quote); 1,100 ``[`` and 65 KB of them froze the event loop for 15 s, before any login on
    the TCP gate. At this size the quadratic scan runs for hours; the linear one, milliseconds."""
    from broker.jsontext import JsonTooDeep, load_json

    with pytest.raises(ValueError, match="unbalanced"):
        load_json("[" * 1100 + '"' + '\\"' * 500_000)
    closed = "[" * 1100 + '"' + '\\"' * 500_000 + '"' + "]" * 1100
    with pytest.raises(JsonTooDeep):
        load_json(closed)


def test_request_ids_are_bounded():
    from broker.requests import MAX_REQUEST_ID_CHARS

    s = make(max_subs=10)
    longest = "r" * MAX_REQUEST_ID_CHARS
    assert codes(s.handle(Subscribe(longest, CHAT1))) == "success"
    for rid in ("r" * (MAX_REQUEST_ID_CHARS + 1), 10 ** MAX_REQUEST_ID_CHARS, 2 ** 5000,
                ["x" * 200]):
        for request in (Subscribe(rid, CHAT1), Unsubscribe(rid), Ping(rid),
                        Send(rid, "/agent/x", 1), Publish(rid, [CHAT1], 1), Invalid("x", rid)):
            step = s.handle(request)
            assert isinstance(step.reply, Error) and step.effect is None
            assert step.reply.code == errors.REQUEST_ID_TOO_LONG
            assert step.reply.request_id is None  # not echoed
    assert list(s.subscriptions) == [json.dumps(longest)]
