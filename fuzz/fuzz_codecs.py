#!/usr/bin/env python
"""Coverage-guided fuzzing of the inbound path with atheris (issue 7).

The long-running companion of tests/unit/test_fuzz_codecs.py, with the same checks (its
``Driver``): arbitrary bytes go through the codecs into a ``Session``, and nothing may escape
but the documented exceptions; every error is a contract code; every frame written is
sendable (UTF-8, strict JSON); the subscription table stays consistent with the hub; and the
session is still usable afterwards.

One input = a target byte, a flags byte, then the payload:

  0  JSON codec:   payload split on 0x1E into WebSocket text frames (invalid UTF-8 = binary)
  1  STOMP codec:  payload split on 0x1E into WebSocket messages (one frame each)
  2  StompParser:  payload is a TCP byte stream, cut into chunks (standard STOMP framing)
  3  CBFramer:     payload is a TCP byte stream in Communication Broker framing
  4  rooms:        payload is JSON text given to parse_room / Room.from_key

Run (needs the [fuzz] extra: pip install -e '.[test,fuzz]'):

  python fuzz/fuzz_codecs.py -atheris_runs=200000
  python fuzz/fuzz_codecs.py -max_total_time=300

With no directory given it uses fuzz/corpus (the growing corpus, not committed) and
fuzz/seeds (committed seed inputs; ``--write-seeds fuzz/seeds`` regenerates them). A crash is
written as ./crash-<sha1>; replay it with ``python fuzz/fuzz_codecs.py crash-<sha1>``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["rooms", "broker"]):
    import rooms  # noqa: F401
    from broker.codecs.jsoncodec import JsonCodec
    from broker.codecs.stomp import StompCodec, StompContext
    from broker.codecs.stompframe import (
        HEARTBEAT, CBFramer, Frame, StompFrameError, StompParser, encode_frame,
    )
    from broker.requests import Invalid
    from rooms import InvalidRoom, Room, parse_room

# The oracle: the same driver model and checks as the hypothesis tests.
from tests.unit.test_fuzz_codecs import (  # noqa: E402
    PROFILES, VALID_ROOM, Driver, make_session, strict_loads,
)

SEP = b"\x1e"


def _messages(payload: bytes) -> list[bytes]:
    return payload.split(SEP)[:16]


def _chunks(payload: bytes, flags: int) -> list[bytes]:
    step = 1 + (flags >> 3) * 7  # 1..106-byte chunks
    return [payload[i:i + step] for i in range(0, len(payload), step)] or [b""]


def _usable_json(driver: Driver, codec: JsonCodec) -> None:
    rid = "fuzz-fresh"
    driver.session.subscriptions.pop(json.dumps(rid), None)  # (never taken: ids are ours)
    driver.check_usable(codec.decode(json.dumps(
        {"type": "subscribe", "room": VALID_ROOM, "requestId": rid})), rid)


def _usable_stomp(driver: Driver, codec: StompCodec) -> None:
    rid = "fuzz-fresh-\u2603"
    frame = Frame("SUBSCRIBE", {"id": rid, "destination": "/room/" + json.dumps(VALID_ROOM)})
    driver.check_usable(codec.decode(encode_frame(frame, escape=False if codec.cb else None)),
                        rid)


def _stomp(profile: str, cb: bool, framer: bool) -> tuple[StompCodec, Driver]:
    codec = StompCodec(cb=cb, framer=CBFramer() if framer else None, text=not framer)
    driver = Driver(make_session(profile), codec)
    codec.welcome(driver.session.identity, "c1", None)
    return codec, driver


def _receive(codec: StompCodec, driver: Driver, request: Any) -> None:
    driver.receive(request)  # sets driver.ending: the answer's (broker.codec.Answer.ending)
    # a heart-beat (a Ping) comes from no frame: no context
    meta = request.meta if request.meta is not None else StompContext()
    assert isinstance(meta, StompContext), request
    if driver.ending is not None and codec.cb:
        assert meta.fatal or meta.command == "DISCONNECT", request


def _items(codec: StompCodec, driver: Driver, items: list[Any]) -> None:
    for item in items:
        if item is not HEARTBEAT:
            _receive(codec, driver, codec.decode(item))


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    target, flags, payload = data[0] % 5, data[1], data[2:]
    profile = PROFILES[flags & 3]
    if target == 0:
        codec = JsonCodec(rich=bool(flags & 4))
        driver = Driver(make_session(profile), codec)
        for raw in _messages(payload):
            try:
                text: str | None = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            driver.receive(codec.decode(text))
        _usable_json(driver, codec)
    elif target == 1:
        codec_s, driver = _stomp(profile, cb=bool(flags & 4), framer=False)
        for raw in _messages(payload):
            _receive(codec_s, driver, codec_s.decode(raw if flags & 8 else
                                                     raw.decode("utf-8", "replace")))
        _usable_stomp(driver, codec_s)
    elif target in (2, 3):
        cb = target == 3
        codec_s, driver = _stomp(profile, cb=cb, framer=cb)
        parser: Any = codec_s.framer if cb else StompParser()
        parser.max_frame_bytes, parser.max_header_bytes = 8192, 2048
        for chunk in _chunks(payload, flags):
            try:
                items = parser.feed(chunk)
            except StompFrameError as exc:
                _items(codec_s, driver, exc.frames)
                request = codec_s.malformed(str(exc))
                assert isinstance(request, Invalid)
                _receive(codec_s, driver, request)
                break
            _items(codec_s, driver, items)
        _usable_stomp(driver, codec_s)
    else:
        text = payload.decode("utf-8", "replace")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            obj = text
        try:
            room = parse_room(obj)
        except InvalidRoom:
            pass
        else:
            assert strict_loads(room.key) == dict(room.items)
            assert Room.from_key(room.key) == room == parse_room(room.original)
            for mask in range(min(1 << len(room.shape), 32)):
                assert Room.from_key(room.with_mask(mask).key) == room.with_mask(mask)
        try:
            Room.from_key(text)
        except InvalidRoom:
            pass


def write_seeds(directory: str) -> None:
    """A small seed corpus: one valid input of each kind, and a few nasty ones."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    room = json.dumps(VALID_ROOM)
    json_msgs = [
        {"type": "subscribe", "room": VALID_ROOM, "requestId": 1},
        {"type": "subscribe", "room": {"target": "chat", "customer": "*"}, "requestId": "w"},
        {"type": "unsubscribe", "requestId": 1},
        {"type": "publish", "rooms": [VALID_ROOM, {"k": "*"}], "data": {"x": [1, 2.5, None]}},
        {"type": "send", "to": "/agent/bob", "data": "hi"},
        {"type": "status"}, {"type": "ping", "requestId": 3},
        {"type": "admin", "action": "kick", "login_id": "bob"},
    ]
    seeds = {
        "json-valid": b"\x00\x06" + SEP.join(json.dumps(m).encode() for m in json_msgs),
        "json-nasty": b"\x00\x02" + SEP.join([
            b"ping", b"NaN", b'{"type":"publish","rooms":[{"k":1}],"data":1e999}',
            b'{"type":"subscribe","room":{"k":"\\ud800"},"requestId":"\\udfff"}',
            b"[" * 50, b"\xff\xfe"]),
        "stomp-ws": b"\x01\x01" + SEP.join([
            encode_frame(Frame("SUBSCRIBE", {"id": "1", "destination": "/room/" + room})),
            encode_frame(Frame("SEND", {"destination": "/room/" + room,
                                        "content-type": "application/json"}, b'{"a":1}')),
            encode_frame(Frame("SUBSCRIBE", {"id": "2", "destination": "/agent/*",
                                             "destination-type": "1"})),
            encode_frame(Frame("UNSUBSCRIBE", {"id": "1", "receipt": "r1"})),
            b"\n", encode_frame(Frame("DISCONNECT", {"receipt": "r2"}))]),
        "stomp-ws-cb": b"\x01\x05" + SEP.join([
            encode_frame(Frame("SUBSCRIBE", {"destination": "/room/" + room,
                                             "transaction": "t1"}), escape=False),
            encode_frame(Frame("SEND", {"destination": "/agent/bob", "transaction": "t2",
                                        "content-length": "2"}, b"hi"), escape=False)]),
        "stomp-stream": b"\x02\x10" + b"\r\n".join([
            encode_frame(Frame("SUBSCRIBE", {"id": "a\\b:c", "destination": "/room/" + room})),
            encode_frame(Frame("SEND", {"destination": "/room/" + room}, b"a\x00b")),
            b"SEND\r\ndestination:/agent/bob\r\n\r\nhello\x00"]),
        "cb-stream": b"\x03\x21" + b"".join(
            bytes([flag]) + len(text).to_bytes(4, "big" if flag else "little") + text
            for flag, text in [
                (0, encode_frame(Frame("SUBSCRIBE", {"destination": "/room/" + room}),
                                 escape=False)[:-1]),
                (1, b"SEND\n destination : /agent/bob \ntransaction:9\n\nhi"),
                (0, b"\n")]),
        "room": b"\x04\x00" + json.dumps({"a": 1, "b": "*", "c": True, "d": 2.5}).encode(),
    }
    for name, blob in seeds.items():
        (out / name).write_bytes(blob)
    print(f"wrote {len(seeds)} seeds to {out}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(sys.argv[2])
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "combroker.settings")
    argv = sys.argv
    if not any(not a.startswith("-") for a in argv[1:]):  # no corpus dir, no input file
        here = Path(__file__).resolve().parent
        (here / "corpus").mkdir(exist_ok=True)
        argv = [argv[0], str(here / "corpus"), str(here / "seeds"), *argv[1:]]
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
