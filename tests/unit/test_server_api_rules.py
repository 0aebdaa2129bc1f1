"""The server API's rules without I/O (broker.rules, broker.session, the codecs): which
subscriptions an ``unsubscribe`` or a re-check ends, what each dialect is shown, and the
messages between processes that carry them."""

from __future__ import annotations

import json

from broker import disconnect
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec
from broker.effects import JoinRoom
from broker.identity import identity_from_api, identity_from_static_keys
from broker.messages import DropRooms, Notify, Recheck, from_wire
from broker.requests import Subscribe
from rooms import parse_room
from tests.unit.sessions import opened

CHAT1 = {"target": "chat", "customer": "1"}
CHAT2 = {"target": "chat", "customer": "2"}
CHAT_ANY = {"target": "chat", "customer": "*"}
NEWS = {"target": "news"}


def bob(*rooms: dict) -> object:
    return identity_from_api({"login_id": "bob", "allowed_rooms": list(rooms)})


def subscribed(codec, identity, *rooms: dict):
    s, out = opened(identity, codec)
    for n, room in enumerate(rooms):
        effect = s.receive(Subscribe(f"r{n}", room))
        assert isinstance(effect, JoinRoom), effect
        s.effect_done(None)
    out.frames.clear()
    return s, out


def test_messages_round_trip_and_an_earlier_reader_ignores_them():
    for message in (Notify("m1", '{"a":1}', ["bob", "amy"]), Notify("m2", "1"),
                    DropRooms("bob", [parse_room(CHAT1).key]), Recheck("bob")):
        wire = json.loads(json.dumps(message.to_wire()))
        assert from_wire(wire) == message
        assert wire["type"] == "cb.control" and wire["action"] != "close"


def test_login_messages_reach_only_the_auth_apis_login():
    static = identity_from_static_keys("k", "bob", "p", expected_app_key="k",
                                       profile_keys={"agent": "p"})
    for message in (Notify("m", "1", ["bob"]), DropRooms("bob", []), Recheck("bob")):
        assert message.reaches(bob())
        assert not message.reaches(static)  # another realm's bob is another client
        assert not message.reaches(identity_from_api({"login_id": "amy"}))
    assert Notify("m", "1").reaches(static)  # a broadcast reaches every connection


def test_unsubscribe_ends_exactly_the_named_rooms():
    s, out = subscribed(JsonCodec(rich=True), bob(CHAT_ANY, NEWS), CHAT1, CHAT2, CHAT_ANY, NEWS)
    dropped = s.drop_rooms([parse_room(CHAT1).key, parse_room(NEWS).key,
                            parse_room({"target": "other"}).key])
    assert [sub.request_id for sub in dropped] == ["r0", "r3"]
    assert sorted(s.subscriptions) == ['"r1"', '"r2"']  # the wildcard one stays
    s.unsubscribed(dropped, "server")
    assert [json.loads(f) for f in out.frames] == [
        {"type": "unsubscribed", "requestId": "r0", "room": CHAT1, "reason": "server"},
        {"type": "unsubscribed", "requestId": "r3", "room": NEWS, "reason": "server"}]


def test_recheck_drops_what_the_new_answer_no_longer_allows_and_keeps_the_rest():
    s, out = subscribed(JsonCodec(rich=True), bob(CHAT_ANY, NEWS), CHAT1, CHAT_ANY, NEWS)
    dropped = s.rechecked(bob(CHAT1, NEWS))
    assert [sub.request_id for sub in dropped] == ["r1"]
    assert sorted(s.subscriptions) == ['"r0"', '"r2"']
    # later requests are checked against the new answer
    s.receive(Subscribe("r9", CHAT2))
    assert json.loads(out.frames[-1])["message"] == "room-not-found"


def test_recheck_naming_another_client_closes_with_revoked():
    s, out = subscribed(JsonCodec(rich=True), bob(NEWS), NEWS)
    assert s.rechecked(identity_from_api({"login_id": "amy", "allowed_rooms": [NEWS]})) == []
    assert out.ended == [disconnect.REVOKED]
    assert disconnect.REVOKED.code == 4003 and disconnect.REVOKED.reason == "revoked"


def test_a_subscription_still_being_joined_is_not_dropped():
    s, _ = opened(bob(NEWS), JsonCodec(rich=True))
    assert isinstance(s.receive(Subscribe("r0", NEWS)), JoinRoom)
    assert s.drop_rooms([parse_room(NEWS).key]) == []
    s.effect_done(None)
    assert '"r0"' in s.subscriptions


def test_frames_per_dialect():
    rich, ht = JsonCodec(rich=True), JsonCodec(rich=False)
    who = bob()
    for codec in (rich, ht):
        assert json.loads(codec.server_message(who, "m1", '{"x":1}')) == {
            "type": "message", "from": None, "to": "/agent/bob", "data": {"x": 1}, "id": "m1"}
        assert json.loads(codec.broadcast("m2", "[1]")) == {
            "type": "broadcast", "data": [1], "id": "m2"}
    s, _ = subscribed(ht, bob(NEWS), NEWS)
    assert ht.unsubscribed(next(iter(s.subscriptions.values())), "server") is None
    stomp = StompCodec()
    frame = stomp.server_message(who, "m1", '{"x":1}')
    assert frame.startswith(b"MESSAGE\n") and b"destination:/agent/bob\n" in frame
    assert b"origin" not in frame and frame.endswith(b'{"x":1}\x00')
    frame = stomp.broadcast("m2", "[1]")
    assert b"destination:/broadcast\n" in frame and b"subscription" not in frame
    assert stomp.unsubscribed(next(iter(s.subscriptions.values())), "server") is None


async def test_a_recheck_asks_with_exactly_the_request_the_connect_sent():
    from broker.auth import ApiProxy, forwarded_headers
    from broker.credentials import Credentials

    proxy = ApiProxy("http://127.0.0.1:9/api/bootstrap/", 1.0, 4, 65536,
                     forward=("X-Tenant",))
    creds = Credentials(headers={"cookie": "sessionid=a: b; csrftoken=t", "x-tenant": "7",
                                 "user-agent": "ua"}, token="tok", remote_addr="10.0.0.1")
    kept = proxy.forwarded(creds)
    assert proxy.request(kept) == proxy._pool.head(forwarded_headers(creds, ("X-Tenant",)).items())
    assert b"GET" not in kept and b"Host" not in kept  # only what the client sent


async def test_bad_http_bodies_are_answered_before_any_io():
    from broker import serverapi

    async def error(operation: str, raw: bytes) -> tuple[int, str]:
        answer = await serverapi.answer(operation, raw)
        return answer.status, answer.body.get("error", "")

    assert await error("reboot", b"{}") == (404, "unknown-operation")
    assert await error("broadcast", b"\xff") == (400, "invalid-body")
    assert await error("broadcast", b"[]") == (400, "invalid-body")
    assert await error("broadcast", b"") == (400, "missing-field")
    assert await error("publish_to_users", b'{"logins":["a*"],"data":1}') == (400, "invalid-login")
    assert await error("disconnect", b'{"reason":"x"}') == (400, "no-target")
    assert await error("history", b'{"room":{"a":"1"},"limit":0}') == (400, "history-not-enabled")


def test_python_api_checks():
    import pytest

    from broker import api

    assert api.check_logins(["bob", "amy", "bob"]) == ["bob", "amy"]
    assert api.check_reason(None) is None and api.check_reason("bye now") == "bye now"
    for call, code in ((lambda: api.check_logins([]), "invalid-logins"),
                       (lambda: api.check_login("a/b"), "invalid-login"),
                       (lambda: api.check_reason("é"), "invalid-reason"),
                       (lambda: api.check_rooms("x"), "invalid-rooms"),
                       (lambda: api.check_data(float("nan")), "invalid-data"),
                       (lambda: api.disconnect_sync(), "no-target")):
        with pytest.raises(api.InvalidRequest) as caught:
            call()
        assert caught.value.code == code
