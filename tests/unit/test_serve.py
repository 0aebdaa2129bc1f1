"""The serve loop (broker/serve.py) without a server: the refusal table as plain calls, the
connect flow's refusals and the receive loop driven through a scripted transport."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import pytest

from broker import disconnect, errors, metrics, serve
from broker.auth import AuthUnavailable, Refused
from broker.codecs.jsoncodec import JsonCodec
from broker.codecs.stomp import StompCodec
from broker.codecs.stompframe import parse_frame
from broker.disconnect import Disconnect
from broker.errors import BrokerUnavailable
from broker.limits import admission
from broker.requests import Invalid, Ping

RICH, PLAIN, STOMP = JsonCodec(rich=True), JsonCodec(rich=False), StompCodec()


def stomp_error(frame: str | bytes | None) -> dict[str, str]:
    assert isinstance(frame, bytes)
    parsed = parse_frame(frame)
    assert parsed.command == "ERROR"
    return parsed.headers


@pytest.mark.parametrize("why, codec, explicit, frame, cause, close", [
    (Refused(errors.INVALID_CREDENTIALS), RICH, True,
     {"type": "refused", "is_authorized": False, "reason": errors.INVALID_CREDENTIALS},
     errors.INVALID_CREDENTIALS, Disconnect(errors.CLOSE_REFUSED, "")),
    (Refused(errors.INVALID_CREDENTIALS), PLAIN, False, {"is_authorized": False},
     errors.INVALID_CREDENTIALS, Disconnect(errors.CLOSE_NORMAL, "")),
    (Refused("Invalid Application Secret Key."), RICH, True,
     {"type": "refused", "is_authorized": False, "reason": "Invalid Application Secret Key."},
     errors.REFUSED, Disconnect(errors.CLOSE_REFUSED, "")),
    (Refused(errors.AUTH_TIMEOUT), PLAIN, False, {"is_authorized": False},
     errors.AUTH_TIMEOUT, disconnect.AUTH_TIMEOUT),
    (AuthUnavailable(), PLAIN, False, None, errors.AUTH_UNAVAILABLE,
     Disconnect(errors.CLOSE_AUTH_UNAVAILABLE, errors.AUTH_UNAVAILABLE)),
    (AuthUnavailable(), RICH, True,
     {"type": "refused", "is_authorized": False, "reason": errors.AUTH_UNAVAILABLE},
     errors.AUTH_UNAVAILABLE, Disconnect(errors.CLOSE_AUTH_UNAVAILABLE, errors.AUTH_UNAVAILABLE)),
    (BrokerUnavailable("redis down"), RICH, True,
     {"type": "refused", "is_authorized": False, "reason": errors.SERVICE_UNAVAILABLE},
     errors.SERVICE_UNAVAILABLE,
     Disconnect(errors.CLOSE_AUTH_UNAVAILABLE, errors.SERVICE_UNAVAILABLE)),
    (errors.ORIGIN_NOT_ALLOWED, RICH, True, None, errors.ORIGIN_NOT_ALLOWED,
     disconnect.ORIGIN_NOT_ALLOWED),
    (errors.OVER_CAPACITY, RICH, True,
     {"type": "refused", "is_authorized": False, "reason": errors.OVER_CAPACITY},
     errors.OVER_CAPACITY, Disconnect(errors.CLOSE_REFUSED, errors.OVER_CAPACITY)),
])
def test_refusal_table(why: Any, codec: Any, explicit: bool, frame: Any, cause: str,
                       close: Disconnect) -> None:
    r = serve.refusal(why, codec, explicit)
    assert (json.loads(r.frame) if r.frame is not None else None) == frame
    assert (r.cause, r.close) == (cause, close)


def test_refusal_table_stomp_rows() -> None:
    bad = serve.refusal(serve.BadConnect(errors.NOT_CONNECTED), STOMP, True)
    assert stomp_error(bad.frame)["message"] == errors.NOT_CONNECTED
    assert (bad.cause, bad.close) == (errors.REFUSED, Disconnect(errors.CLOSE_REFUSED, ""))
    broken = serve.refusal(serve.Malformed("no NUL"), STOMP, True)
    assert stomp_error(broken.frame)["message"] == errors.MALFORMED_FRAME
    assert broken.cause is None  # a broken byte stream is not counted as a refused login


def test_json_connect_reads_credentials_and_resume() -> None:
    line = json.dumps({"type": "connect", "token": "t", "resume": "r1", "cookie": "a=b",
                       "headers": {"X-Tenant": "7", "n": 1}})
    connecting = RICH.connect(line, "10.0.0.1")
    creds, resume = connecting.credentials, connecting.resume_token
    assert (creds.token, creds.remote_addr, resume) == ("t", "10.0.0.1", "r1")
    assert creds.headers == {"cookie": "a=b", "x-tenant": "7"}
    for bad in ('{"type":"subscribe"}', "[1]", "not json", b"\xff{"):
        with pytest.raises(serve.BadConnect, match=errors.NOT_CONNECTED):
            RICH.connect(bad, None)


def test_stomp_connect_refuses_another_first_frame() -> None:
    with pytest.raises(serve.BadConnect, match=errors.NOT_CONNECTED):
        StompCodec(text=True).connect("SEND\ndestination:/x\n\n\x00", None)
    connecting = StompCodec(text=True).connect(
        "CONNECT\ntoken:t1\naccept-version:1.2\n\n\x00", "a")
    creds, resume = connecting.credentials, connecting.resume_token
    assert (creds.token, creds.remote_addr, resume) == ("t1", "a", None)


# ------------------------------------------------------------------ a scripted transport

class Scripted:
    """A ``serve.Transport`` that hands in a fixed list of frames and records the rest."""

    name = "scripted"
    remote_addr = "10.0.0.9"

    def __init__(self, framing: serve.Framing | None, inbound: list[serve.Inbound], *,
                 close_codes: bool = True, grace: float | None = None) -> None:
        self.framing = framing
        self.inbound = deque(inbound)
        self.close_codes = close_codes
        self.over_capacity_grace = grace
        self.last_read = self.last_write = 0.0
        self.written: list[str | bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.denied: str | None = None
        self.waited = False

    async def start(self) -> serve.Framing | None:
        return self.framing

    async def receive(self) -> serve.Inbound:
        return self.inbound.popleft() if self.inbound else None

    async def write(self, frame: str | bytes) -> None:
        self.written.append(frame)

    async def close(self, code: int, reason: str) -> None:
        if not self.closes:
            self.closes.append((code, reason))

    async def deny(self, reason: str) -> None:
        self.denied = reason

    async def wait_closed(self) -> None:
        self.waited = True


@pytest.fixture
def places():
    """The process's admission count, restored afterwards."""
    count, stopping = admission.count, admission.shutting_down
    admission.count, admission.shutting_down = 0, False
    yield admission
    admission.count, admission.shutting_down = count, stopping


def refusals(cause: str) -> int:
    return metrics.refusals[cause]


async def test_over_capacity_is_denied_before_the_accept_where_the_transport_can(places):
    places.count = 3
    t = Scripted(serve.Framing(RICH, explicit_refusal=True), [])
    before = refusals(errors.OVER_CAPACITY)
    await serve.serve(t, max_connections=3)
    assert (t.denied, t.written, t.closes) == (errors.OVER_CAPACITY, [], [])
    assert refusals(errors.OVER_CAPACITY) == before + 1 and places.count == 3


async def test_a_bad_first_frame_is_refused_quietly_where_there_are_no_close_codes(places):
    framing = serve.Framing(RICH, explicit_refusal=True, connect_frame=True)
    t = Scripted(framing, ['{"type":"subscribe"}', '{"type":"connect"}'], close_codes=False,
                 grace=2.0)
    before = refusals(errors.REFUSED)
    await serve.serve(t, max_connections=10)
    assert [json.loads(f) for f in t.written] == [
        {"type": "refused", "is_authorized": False, "reason": errors.NOT_CONNECTED}]
    assert t.closes == [(errors.CLOSE_NORMAL, "")]  # the frame said why
    assert list(t.inbound) == ['{"type":"connect"}']  # nothing more was read
    assert refusals(errors.REFUSED) == before + 1
    assert t.waited and places.count == 0  # its place was given back


async def test_a_disallowed_origin_closes_1008_and_says_nothing(places):
    framing = serve.Framing(PLAIN, explicit_refusal=False, origin_allowed=False)
    t = Scripted(framing, [])
    await serve.serve(t, max_connections=10)
    assert (t.written, t.closes) == ([], [(errors.CLOSE_ORIGIN, errors.ORIGIN_NOT_ALLOWED)])
    assert places.count == 0


async def test_over_capacity_at_the_accept_is_refused_at_the_credentials(places):
    places.count = 1
    framing = serve.Framing(StompCodec(), explicit_refusal=True, binary=True,
                            connect_frame=True)
    t = Scripted(framing, [b"CONNECT\ntoken:t\n\n\x00"], close_codes=False, grace=2.0)
    await serve.serve(t, max_connections=1)
    assert t.denied is None
    assert stomp_error(t.written[0])["message"] == errors.OVER_CAPACITY
    assert t.closes == [(errors.CLOSE_NORMAL, errors.OVER_CAPACITY)] and places.count == 1


async def test_a_malformed_stream_before_the_credentials_is_an_error_frame(places):
    framing = serve.Framing(StompCodec(), explicit_refusal=True, binary=True,
                            connect_frame=True)
    t = Scripted(framing, [serve.Malformed("header too long")], close_codes=False, grace=2.0)
    await serve.serve(t, max_connections=10)
    headers = stomp_error(t.written[0])
    assert headers["message"] == errors.MALFORMED_FRAME
    assert t.closes == [(errors.CLOSE_NORMAL, errors.MALFORMED_FRAME)]


# ------------------------------------------------------------------ the receive loop

class OpenConnection:
    """What ``serve._receive`` uses of an open ``Connection``."""

    def __init__(self) -> None:
        self.closing = False
        self.received: list[Any] = []
        self.why: Disconnect | None = None

    async def receive(self, request: Any) -> None:
        self.received.append(request)

    def close_soon(self, why: Disconnect) -> None:
        self.closing, self.why = True, why


async def receive_all(framing: serve.Framing, inbound: list[serve.Inbound]
                      ) -> tuple[OpenConnection, Scripted]:
    conn, t = OpenConnection(), Scripted(framing, inbound)
    await serve._receive(conn, t, framing)  # type: ignore[arg-type]
    return conn, t


async def test_the_size_bound_counts_utf8_bytes():
    framing = serve.Framing(RICH, explicit_refusal=True, max_bytes=8)
    conn, t = await receive_all(framing, ["ping", "é" * 4, "é" * 4 + "x", "ping"])
    assert [type(r) for r in conn.received] == [Ping, Invalid]  # 8 bytes pass, 9 do not
    assert conn.why == disconnect.TOO_BIG and list(t.inbound) == ["ping"]


async def test_binary_messages_are_not_text_to_a_text_codec():
    framing = serve.Framing(RICH, explicit_refusal=True, max_bytes=100)
    conn, _ = await receive_all(framing, [b"ping", "ping"])
    assert isinstance(conn.received[0], Invalid)
    assert conn.received[0].code == errors.NON_JSON_MESSAGE
    assert isinstance(conn.received[1], Ping)
    stomp = serve.Framing(StompCodec(), explicit_refusal=True, binary=True, max_bytes=100)
    conn, _ = await receive_all(stomp, [b"\n"])
    assert isinstance(conn.received[0], Ping)  # a STOMP heart-beat, as bytes


async def test_a_broken_stream_goes_to_the_codec_then_reading_stops():
    framing = serve.Framing(StompCodec(), explicit_refusal=True, binary=True)
    conn, t = await receive_all(framing, [serve.Malformed("bad header"), b"\n"])
    assert isinstance(conn.received[0], Invalid)
    assert conn.received[0].code == errors.MALFORMED_FRAME and list(t.inbound) == [b"\n"]


async def test_a_line_over_its_framing_bound_closes_1009():
    framing = serve.Framing(RICH, explicit_refusal=True)
    conn, _ = await receive_all(framing, [serve.TOO_BIG])
    assert conn.why == disconnect.TOO_BIG and conn.received == []


class Broken(Scripted):
    """A transport whose framing step fails: a bug in the broker, not the client's doing."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gone = asyncio.Event()

    async def start(self) -> serve.Framing | None:
        raise RuntimeError("a bug")

    async def close(self, code: int, reason: str) -> None:
        await super().close(code, reason)
        self.gone.set()

    async def wait_closed(self) -> None:  # as a socket's: until it is closed
        await self.gone.wait()
        self.waited = True


async def test_a_bug_ends_only_that_connection_with_1011(places, caplog):
    t = Broken(serve.Framing(RICH, explicit_refusal=True), [])
    await serve.serve(t, max_connections=10)  # handled here: the server sees no exception
    assert t.closes == [(errors.CLOSE_INTERNAL, errors.INTERNAL_ERROR)]
    assert "connection failed" in caplog.text and "a bug" in caplog.text
    assert t.waited and places.count == 0
