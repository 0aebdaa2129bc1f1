"""The STOMP codec (broker.codecs.stomp) with plain function calls: frames <-> session values."""

from __future__ import annotations

import json
import re

import pytest

from broker import disconnect, errors
from broker.codec import BadConnect, Heartbeats
from broker.codecs.stomp import MAX_PATTERN, StompCodec, StompContext, WatchPattern
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stompframe import CBFramer, Frame, StompParser, encode_frame, parse_frame
from broker.identity import Identity, identity_from_api, identity_from_static_keys
from broker.messages import DirectMessage
from broker.effects import JoinRoom
from broker.jsontext import dump_json
from broker.replies import Error, Pong, Success
from broker.requests import (
    Goodbye,
    Invalid,
    Ping,
    Publish,
    Send,
    Subscribe,
    Unsubscribe,
    UnsubscribeAll,
)
from broker.session import Session
from tests.unit.sessions import rules
from broker.subscription import Subscription
from rooms import parse_room

KEYS = {"agent": "ak", "super_agent": "sk", "service": "vk", "admin": "dk"}


def frame(command: str, body: str = "", **headers: str) -> bytes:
    return encode_frame(Frame(command, {k.replace("_", "-"): v for k, v in headers.items()},
                              body.encode()))


def out(data: str | bytes | None, cb: bool = False) -> Frame:
    assert data is not None
    raw = data.encode() if isinstance(data, str) else data
    return parse_frame(raw, cb_compat=cb)


def connected(codec: StompCodec, profile: str = "agent", login: str = "bob") -> StompCodec:
    codec.welcome(identity_from_api({"login_id": login, "profile": profile}), "c1", None)
    return codec


# --------------------------------------------------------------------------- connecting


def test_credentials_static_keys_and_token():
    codec = StompCodec(cb=True)
    creds = codec.connect(
        frame("CONNECT", login="agent1", passcode="ak", **{"secret-key": "app"}),
        "10.0.0.1").credentials
    assert (creds.app_key, creds.login_id, creds.profile_key) == ("app", "agent1", "ak")
    assert creds.is_static and creds.remote_addr == "10.0.0.1"
    assert "passcode" not in creds.headers and "secret-key" not in creds.headers

    creds = StompCodec().connect(
        frame("STOMP", token="t1", cookie="sessionid=x", authorization="Token z"),
        None).credentials
    assert not creds.is_static and creds.token == "t1"
    assert creds.headers["cookie"] == "sessionid=x" and creds.headers["authorization"] == "Token z"


@pytest.mark.parametrize("data", [frame("SEND", destination="/x"), b"junk\n\n\x00", b""])
def test_credentials_need_a_connect_frame(data):
    with pytest.raises(BadConnect):
        StompCodec().connect(data, None)


def test_welcome_has_the_communication_broker_headers():
    codec = StompCodec(heartbeat_ms=5000)
    connecting = codec.connect(frame("CONNECT", token="t", **{"heart-beat": "1000,20000"}), None)
    ident = identity_from_static_keys("app", "sam", "sk", expected_app_key="app",
                                      profile_keys=KEYS)
    f = out(codec.welcome(ident, "abc", None))
    assert f.command == "CONNECTED"
    assert f.headers == {
        "version": "1.2", "heart-beat": "5000,5000", "session": "abc", "server": "combroker/0.1",
        "session-id": "abc", "login": "sam", "connection-id": "abc",
        "destination": "/super_agent/sam", "profile-code": "2", "profile-desc": "super_agent"}
    # negotiated: we send every max(5000, 20000), and expect the client every max(1000, 5000)
    assert connecting.heartbeats == Heartbeats(out_ms=20000, in_ms=5000)


def test_no_heartbeats_when_either_side_declines():
    codec = StompCodec(heartbeat_ms=5000)
    connecting = codec.connect(frame("CONNECT", token="t"), None)
    connected(codec)
    assert connecting.heartbeats == Heartbeats(out_ms=0, in_ms=0)


@pytest.mark.parametrize("reason", [errors.INVALID_APP_KEY, errors.INVALID_PROFILE_KEY,
                                    errors.REFUSED])
def test_refused_is_an_error_with_the_exact_text(reason):
    f = out(StompCodec(cb=True).refused(reason), cb=True)
    assert f.command == "ERROR" and f.headers["message"] == reason


# --------------------------------------------------------------------------- inbound

CHAT = {"target": "chat", "customer": "1"}


@pytest.mark.parametrize("data, expected", [
    (frame("SUBSCRIBE", id="s1", destination="/room/" + json.dumps(CHAT)), Subscribe("s1", CHAT)),
    (frame("SUBSCRIBE", id="s2", destination="/agent/alice"),
     Subscribe("s2", {"client": "alice", "profile": "agent"})),
    (frame("SUBSCRIBE", id="s3", destination="/super_agent/*"),
     Subscribe("s3", {"client": "*", "profile": "super_agent"})),
    (frame("SUBSCRIBE", destination="/room/{}"), Subscribe(None, {})),
    (frame("UNSUBSCRIBE", id="s1"), Unsubscribe("s1")),
    (frame("UNSUBSCRIBE"), UnsubscribeAll()),
    (frame("UNSUBSCRIBE", destination="/agent/x"), UnsubscribeAll()),
    (frame("SEND", '{"a":1}', destination="/agent/alice"),
     Send(None, "/agent/alice", {"a": 1}, text='{"a":1}')),
    (frame("SEND", "hello", destination="/agent/alice"),
     Send(None, "/agent/alice", "hello", text="hello")),
    (frame("SEND", "123", destination="/agent/alice", content_type="text/plain"),
     Send(None, "/agent/alice", "123", text="123", content_type="text/plain")),
    (frame("SEND", '{"x":true}', destination="/room/" + json.dumps(CHAT)),
     Publish(None, [CHAT], {"x": True})),
    (frame("SEND", "1", destination="/room/[" + json.dumps(CHAT) + ', {"a":"b"}]'),
     Publish(None, [CHAT, {"a": "b"}], 1)),
    (frame("DISCONNECT"), Goodbye()),
    (b"\n", Ping()),
    (b"\r\n\n", Ping()),
])
def test_decode(data, expected):
    req = StompCodec().decode(data)
    req.meta = None
    if isinstance(req, Subscribe):
        req.pattern = None
    assert req == expected


@pytest.mark.parametrize("data, code", [
    (frame("SUBSCRIBE", id="s", destination="/room/{nope"), errors.INVALID_ROOM),
    (frame("SUBSCRIBE", id="s", destination="/topic/x"), errors.INVALID_ROOM),
    (frame("SUBSCRIBE", id="s"), errors.INVALID_MESSAGE),
    (frame("SUBSCRIBE", id="s", destination="(", **{"destination-type": "1"}),
     errors.INVALID_PATTERN),
    (frame("SEND", "x"), errors.INVALID_MESSAGE),
    (frame("SEND", "x", destination="/room/]"), errors.INVALID_ROOM),
    (frame("BEGIN", transaction="t"), errors.MESSAGE_TYPE_NOT_ALLOWED),
    (frame("CONNECT", token="t"), errors.MESSAGE_TYPE_NOT_ALLOWED),
    (frame("MESSAGE", destination="/x"), errors.MESSAGE_TYPE_NOT_ALLOWED),
    (b"SEND\ndestination:/a\\q\n\nx\x00", errors.MALFORMED_FRAME),
    (b"SEND\ndestination\n\nx\x00", errors.MALFORMED_FRAME),
    (b"\x00\x01\x02junk", errors.MALFORMED_FRAME),
    (b"SEND\ncontent-length:99\n\nshort\x00", errors.MALFORMED_FRAME),
])
def test_decode_errors(data, code):
    req = StompCodec().decode(data)
    assert isinstance(req, Invalid) and req.code == code
    assert isinstance(req.meta, StompContext)
    assert req.meta.fatal == (code == errors.MALFORMED_FRAME)


def test_send_body_bytes_must_be_utf8():
    req = StompCodec().decode(Frame("SEND", {"destination": "/agent/a"}, b"\xff\xfe"))
    assert isinstance(req, Invalid) and req.code == errors.INVALID_MESSAGE


def test_receipt_and_transaction_travel_in_meta():
    codec = StompCodec(cb=True)
    req = codec.decode(frame("SEND", "x", destination="/agent/a", transaction="t9", receipt="r"))
    assert req.meta == StompContext(command="SEND", receipt="r", transaction="t9")
    req = codec.decode(frame("DISCONNECT", **{"receipt-id": "77"}))
    assert isinstance(req, Goodbye) and req.meta == StompContext("DISCONNECT", receipt="77")


def test_cb_subscribe_without_id_is_named_by_its_destination():
    req = StompCodec(cb=True).decode(frame("SUBSCRIBE", destination="/agent/x"))
    assert isinstance(req, Subscribe) and req.request_id == "/agent/x"


def test_cb_parsing_is_tolerant_of_spaces_and_unescaped_text():
    req = StompCodec(cb=True).decode(b"SEND \ndestination : /agent/a\\b\n\nhi")
    assert isinstance(req, Send) and req.to == "/agent/a\\b" and req.text == "hi"


def test_regex_watch_is_a_wildcard_watch_with_a_pattern():
    ident = identity_from_api({"login_id": "sup", "profile": "super_agent"})
    codec = StompCodec(cb=True)
    codec.welcome(ident, "c", None)
    req = codec.decode(frame("SUBSCRIBE", id="w", destination="/agent/.*",
                             **{"destination-type": "1"}))
    assert isinstance(req, Subscribe)
    assert req.room == {"client": "*", "profile": "agent"}
    assert req.pattern.fullmatch("/agent/bob") and not req.pattern.fullmatch("/agentx/bob")
    step = rules(ident, max_subscriptions=10, public_status=False).handle(req)
    assert isinstance(step.effect, JoinRoom) and step.effect.subscription.pattern is req.pattern
    # a super agent only watches agents: a regex without a profile prefix means agents (the
    # codec leaves the profile to the session)
    req = codec.decode(frame("SUBSCRIBE", id="w2", destination=".*bo.*",
                             **{"destination-type": "1"}))
    assert isinstance(req, Subscribe) and req.room is None
    step = rules(ident, max_subscriptions=10, public_status=False).handle(req)
    assert isinstance(step.effect, JoinRoom)
    assert step.effect.subscription.room == parse_room({"client": "*", "profile": "agent"})


def test_regex_watch_of_a_service_needs_a_profile_prefix():
    codec = StompCodec()
    svc = identity_from_api({"login_id": "svc", "profile": "service"})
    codec.welcome(svc, "c", None)
    req = codec.decode(frame("SUBSCRIBE", id="w", destination=".*",
                             **{"destination-type": "1"}))
    step = rules(svc, max_subscriptions=10, public_status=False).handle(req)
    assert isinstance(step.reply, Error) and step.reply.code == errors.INVALID_PATTERN
    req = codec.decode(frame("SUBSCRIBE", id="w", destination="^/super_agent/a.*",
                             **{"destination-type": "1"}))
    assert req.room == {"client": "*", "profile": "super_agent"}


def test_subscribing_to_ones_own_destination_names_direct_messages():
    codec = connected(StompCodec())
    req = codec.decode(frame("SUBSCRIBE", id="inbox", destination="/agent/bob", receipt="r1"))
    assert isinstance(req, Ping)
    assert out(codec.answer(Pong(), req.meta).frame).headers == {"receipt-id": "r1"}
    msg = out(codec.message(_direct()))
    assert msg.headers["subscription"] == "inbox"
    assert isinstance(codec.decode(frame("UNSUBSCRIBE", id="inbox")), Ping)
    assert "subscription" not in out(codec.message(_direct())).headers


# --------------------------------------------------------------------------- replies


def test_success_replies():
    codec = StompCodec()
    assert codec.answer(Success(), StompContext("SUBSCRIBE")).frame is None
    assert codec.answer(Success()).frame is None
    receipt = codec.answer(Success(), StompContext("SUBSCRIBE", receipt="r1"))
    f = out(receipt.frame)
    assert (f.command, f.headers) == ("RECEIPT", {"receipt-id": "r1"})
    ack = codec.answer(Success(), StompContext("SEND", transaction="7"))
    f = out(ack.frame)
    assert (f.command, f.headers) == ("ACK", {"transaction": "7", "error-desc": "OK"})
    assert receipt.ending is None and ack.ending is None
    assert codec.answer(Success(), StompContext("SUBSCRIBE")).ending is None


def test_standard_error_closes():
    codec = StompCodec()
    answer = codec.answer(Error(errors.ROOM_NOT_FOUND, "s1"),
                          StompContext("SUBSCRIBE", receipt="r"))
    f = out(answer.frame)
    assert f.command == "ERROR"
    assert f.headers["message"] == errors.ROOM_NOT_FOUND and f.headers["receipt-id"] == "r"
    assert answer.ending == disconnect.Disconnect(errors.CLOSE_NORMAL, errors.ROOM_NOT_FOUND)


def test_cb_errors_keep_the_connection_open():
    codec = StompCodec(cb=True)
    answer = codec.answer(Error(errors.DESTINATION_NOT_FOUND),
                          StompContext("SEND", transaction="t1"))
    f = out(answer.frame, cb=True)
    assert (f.command, f.headers) == ("ACK", {"transaction": "t1",
                                              "error-desc": errors.DESTINATION_NOT_FOUND})
    assert answer.ending is None
    answer = codec.answer(Error(errors.ROOM_NOT_FOUND), StompContext("SUBSCRIBE"))
    f = out(answer.frame, cb=True)
    assert f.command == "ERROR"
    assert answer.ending is None
    # ... except for a malformed frame
    req = codec.decode(b"SEND\nno colon here\n\nx")
    answer = codec.answer(Error(req.code, detail=req.detail), req.meta)
    out(answer.frame, cb=True)
    assert answer.ending == disconnect.Disconnect(errors.CLOSE_NORMAL, errors.MALFORMED_FRAME)


@pytest.mark.parametrize("headers", [{"receipt": "bye"}, {"receipt-id": "bye"}])
def test_disconnect_receipt_then_close(headers):
    codec = StompCodec(cb=True)
    req = codec.decode(frame("DISCONNECT", **headers))
    answer = codec.answer(Success(), req.meta)
    f = out(answer.frame, cb=True)
    assert (f.command, f.headers) == ("RECEIPT", {"receipt-id": "bye"})
    assert answer.ending == disconnect.Disconnect(errors.CLOSE_NORMAL, "disconnect")


def test_disconnect_without_receipt_closes_silently():
    codec = StompCodec()
    req = codec.decode(frame("DISCONNECT"))
    answer = codec.answer(Success(), req.meta)
    assert answer.frame is None and answer.ending == disconnect.Disconnect(errors.CLOSE_NORMAL, "disconnect")


# --------------------------------------------------------------------------- deliveries


def _sub(rid: str, room: dict, pattern: str | None = None) -> Subscription:
    return Subscription(rid, json.dumps(rid), parse_room(room),
                        pattern=WatchPattern(pattern) if pattern else None)


def _direct(text: str | None = None, data_json: str = '{"n":1}',
            content_type: str | None = None) -> DirectMessage:
    return DirectMessage("m1", '{"client":"bob","profile":"agent"}', "/agent/bob",
                         "/service/billing", "{}", data_json, text, content_type)


def test_publish_frame():
    f = out(StompCodec().publish(_sub("s1", CHAT), '{"a":[1,2]}', "k", "trig1"))
    assert f.command == "MESSAGE" and f.body == b'{"a":[1,2]}'
    assert f.headers["subscription"] == "s1" and f.headers["message-id"] == "trig1"
    assert f.headers["content-type"] == "application/json"
    assert json.loads(f.headers["destination"].removeprefix("/room/")) == CHAT


@pytest.mark.parametrize("room, pattern, dest", [
    ({"client": "*", "profile": "agent"}, None, "/agent/*"),
    ({"client": "*", "profile": "agent"}, "/agent/b.*", "/agent/b.*"),
    ({"client": "al", "profile": "agent"}, None, "/agent/al"),
])
def test_publish_destination_names_the_subscription(room, pattern, dest):
    f = out(StompCodec().publish(_sub("s", room, pattern), "1", "k", "t"))
    assert f.headers["destination"] == dest


@pytest.mark.parametrize("text, data_json, body, ctype", [
    ("exact  text {", '"exact  text {"', b"exact  text {", "text/plain"),
    (None, '"just a string"', b"just a string", "text/plain"),
    (None, '{"n":1}', b'{"n":1}', "application/json"),
    (None, "été", "été".encode(), "application/json"),
])
def test_direct_message_body(text, data_json, body, ctype):
    f = out(StompCodec().message(_direct(text, data_json)))
    assert f.body == body and f.headers["content-type"] == ctype
    assert f.headers["origin"] == "/service/billing" and f.headers["destination"] == "/agent/bob"
    assert "transaction" not in f.headers


def test_cb_direct_message_has_login_origin_and_transaction():
    codec = StompCodec(cb=True, framer=CBFramer())
    data = codec.message(_direct("hi"))
    assert data[:1] == b"\x00" and int.from_bytes(data[1:5], "little") == len(data) - 5
    f = parse_frame(data[5:], cb_compat=True)
    assert f.headers["origin"] == "billing" and f.headers["transaction"] == "m1"
    assert f.headers["content-length"] == "2" and f.body == b"hi"


def test_watched_copy_is_the_message_with_the_watch_subscription():
    f = out(StompCodec().watched(_sub("w", {"client": "*", "profile": "agent"}), _direct("yo")))
    assert f.headers["subscription"] == "w" and f.headers["destination"] == "/agent/bob"
    assert f.body == b"yo"


def test_text_mode_for_websocket():
    codec = StompCodec(text=True)
    data = codec.publish(_sub("s", CHAT), '"é"', "k", "t")
    assert isinstance(data, str) and data.endswith("\x00")
    assert codec.heartbeat() == "\n"


def test_cb_framer_answers_in_the_clients_byte_order():
    framer = CBFramer()
    text = b"CONNECT\nlogin:a\n\n"
    framer.feed(b"\x01" + len(text).to_bytes(4, "big") + text)
    data = StompCodec(cb=True, framer=framer).refused("no")
    assert data[:1] == b"\x01" and int.from_bytes(data[1:5], "big") == len(data) - 5
    assert data.endswith(b"\x00")



def _watch(pattern: str) -> Subscribe | Invalid:
    codec = connected(StompCodec(), profile="super_agent", login="sue")
    req = codec.decode(frame("SUBSCRIBE", id="w", destination=pattern,
                             **{"destination-type": "1"}))
    assert isinstance(req, (Subscribe, Invalid))
    return req


@pytest.mark.parametrize("pattern, matching, other", [
    ("/agent/.*", "/agent/" + "a" * 90 + "c", "/agents/a"),
    ("/agent/(bob|ann)", "/agent/ann", "/agent/" + "bob" * 30),
    ("/agent/(a|aa)*b", "/agent/aaab", "/agent/" + "a" * 90 + "c"),  # exponential in re
    ("/agent/(ab)+", "/agent/abab", "/agent/" + "ab" * 90 + "a"),
    ("/agent/.*.*.*x", "/agent/axbx", "/agent/" + "a" * 200),  # O(n^3) in re
    ("/agent/" + ".?" * 100 + "!", "/agent/x!", "/agent/" + "x" * 40),  # "?" was not counted
])
def test_regex_watch_matches_without_backtracking(pattern, matching, other):
    """The patterns once refused as "too costly" (or let through by mistake) are matched by
    RE2. On the exponential ones, Python's re would take years for the non-matching
    destination (the test would time out)."""
    req = _watch(pattern)
    assert isinstance(req, Subscribe) and req.pattern is not None
    assert req.pattern.pattern == pattern
    assert req.pattern.fullmatch(matching)
    assert not req.pattern.fullmatch(other)


@pytest.mark.parametrize("pattern, why", [
    (r"/agent/(a)\1", "invalid escape"),                  # backreference
    (r"(?x) /agent/ ( a | aa ) * b", "invalid perl operator"),  # verbose mode
    (r"/agent/(?=a).*", "invalid perl operator"),          # look-ahead
    (r"/agent/(.{0,50}){20}", "pattern too large"),        # past PATTERN_MAX_MEM
    ("/agent/" + "a" * MAX_PATTERN, "longer than"),
    (r"/agent/\Z", "invalid escape"),                      # Python's \Z is RE2's \z
])
def test_regex_watch_refuses_what_re2_cannot_compile(pattern, why):
    re.compile(pattern)  # Python's re takes each of them
    req = _watch(pattern)
    assert isinstance(req, Invalid) and req.code == errors.INVALID_PATTERN
    assert why in (req.detail or ""), req.detail


def test_a_regex_watch_does_not_match_a_destination_longer_than_any_clients():
    pattern = WatchPattern("/agent/.*")
    assert pattern.fullmatch("/agent/" + "a" * 256)
    assert not pattern.fullmatch("/agent/" + "a" * 600)


# --------------------------------------------------------------------------- hostile identities

HOSTILE_LOGINS = ["evil\x00ERROR", "evil\nERROR\nmessage:forged\n\nx\x00", "evil\r\n\r\nERROR",
                  "evil:\\c\\n\\"]


@pytest.mark.parametrize("login", HOSTILE_LOGINS)
def test_no_encoder_lets_a_login_split_a_frame(login):
    """A direct message from and to a login holding NUL, CR, LF, ':' or '\\' is one frame on
    every STOMP framing, and one line in the JSON dialects (JSON escapes control characters)."""
    sender, to = f"/agent/{login}", f"/agent/{login}2"
    message = DirectMessage("m1", dump_json({"client": login + "2", "profile": "agent"}), to,
                            sender, dump_json({"type": "message", "from": sender, "to": to,
                                               "data": "hi", "id": "m1"}), '"hi"', "hi")
    for codec in (StompCodec(), StompCodec(text=True)):
        data = codec.message(message)
        raw = data.encode() if isinstance(data, str) else data
        frames = StompParser().feed(raw)
        assert len(frames) == 1 and isinstance(frames[0], Frame)
        assert frames[0].body == b"hi"
        assert frames[0].headers["origin"] == sender.replace("\x00", "\ufffd")
        assert frames[0].headers["destination"] == to.replace("\x00", "\ufffd")
    framer = CBFramer()
    data = StompCodec(cb=True, framer=framer).message(message)
    assert isinstance(data, bytes) and b"\x00" not in data[5:-1]
    (frame_,) = CBFramer().feed(data)
    assert frame_.body == b"hi" and not set("".join(frame_.headers.values())) & set("\x00\r\n")
    for json_codec in (JsonCodec(rich=True), JsonCodec(rich=False)):
        for line in (json_codec.message(message),
                     json_codec.welcome(Identity(login_id=login), "c1", None)):
            assert not set(line) & set("\x00\r\n"), line
            assert json.loads(line)


# --------------------------------------------------------------------------- acknowledgement


def test_client_ack_subscriptions_get_ack_ids_and_acks_are_checked():
    codec = connected(StompCodec())
    room = {"x": "1"}
    req = codec.decode(frame("SUBSCRIBE", id="c", destination="/room/" + json.dumps(room),
                             ack="client-individual"))
    assert isinstance(req, Subscribe)
    codec.decode(frame("SUBSCRIBE", id="a", destination="/room/" + json.dumps(room)))
    first = out(codec.publish(_sub("c", room), "1", "k", "t1"))
    assert first.headers["ack"] == "1"
    assert "ack" not in out(codec.publish(_sub("a", room), "1", "k", "t1")).headers
    direct = out(codec.watched(_sub("c", {"client": "*", "profile": "agent"}), _direct()))
    assert direct.headers["ack"] == "2"
    for command in ("ACK", "NACK"):
        assert isinstance(codec.decode(frame(command, id="1")), Ping)
    # "9" * 5000: int() of it raised ValueError out of decode (found in review)
    for bad in ("3", "0", "m1", "-1", "", "9" * 5000, "0" * 5000 + "1"):
        req = codec.decode(frame("ACK", id=bad))
        assert isinstance(req, Invalid) and req.code == errors.INVALID_MESSAGE, bad
    assert isinstance(codec.decode(frame("NACK")), Invalid)  # no id
    # unsubscribed: no more ack ids for it
    codec.decode(frame("UNSUBSCRIBE", id="c"))
    assert "ack" not in out(codec.publish(_sub("c", room), "1", "k", "t2")).headers


def test_ack_mode_of_a_refused_subscribe_is_forgotten():
    codec = connected(StompCodec())
    req = codec.decode(frame("SUBSCRIBE", id="x", destination="/room/{\"r\":\"1\"}", ack="client"))
    codec.answer(Error(errors.ROOM_NOT_FOUND, "x"), req.meta).frame
    assert "ack" not in out(codec.publish(_sub("x", {"r": "1"}), "1", "k", "t")).headers
    req = codec.decode(frame("SUBSCRIBE", id="y", destination="/room/{}", ack="sometimes"))
    assert isinstance(req, Invalid) and req.code == errors.INVALID_MESSAGE


def test_inbox_subscription_with_client_ack_names_and_acks_direct_messages():
    codec = connected(StompCodec())
    codec.decode(frame("SUBSCRIBE", id="inbox", destination="/agent/bob",
                       ack="client-individual"))
    msg = out(codec.message(_direct()))
    assert msg.headers["subscription"] == "inbox" and msg.headers["ack"] == "1"


def test_communication_broker_dialect_has_no_ack_ids():
    codec = connected(StompCodec(cb=True))
    codec.decode(frame("SUBSCRIBE", id="c", destination="/room/{\"r\":\"1\"}", ack="client"))
    assert "ack" not in out(codec.publish(_sub("c", {"r": "1"}), "1", "k", "t"), cb=True).headers
    assert isinstance(codec.decode(frame("ACK", id="whatever")), Ping)


def test_a_stomp_senders_content_type_reaches_stomp_receivers():
    msg = _direct(text="<a/>", content_type="application/xml")
    assert out(StompCodec().message(msg)).headers["content-type"] == "application/xml"
    assert out(StompCodec().message(_direct(text="t"))).headers["content-type"] == "text/plain"


def test_connected_offers_heartbeats_only_where_the_client_wants_them():
    for asked, offered in (("0,0", "0,0"), ("1000,0", "0,5000"), ("0,1000", "5000,0")):
        codec = StompCodec(heartbeat_ms=5000)
        codec.connect(frame("CONNECT", token="t", **{"heart-beat": asked}), None)
        f = out(codec.welcome(identity_from_api({"login_id": "b"}), "c", None))
        assert f.headers["heart-beat"] == offered, asked


def test_a_connection_holds_at_most_max_regex_watches():
    """Each regex watch may hold up to PATTERN_MAX_MEM of RE2 memory and costs matching work
    per direct message: a connection holds at most MAX_REGEX_WATCHES of them."""
    from broker.rules import MAX_REGEX_WATCHES

    ident = identity_from_api({"login_id": "sup", "profile": "super_agent"})
    codec = connected(StompCodec(), profile="super_agent", login="sup")
    session = rules(ident, max_subscriptions=100, public_status=False)
    for i in range(MAX_REGEX_WATCHES):
        step = session.handle(codec.decode(frame("SUBSCRIBE", id=f"w{i}", destination=f"/agent/{i}.*",
                                                 **{"destination-type": "1"})))
        assert isinstance(step.effect, JoinRoom), step
    step = session.handle(codec.decode(frame("SUBSCRIBE", id="more", destination="/agent/x.*",
                                             **{"destination-type": "1"})))
    assert isinstance(step.reply, Error) and step.reply.code == errors.TOO_MANY_SUBSCRIPTIONS
    # ordinary subscriptions are not limited by it; and a watch ended frees its place
    step = session.handle(codec.decode(frame("SUBSCRIBE", id="all", destination="/agent/*")))
    assert isinstance(step.effect, JoinRoom)
    session.handle(codec.decode(frame("UNSUBSCRIBE", id="w0")))
    step = session.handle(codec.decode(frame("SUBSCRIBE", id="more", destination="/agent/x.*",
                                             **{"destination-type": "1"})))
    assert isinstance(step.effect, JoinRoom)
