"""Fuzzing the inbound path (issue 7): codec.decode -> Session.receive, the STOMP framers, rooms.

Hypothesis feeds arbitrary text and bytes, and structured-but-wrong input (random JSON in every
field, random STOMP frames with random headers, bodies and escapes, random Communication Broker
length prefixes, random rooms) through the codecs into an open ``Session``, driven by a small
model of the driver (``Driver`` below: requests go in through ``Session.receive``, it carries out
the session's effects on a real ``SubscriptionIndex`` standing in for the hub and hands their
results back with ``Session.effect_done``, and checks every frame the session queues and every
delivery the subscriber's codec encodes). After every request it checks:

- no exception escapes except the documented ones (``InvalidRoom`` from ``parse_room``,
  ``StompFrameError`` from the STOMP framing); ``codec.decode``, ``Session.receive`` and
  ``Session.effect_done`` raise nothing at all;
- every bad input is answered with a named error whose code is a contract code
  (``broker.errors``), and the frame the codec writes for it says that code;
- every frame the codec writes is encodable UTF-8, and a JSON frame is strict JSON (RFC 8259:
  no NaN/Infinity), so any client can read it;
- the subscription table stays consistent with the hub (same subscriptions, keyed by the
  canonical JSON of their request id, within the limit), and the session stays usable: a valid
  subscribe still succeeds and its subscription receives a matching trigger exactly once.

``FUZZ_EXAMPLES=<n>`` raises the number of examples per test (default: quick enough for CI;
with thousands, add ``--timeout=0``).
The longer, coverage-guided run is ``fuzz/fuzz_codecs.py`` (atheris).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker import errors
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec, StompContext
from broker.codecs.stompframe import (
    COMMANDS, HEARTBEAT, CBFramer, Frame, StompFrameError, StompParser, encode_frame,
    parse_frame,
)
from broker.identity import identity_from_api
from broker.effects import (
    ConfirmMessage, Counts, JoinRoom, Kick, LeaveRooms, ListConnections, PublishRooms,
    QueryStatus, ReadStats, SendDirect, Stats,
)
from broker.jsontext import dump_json
from broker.replies import Error, Success
from broker.requests import Invalid, Ping, Subscribe, Unsubscribe
from broker.session import Session
from tests.unit.sessions import opened
from rooms import InvalidRoom, Room, SubscriptionIndex, matches, parse_room

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# Every error code of the contract a session or codec may answer with: the string constants
# of broker.errors, less the two that only the driver produces (I/O failed, or a bug).
CONTRACT_CODES = frozenset(
    v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)
) - {errors.INTERNAL_ERROR, errors.SERVICE_UNAVAILABLE}

CHAT_ANY = {"target": "chat", "customer": "*"}
VALID_ROOM = {"target": "chat", "customer": "fuzz-ok"}
PROFILES = ["agent", "super_agent", "service", "admin"]
ALLOWED = [CHAT_ANY, {"k": "*"}, {"a": 1, "b": True}, {"client": "*", "profile": "agent"}]
_counter = itertools.count()


def _no_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _finite(text: str) -> float:
    if math.isinf(value := float(text)):
        raise ValueError("out of range")
    return value


def strict_loads(text: str | bytes) -> Any:
    """RFC 8259 JSON with finite numbers: what any client reads back (no NaN/Infinity)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def fuzz_identity(profile: str) -> Any:
    return identity_from_api({"allowed_rooms": ALLOWED, "login_id": "bob", "profile": profile,
                              "publish_rooms": [{"k": "*"}, CHAT_ANY]})


class _Spy:
    """A codec that records every reply the session asks it to answer (once per request)."""

    replies: list[Any]

    def answer(self, reply: Any, context: Any = None) -> Any:
        self.replies.append(reply)
        return super().answer(reply, context)  # type: ignore[misc]


class SpyJsonCodec(_Spy, JsonCodec):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replies = []


class SpyStompCodec(_Spy, StompCodec):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replies = []


# ------------------------------------------------------------------ the driver model


class Driver:
    """broker.connection around a real, open ``Session``, minus the I/O; checks as it goes.

    A request goes in through ``Session.receive``; its effect is carried out here, on a real
    ``SubscriptionIndex`` standing in for the hub, and its result handed back with
    ``Session.effect_done``, as the driver does. The reply is the one the session asked the
    codec to answer; every frame the session queued is checked. Once an answer ended the
    connection (standard STOMP: any ERROR), the next request comes on a new connection.
    """

    def __init__(self, codec: Any, profile: str = "agent", max_subscriptions: int = 10_000
                 ) -> None:
        self.codec = codec
        self.identity = fuzz_identity(profile)
        self.settings = {"max_subscriptions": max_subscriptions, "public_status": False}
        self.frames: list[Any] = []
        self.requests = 0
        self.ending: Any = None  # the last answer's (broker.codec.Answer.ending)
        self._open()

    def _open(self) -> None:
        self.session, self.out = opened(self.identity, self.codec, **self.settings)
        self.hub: SubscriptionIndex[Any] = SubscriptionIndex()

    # -- one request, as Connection.receive does it
    def receive(self, request: Any) -> Any:
        self.requests += 1
        if isinstance(request, Invalid):
            assert request.code in CONTRACT_CODES, request
        if self.out.ended:
            self._open()
        self.codec.replies.clear()
        queued = len(self.out.frames)
        effect = self.session.receive(request)
        if effect is not None:
            self.session.effect_done(self.carry_out(effect))
        assert len(self.codec.replies) <= 1, self.codec.replies
        reply = self.codec.replies[0] if self.codec.replies else None
        if isinstance(reply, Error):
            assert reply.code in CONTRACT_CODES, reply
        self.ending = self.out.ended[-1] if self.out.ended else None
        for frame in self.out.frames[queued:]:
            self.check_frame(frame, reply)
        self.check_table()
        return reply

    def carry_out(self, effect: Any) -> Any:
        """The effect's result, by broker.effects' table (no history rules: no replays)."""
        if isinstance(effect, JoinRoom):
            assert effect.history is None
            effect.subscription.owner = self
            self.hub.add(effect.subscription.room, effect.subscription)
            return None
        if isinstance(effect, LeaveRooms):
            for sub in effect.subscriptions:
                self.hub.discard(sub.room, sub)
            return None
        if isinstance(effect, PublishRooms):
            assert effect.rooms and all(isinstance(r, Room) for r in effect.rooms)
            self.check_data_json(effect.data_json)
            self.deliver(effect.rooms, effect.data_json)
            return "t"
        if isinstance(effect, SendDirect):
            self.check_data_json(effect.data_json)
            return "m"
        if isinstance(effect, QueryStatus):
            return Counts(1, 1, "2026-01-01T00:00:00Z")
        if isinstance(effect, ListConnections):
            return []
        if isinstance(effect, ReadStats):
            return Stats([], 1, 1)
        if isinstance(effect, Kick):
            return ["c9"]
        assert isinstance(effect, ConfirmMessage), effect
        return None

    def deliver(self, rooms: list[Room], data_json: str) -> dict[Any, int]:
        """The hub's delivery: every matching subscription once, however many rooms match."""
        done: dict[Any, int] = {}
        for room in rooms:
            for sub in self.hub.match(room):
                if sub in done:
                    continue
                done[sub] = 1
                owner = sub.owner  # the subscriber's driver: its codec encodes the frame
                owner.check_delivery(owner.codec.publish(sub, data_json, room.key, "tid"), sub,
                                     data_json)
        return done

    # -- invariants
    def check_table(self) -> None:
        table = self.session.subscriptions
        for key, sub in table.items():
            assert key == dump_json(sub.request_id) == sub.request_id_json
            assert sub in self.hub.match(sub.room)
        assert len(self.hub) == len(table) <= self.session.settings.max_subscriptions

    @staticmethod
    def check_data_json(data_json: str) -> None:
        assert isinstance(data_json, str)
        data_json.encode("utf-8")  # no lone surrogates: the transport must be able to send it
        strict_loads(data_json)

    def check_frame(self, frame: Any, reply: Any) -> None:
        raw = frame.encode("utf-8") if isinstance(frame, str) else frame
        assert isinstance(raw, bytes)
        if isinstance(self.codec, JsonCodec):
            assert isinstance(frame, str)
            if frame == "pong":
                return
            obj = strict_loads(frame)
            assert isinstance(obj, dict)
            if isinstance(reply, Error):
                assert obj["code"] == "error" and obj["message"] == reply.code
            return
        parsed = self.parse_stomp_out(raw)
        assert parsed.command in {"ERROR", "RECEIPT", "MESSAGE", "ACK"}
        if isinstance(reply, Error):
            if parsed.command == "ERROR":
                assert parsed.headers["message"] == reply.code
            else:
                assert parsed.headers["error-desc"] == reply.code

    def check_delivery(self, frame: Any, sub: Any, data_json: str) -> None:
        raw = frame.encode("utf-8") if isinstance(frame, str) else frame
        assert isinstance(raw, bytes)
        if isinstance(self.codec, JsonCodec):
            obj = strict_loads(frame)
            assert obj["type"] == "publish" and obj["data"] == strict_loads(data_json)
            assert dump_json(obj["requestId"]) == sub.request_id_json
            self.frames.append(obj)
        else:
            parsed = self.parse_stomp_out(raw)
            assert parsed.command == "MESSAGE"
            assert strict_loads(parsed.body) == strict_loads(data_json)
            self.frames.append(parsed)

    def parse_stomp_out(self, raw: bytes) -> Frame:
        if self.codec.framer is not None:
            framer = CBFramer()
            frames = framer.feed(raw)
            assert len(frames) == 1
            return frames[0]
        return parse_frame(raw, cb_compat=self.codec.cb)

    # -- the session is still usable
    def check_usable(self, subscribe: Any, rid: Any) -> None:
        """``subscribe`` (a decoded, valid subscribe to VALID_ROOM with a fresh id ``rid``)
        succeeds, the subscription gets one copy of a matching trigger, and leaves cleanly."""
        before = len(self.session.subscriptions)
        reply = self.receive(subscribe)
        if not self.session.identity.rule.can_subscribe:
            assert isinstance(reply, Error) and reply.code == errors.PROFILE_CANNOT_SUBSCRIBE
            return
        assert isinstance(reply, Success), reply
        assert len(self.session.subscriptions) == before + 1
        sub = self.session.subscriptions[dump_json(rid)]
        room = parse_room(VALID_ROOM)
        trigger = [room, room.with_mask(1), parse_room(CHAT_ANY)]
        got = self.deliver(trigger, '{"n":1}')
        assert got.get(sub) == 1
        for other in got:
            assert any(matches(other.room, t) for t in trigger)
        assert isinstance(self.receive(Unsubscribe(rid)), Success)
        assert sub not in self.hub.match(sub.room)


# ------------------------------------------------------------------ strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["*", "", "1", "chat", "fuzz-ok", 1, 1.0, -0.0, 0, True, 10**400]),
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=10,
)
room_keys = st.sampled_from(["target", "customer", "k", "a", "b", "client", "profile"]) | \
    st.text(max_size=6)
room_values = st.one_of(st.sampled_from(["*", "chat", "1", 1, 1.0, True, False, "agent"]),
                        scalars, json_values)
roomish = st.one_of(
    st.dictionaries(room_keys, room_values, max_size=18),
    st.builds(dict, st.just(VALID_ROOM)),
    st.builds(dict, st.just(CHAT_ANY)),
    st.dictionaries(st.sampled_from(["target", "customer"]),
                    st.sampled_from(["chat", "*", "1", 1, True]), min_size=2),
    json_values,
)
request_ids = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "1", 1.5, 1.0]),
                        json_values)
JSON_TYPES = ["subscribe", "unsubscribe", "ping", "status", "send", "publish", "admin",
              "history", "confirm"]
# Strings that are certainly not a request type (others may add types, so no "ack" here).
JUNK_TYPES = ["SUBSCRIBE", "", " subscribe", "publish\n", "Subscribe", "sub", "\x00"]
messages = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(JSON_TYPES + JUNK_TYPES) | json_values,
    "requestId": request_ids,
    "room": roomish,
    "rooms": st.lists(roomish, max_size=4) | json_values,
    "data": json_values,
    "to": st.sampled_from(["/agent/bob", "/agent/x", "/nope/x", "/agent/", "agent"]) | json_values,
    "action": st.sampled_from(["connections", "kick", "stats", "nope"]) | json_values,
    "connection_id": json_values,
    "login_id": json_values,
    "since": st.sampled_from([0, 1, 2**63, -1, "1", True, None]) | json_values,
    "limit": st.sampled_from([0, 1, 5, -1, "1", True]) | json_values,
    "id": json_values,
    "ack": json_values,
    "history": json_values,
    "junk": json_values,
})

# Text that is JSON in Python's json module but not in RFC 8259, or not decodable.
NASTY_TEXTS = [
    "NaN", "-Infinity", '{"type":"publish","rooms":[{"k":1}],"data":NaN}',
    '{"type":"publish","rooms":[{"k":1}],"data":[Infinity]}',
    '{"type":"subscribe","room":{"k":NaN},"requestId":1}',
    '{"type":"subscribe","room":{"k":1},"requestId":NaN}',
    '{"type":"publish","rooms":[{"k":1}],"data":"\\ud800"}',
    '{"type":"subscribe","room":{"k":"\\udfff"},"requestId":1}',
    '{"type":"subscribe","room":{"k":1},"requestId":"\\ud800x"}',
    '{"type":"send","to":"/agent/\\ud800","data":1}',
    "[" * 5000, '{"a":' * 3000, '{"type":"publish","rooms":[{"k":1}],"data":' + "[" * 3000,
    "ping", "pong", "", " ", "\ufeff{}", '{"type":"subscribe"}', "{}", "[]", "null", "1e999",
    '{"type":"subscribe","room":{"k":1},"requestId":1e999}',
    '{"type":"subscribe","room":{"k":1},"requestId":' + "9" * 5000 + "}",
    '{"type":"subscribe","room":{"k":' + "9" * 5000 + '},"requestId":1}',
    '{"type":"subscribe","type":"publish","requestId":1,"room":{"k":1}}',
]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A text with a few random edits: inserted, deleted or replaced slices."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        text = text[:i] + draw(st.sampled_from(["", "\\", '"', "\\u", "\\ud800", "NaN", "[", "{",
                                                "}", ",", ":", "1e999", "\x00"])
                               | st.text(max_size=4)) + text[j:]
    return text


json_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from(NASTY_TEXTS),
    messages.map(json.dumps),
    mutated(messages.map(json.dumps)),
    mutated(st.sampled_from(NASTY_TEXTS)),
    json_values.map(json.dumps),
    st.none(),  # a binary frame
)


def json_oracle(text: str | None, request: Any) -> None:
    """What decode must say about input it cannot turn into a request (PROTOCOL §3.1)."""
    if text is None:
        assert isinstance(request, Invalid) and request.code == errors.NON_JSON_MESSAGE
        return
    if text == "ping":
        assert isinstance(request, Ping) and request.text
        return
    try:
        msg = strict_loads(text)
    except (ValueError, RecursionError):
        assert isinstance(request, Invalid) and request.code == errors.NON_JSON_MESSAGE, request
        return
    if not isinstance(msg, dict):
        assert isinstance(request, Invalid) and request.code == errors.INVALID_MESSAGE, request
        return
    kind = msg.get("type")
    if not isinstance(kind, str) or kind in JUNK_TYPES:
        assert isinstance(request, Invalid), request
        assert request.code == errors.MESSAGE_TYPE_NOT_ALLOWED, request


def subscribe_oracle(session: Session, model: dict[str, Room], rid: Any, room: Any,
                     reply: Any, since: Any = None) -> None:
    """PROTOCOL §3.1 subscribe rules against a model of the subscription table."""
    code = reply.code if isinstance(reply, Error) else "success"
    if rid is None:
        assert code == errors.NO_REQUEST_ID
        return
    # docs/protocol.md: an id longer than 128 characters (a string's, else its JSON text's) is
    # refused first, on any request, whatever its type
    if len(rid if isinstance(rid, str) else dump_json(rid)) > 128:
        assert code == errors.REQUEST_ID_TOO_LONG
        return
    if not isinstance(rid, (str, int, float)) or isinstance(rid, bool):
        assert code == errors.INVALID_MESSAGE
        return
    if not session.identity.rule.can_subscribe:
        assert code == errors.PROFILE_CANNOT_SUBSCRIBE
        return
    try:
        parsed = parse_room(room)
    except InvalidRoom:
        assert code == errors.INVALID_ROOM
        return
    if since is not None and not (isinstance(since, int) and not isinstance(since, bool)
                                  and 0 <= since < 2**63):
        assert code == errors.INVALID_MESSAGE
        return
    key = dump_json(rid)
    if key in model:
        assert code == ("success" if model[key] == parsed else errors.REQUEST_ID_IN_USE)
    elif not session.identity.may_subscribe(parsed):
        assert code == errors.ROOM_NOT_FOUND
    elif len(model) >= session.settings.max_subscriptions:
        assert code == errors.TOO_MANY_SUBSCRIPTIONS
    else:
        assert code == "success"
        model[key] = parsed


# ------------------------------------------------------------------ JSON codec -> session


@FUZZ
@given(st.sampled_from(PROFILES), st.booleans(), st.lists(json_texts, max_size=12))
@example("agent", False, NASTY_TEXTS)
@example("service", True, NASTY_TEXTS)
def test_json_codec_to_session(profile: str, rich: bool, texts: list[str | None]) -> None:
    codec = SpyJsonCodec(rich=rich)
    driver = Driver(codec, profile)
    model: dict[str, Room] = {}
    for text in texts:
        request = codec.decode(text)
        json_oracle(text, request)
        reply = driver.receive(request)
        if isinstance(request, Subscribe):
            subscribe_oracle(driver.session, model, request.request_id, request.room, reply,
                             getattr(request, "since", None))
        else:
            for key in list(model):
                if key not in driver.session.subscriptions:
                    del model[key]
        assert set(model) == set(driver.session.subscriptions)
    rid = f"fresh-{next(_counter)}"
    driver.check_usable(codec.decode(json.dumps(
        {"type": "subscribe", "room": VALID_ROOM, "requestId": rid})), rid)


@FUZZ
@given(st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe"])},
    optional={"requestId": st.sampled_from([1, 2, 3, "1", 1.0, 2.5, None, True, [1]]),
              "room": st.sampled_from([VALID_ROOM, CHAT_ANY, {"k": 1}, {"k": "*"}, {"a": 1,
                                       "b": True}, {"a": 1, "b": 1}, {"x": 1}, {}, None])
              | roomish}), max_size=25), st.integers(0, 3))
def test_subscription_limit_and_table(msgs: list[dict[str, Any]], limit: int) -> None:
    """Random subscribe/unsubscribe sequences never exceed the limit nor desync the table."""
    codec = SpyJsonCodec(rich=True)
    driver = Driver(codec, "service", max_subscriptions=limit)
    model: dict[str, Room] = {}
    for msg in msgs:
        request = codec.decode(json.dumps(msg))
        reply = driver.receive(request)
        if isinstance(request, Subscribe):
            subscribe_oracle(driver.session, model, request.request_id, request.room, reply,
                             getattr(request, "since", None))
        else:
            model = {k: v for k, v in model.items() if k in driver.session.subscriptions}
        assert set(model) == set(driver.session.subscriptions)
    driver.receive(codec.decode('{"type":"unsubscribe","requestId":"fresh"}'))
    if limit:
        while len(driver.session.subscriptions) >= limit:
            key = next(iter(driver.session.subscriptions))
            driver.receive(Unsubscribe(driver.session.subscriptions[key].request_id))
        driver.check_usable(codec.decode(json.dumps(
            {"type": "subscribe", "room": VALID_ROOM, "requestId": "fresh"})), "fresh")


# ------------------------------------------------------------------ STOMP codec -> session

HEADER_NAMES = ["destination", "id", "receipt", "transaction", "destination-type",
                "content-type", "content-length", "receipt-id", "ack", "subscription",
                "message-id", "heart-beat", "login"]
destinations = st.one_of(
    st.sampled_from(["/room/", "/room/{}", "/room/[]", "/agent/bob", "/agent/*", "/agent/x",
                     "/super_agent/*", "/admin/x", "/nope/x", "/queue/a", "", "/",
                     "/room/" + json.dumps(VALID_ROOM), "/room/" + json.dumps(CHAT_ANY),
                     "/room/" + "[" * 3000, "/room/{\"k\":NaN}", "/room/[{\"k\":\"\\ud800\"}]",
                     "(a+)+b", "/agent/.*", "^/agent/b.*$", "[", "/agent/(", "*"]),
    roomish.map(lambda r: "/room/" + json.dumps(r)),
    st.lists(roomish, max_size=3).map(lambda r: "/room/" + json.dumps(r)),
    st.text(max_size=20),
)
header_values = st.one_of(
    destinations, st.sampled_from(["1", "0", "-1", "x", "application/json", "text/plain",
                                   "99999999999999999999", " 1 ", "auto", ""]),
    st.text(max_size=12),
)
bodies = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"NaN", b"[Infinity]", b'"\\ud800"', b'{"a":"\\udc00"}', b"[" * 3000,
                     b"\xff\xfe", b"\x00", b"hello"]),
)
commands = st.sampled_from(sorted(COMMANDS)) | st.sampled_from(["send", "FOO", "", " SEND"])


@st.composite
def stomp_frames(draw: st.DrawFn) -> bytes:
    """A random frame: sometimes well-formed (encode_frame), sometimes raw with random escapes,
    EOLs, content-lengths and NULs."""
    command = draw(commands)
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES) | st.text(max_size=6),
                                   header_values, max_size=6))
    body = draw(bodies)
    how = draw(st.integers(0, 3))
    if how == 0 and command:
        return encode_frame(Frame(command, headers, body), escape=draw(st.booleans()) or None,
                            content_length=draw(st.booleans()) or b"\x00" in body)
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines = [command.encode()]
    for name, value in headers.items():
        raw = f"{name}:{value}".encode("utf-8", "replace")
        if draw(st.booleans()):  # random escapes, valid or not
            raw += draw(st.sampled_from([b"\\n", b"\\c", b"\\\\", b"\\r", b"\\t", b"\\", b"\\x"]))
        lines.append(raw)
    if draw(st.booleans()):
        lines.append(b"content-length:" + str(draw(st.integers(-1, len(body) + 2))).encode())
    head = eol.join(lines) + eol + (eol if draw(st.booleans()) else b"")
    return head + body + draw(st.sampled_from([b"\x00", b"", b"\x00\n", b"\x00x"]))


stomp_inputs = st.one_of(stomp_frames(), st.binary(max_size=60), st.text(max_size=60),
                         st.sampled_from([b"\n", b"\r\n", b"", "\n\n"]))


def stomp_session(profile: str, cb: bool, framer: bool) -> tuple[StompCodec, Driver]:
    codec = SpyStompCodec(cb=cb, framer=CBFramer() if framer else None, text=not framer)
    return codec, Driver(codec, profile)


def stomp_subscribe(codec: StompCodec, rid: str) -> Any:
    return codec.decode(encode_frame(Frame("SUBSCRIBE", {
        "id": rid, "destination": "/room/" + json.dumps(VALID_ROOM)}),
        escape=False if codec.cb else None))


def run_stomp_request(codec: StompCodec, driver: Driver, request: Any) -> None:
    reply = driver.receive(request)
    # a heart-beat (a Ping) comes from no frame: no context
    meta = request.meta if request.meta is not None else StompContext()
    assert isinstance(meta, StompContext), request
    if driver.ending is not None and codec.cb:
        # Communication Broker dialect: only a malformed frame (or DISCONNECT) ends it.
        assert meta.fatal or meta.command == "DISCONNECT", (request, reply)
    if isinstance(request, Invalid) and meta.fatal:
        assert request.code == errors.MALFORMED_FRAME


@FUZZ
@given(st.sampled_from(PROFILES), st.booleans(), st.lists(stomp_inputs, max_size=10))
def test_stomp_codec_to_session(profile: str, cb: bool, inputs: list[bytes | str]) -> None:
    """One WebSocket message per frame: decode never raises; the session stays consistent."""
    codec, driver = stomp_session(profile, cb, framer=False)
    for data in inputs:
        run_stomp_request(codec, driver, codec.decode(data))
    rid = f"fresh-{next(_counter)}"
    driver.check_usable(stomp_subscribe(codec, rid), rid)


@FUZZ
@given(st.sampled_from(PROFILES),
       st.lists(stomp_frames() | st.sampled_from([b"\n", b"\r\n"]), max_size=8),
       st.binary(max_size=20), st.lists(st.integers(0, 400), max_size=6))
def test_stomp_stream_to_session(profile: str, frames: list[bytes], junk: bytes,
                                 cuts: list[int]) -> None:
    """The TCP gate's standard framing: a byte stream cut anywhere, through StompParser."""
    codec, driver = stomp_session(profile, cb=False, framer=False)
    stream = b"".join(frames) + junk
    parser = StompParser(max_frame_bytes=4096, max_header_bytes=1024)
    dead = False
    for chunk in _chunks(stream, cuts):
        try:
            items = parser.feed(chunk)
        except StompFrameError as exc:
            items, dead = exc.frames, True
            for item in items:
                _feed_item(codec, driver, item)
            run_stomp_request(codec, driver, codec.malformed(str(exc)))
            with pytest.raises(StompFrameError):  # the stream is unusable after an error
                parser.feed(b"SEND\n\n\x00")
            break
        for item in items:
            _feed_item(codec, driver, item)
    assert dead or parser._error is None
    rid = f"fresh-{next(_counter)}"
    driver.check_usable(stomp_subscribe(codec, rid), rid)


def _feed_item(codec: StompCodec, driver: Driver, item: Any) -> None:
    if item is HEARTBEAT:
        return
    assert isinstance(item, Frame) and item.command in COMMANDS
    run_stomp_request(codec, driver, codec.decode(item))


@st.composite
def cb_stream(draw: st.DrawFn) -> bytes:
    """Communication Broker framing: flag byte, 4-byte length (right, wrong or huge), text."""
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        text = draw(stomp_frames() | st.binary(max_size=30) | st.just(b"\n"))
        flag = draw(st.sampled_from([0, 1, 2, 255]))
        length = draw(st.sampled_from([len(text)] * 4 + [len(text) + 1, max(len(text) - 1, 0),
                                                         2**32 - 1, 0, 5000]))
        order = "little" if flag == 0 else "big"
        out += bytes([flag]) + length.to_bytes(4, order) + text
    return out + draw(st.binary(max_size=6))


@FUZZ
@given(st.sampled_from(PROFILES), cb_stream(), st.lists(st.integers(0, 300), max_size=6))
def test_cb_stream_to_session(profile: str, stream: bytes, cuts: list[int]) -> None:
    codec, driver = stomp_session(profile, cb=True, framer=True)
    framer = codec.framer
    assert framer is not None
    framer.max_frame_bytes = 4096
    for chunk in _chunks(stream, cuts):
        try:
            items = framer.feed(chunk)
        except StompFrameError as exc:
            for item in exc.frames:
                _feed_item(codec, driver, item)
            run_stomp_request(codec, driver, codec.malformed(str(exc)))
            break
        for item in items:
            _feed_item(codec, driver, item)
    rid = f"fresh-{next(_counter)}"
    driver.check_usable(stomp_subscribe(codec, rid), rid)


# ------------------------------------------------------------------ framers alone


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def _parse_all(parser_cls: Any, chunks: list[bytes]) -> tuple[list[Any], bool]:
    parser = parser_cls(max_frame_bytes=4096, max_header_bytes=1024)
    frames: list[Any] = []
    for chunk in chunks:
        try:
            frames += parser.feed(chunk)
        except StompFrameError as exc:
            assert isinstance(str(exc), str) and str(exc)
            return frames + exc.frames, True
    return frames, False


@FUZZ
@given(st.lists(stomp_frames() | st.binary(max_size=30) | st.just(b"\n"), max_size=6),
       st.lists(st.integers(0, 500), max_size=8))
def test_stomp_parser_chunking_invariant(parts: list[bytes], cuts: list[int]) -> None:
    """Random bytes: only StompFrameError, and the same frames however the stream is cut."""
    stream = b"".join(parts)
    whole = _parse_all(StompParser, [stream])
    assert _parse_all(StompParser, _chunks(stream, cuts)) == whole
    assert _parse_all(StompParser, [bytes([b]) for b in stream]) == whole


@FUZZ
@given(cb_stream(), st.lists(st.integers(0, 500), max_size=8))
def test_cb_framer_chunking_invariant(stream: bytes, cuts: list[int]) -> None:
    whole = _parse_all(CBFramer, [stream])
    assert _parse_all(CBFramer, _chunks(stream, cuts)) == whole


@FUZZ
@given(stomp_inputs, st.booleans())
def test_parse_frame_only_raises_frame_errors(data: bytes | str, cb: bool) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        frame = parse_frame(raw, cb_compat=cb, max_header_bytes=1024)
    except StompFrameError as exc:
        assert str(exc)
        return
    assert frame.command in COMMANDS and isinstance(frame.body, bytes)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in frame.headers.items())


# ------------------------------------------------------------------ rooms


class WeirdStr(str):
    pass


class WeirdInt(int):
    pass


any_values = st.one_of(
    json_values, st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 10**5000]),
    st.builds(WeirdStr, st.text(max_size=4)), st.builds(WeirdInt, st.integers()),
    st.tuples(st.integers()), st.binary(max_size=4), st.sets(st.integers(), max_size=2),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
)
any_rooms = st.one_of(
    st.dictionaries(room_keys, any_values, max_size=18),
    st.dictionaries(st.one_of(room_keys, st.integers(), st.builds(WeirdStr, st.text(max_size=3)),
                              st.none()), room_values, max_size=4),
    st.dictionaries(room_keys, st.text(max_size=300), min_size=1, max_size=8),
    any_values,
)


@FUZZ
@given(any_rooms)
def test_parse_room_only_raises_invalid_room(obj: Any) -> None:
    try:
        room = parse_room(obj)
    except InvalidRoom as exc:
        assert str(exc)
        return
    key = room.key
    assert strict_loads(key) == dict(room.items) and len(key.encode("utf-8")) <= 1024
    assert Room.from_key(key) == room and parse_room(room.original) == room
    assert matches(room, room)
    for mask in range(min(1 << len(room.shape), 64)):
        variant = room.with_mask(mask)
        assert Room.from_key(variant.key) == variant and matches(variant, room)
    assert type(room.items[0][0]) is str


@FUZZ
@given(st.text(max_size=80) | st.sampled_from(['{"a":1}', '{"a":1.0}', '{"a":-0.0}',
                                                '{"a":1E2}', '{"b":1,"a":2}', '{"a":"\\ud800"}']))
def test_room_from_key_only_raises_invalid_room(text: str) -> None:
    try:
        room = Room.from_key(text)
    except InvalidRoom:
        return
    assert room.key == text


# ------------------------------------------------------------------ regressions


@pytest.mark.parametrize("text", ["[" * 5000, '{"type":"subscribe","room":' + "[" * 3000,
                                  '{"type":"publish","rooms":[{"k":1}],"data":' + "{\"a\":" * 3000])
def test_regression_deep_nesting_is_non_json_not_a_crash(text: str) -> None:
    """json.loads raised RecursionError out of JsonCodec.decode (found by this fuzzer)."""
    request = JsonCodec(rich=False).decode(text)
    assert isinstance(request, Invalid) and request.code == errors.NON_JSON_MESSAGE


@pytest.mark.parametrize("text", [
    '{"type":"publish","rooms":[{"k":1}],"data":NaN}',
    '{"type":"publish","rooms":[{"k":1}],"data":[1,-Infinity]}',
    '{"type":"subscribe","room":{"k":1},"requestId":Infinity}',
])
def test_regression_nan_is_not_json(text: str) -> None:
    """NaN/Infinity are not JSON: they were accepted and forwarded as `"data":NaN`, a frame
    that JSON.parse in every browser rejects (found by this fuzzer)."""
    request = JsonCodec(rich=True).decode(text)
    assert isinstance(request, Invalid) and request.code == errors.NON_JSON_MESSAGE


def test_regression_lone_surrogate_data_is_delivered_as_valid_json() -> None:
    """A JSON string escape of an unpaired surrogate ("\\ud800") decoded to a str that UTF-8
    cannot encode: every frame carrying it failed in the transport, and a STOMP recipient's
    codec.publish raised UnicodeEncodeError inside the hub's delivery loop (found by this
    fuzzer). The data now goes out escaped, as the client sent it."""
    data_json = dump_json({"x": "\ud800", "y": "é"})
    data_json.encode("utf-8")
    assert json.loads(data_json) == {"x": "\ud800", "y": "é"}
    assert dump_json({"y": "é"}) == '{"y":"é"}'  # no change for valid text
    codec, driver = stomp_session("service", cb=False, framer=False)
    driver.receive(stomp_subscribe(codec, "s1"))
    reply = driver.receive(codec.decode(encode_frame(Frame(
        "SEND", {"destination": "/room/" + json.dumps(VALID_ROOM)}, b'"\\ud800"'))))
    assert isinstance(reply, Success)
    assert len(driver.frames) == 1 and json.loads(driver.frames[0].body) == "\ud800"


def test_regression_stomp_deep_nesting_destination_and_body() -> None:
    codec, driver = stomp_session("service", cb=True, framer=False)
    for data in [b"SUBSCRIBE\nid:1\ndestination:/room/" + b"[" * 3000 + b"\n\n\x00",
                 b"SEND\ndestination:/room/" + b"[" * 3000 + b"\n\n\x00",
                 b"SEND\ndestination:/room/{\"k\":1}\n\n" + b"[" * 3000 + b"\x00",
                 b"SEND\ndestination:/room/{\"k\":1}\n\nNaN\x00"]:
        run_stomp_request(codec, driver, codec.decode(data))
    assert driver.frames == []


def test_contract_codes_cover_the_protocol() -> None:
    assert {"room-not-found", "invalid-room", "no-request-id", "request-id-in-use",
            "too-many-subscriptions", "profile-cannot-subscribe", "not-subscribed",
            "non-json-message", "message-type-not-allowed", "invalid-message"} <= CONTRACT_CODES


def test_regression_number_overflow_is_not_json() -> None:
    """1e999 decoded to inf, subscribed as requestId Infinity and echoed as `Infinity`."""
    for text in ['{"type":"subscribe","room":{"k":1},"requestId":1e999}',
                 '{"type":"publish","rooms":[{"k":1}],"data":-1E400}']:
        request = JsonCodec(rich=True).decode(text)
        assert isinstance(request, Invalid) and request.code == errors.NON_JSON_MESSAGE
    assert JsonCodec(rich=True).decode('{"type":"ping","requestId":1.5e300}').request_id == 1.5e300


def test_regression_admin_action_of_any_json_type() -> None:
    """`{"type":"admin","action":[]}` raised TypeError (unhashable) out of the session."""
    driver = Driver(SpyJsonCodec(rich=True), "admin")
    for action in ("[]", "{}", '[["stats"]]', "null", "1"):
        reply = driver.receive(driver.codec.decode(f'{{"type":"admin","action":{action}}}'))
        assert isinstance(reply, Error) and reply.code == errors.UNKNOWN_ACTION


def test_regression_parser_frame_limit_does_not_depend_on_chunking() -> None:
    """A frame without content-length over max_frame_bytes was refused when it came in pieces
    but accepted when its NUL was in the same chunk."""
    data = b"SEND\n\n" + b"x" * 101 + b"\x00"
    for chunks in ([data], [data[:50], data[50:]], [bytes([b]) for b in data]):
        parser = StompParser(max_frame_bytes=100)
        with pytest.raises(StompFrameError, match="frame too large"):
            for chunk in chunks:
                parser.feed(chunk)
    assert StompParser(max_frame_bytes=100).feed(b"SEND\n\n" + b"x" * 100 + b"\x00")
