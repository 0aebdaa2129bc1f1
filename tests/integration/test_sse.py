"""The SSE transport (issue 15, docs/protocol.md "SSE"): ``GET /sse/`` under uvicorn, a real
auth API, real Redis where processes share it, real sockets (httpx streaming).

A stream gets the welcome, its subscribe replies and triggers as events, heart-beat comments;
``Last-Event-ID`` resumes on another process with no gap or duplicate; a client that stops
reading is closed as slow (the last event says 4008); refusals and malformed requests are HTTP
statuses with named errors, before any stream.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.harness import SERVERS

NEWS = {"target": "news"}
CHAT_ANY = {"target": "chat", "customer": "*"}
BOB = {"login_id": "bob", "allowed_rooms": [NEWS, CHAT_ANY]}
HISTORY = [{"room": CHAT_ANY, "size": 1000, "ttl": 60}]
TOKEN = "test-token"


def chat(customer: str) -> dict:
    return {"target": "chat", "customer": customer}


def sse_url(broker, subscribe: list | str | None = None, **params: str) -> str:
    """``/sse/`` with ``?subscribe=`` (a list as JSON, a string as it is) and ``params``."""
    query = dict(params)
    if subscribe is not None:
        query["subscribe"] = subscribe if isinstance(subscribe, str) else json.dumps(subscribe)
    return f"{broker.base_url}/sse/?{urllib.parse.urlencode(query)}"


@dataclass
class Event:
    data: str | None = None  # None: a comment (a heart-beat)
    id: str | None = None
    event: str | None = None
    fields: list[str] = field(default_factory=list)

    def json(self) -> Any:
        assert self.data is not None, self
        return json.loads(self.data)


class Stream:
    """An event stream read as the HTML standard parses one (lines end with LF; the
    server writes no CR)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._bytes = response.aiter_raw()
        self._buffer = b""
        self.last_id: str | None = None
        self.ended = False

    async def _line(self) -> str | None:
        while b"\n" not in self._buffer:
            try:
                chunk = await anext(self._bytes)
            except (StopAsyncIteration, httpx.ReadError, httpx.RemoteProtocolError):
                self.ended = True
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def next(self, timeout: float = 5.0, comments: bool = False) -> Event:
        """The next event (a comment too with ``comments``); AssertionError at the end."""
        return await asyncio.wait_for(self._next(comments), timeout)

    async def _next(self, comments: bool) -> Event:
        ev = Event()
        while True:
            line = await self._line()
            if line is None:
                raise AssertionError("the stream ended")
            if line == "":
                if ev.data is not None:
                    if ev.id is not None:
                        self.last_id = ev.id
                    return ev
                if comments and "comment" in ev.fields:
                    return ev
                ev = Event()
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            ev.fields.append(name or "comment")
            if name == "data":
                ev.data = value if ev.data is None else f"{ev.data}\n{value}"
            elif name == "id":
                ev.id = value
            elif name == "event":
                ev.event = value

    async def frames(self, n: int, timeout: float = 10.0) -> list[Any]:
        return [(await self.next(timeout)).json() for _ in range(n)]


@asynccontextmanager
async def stream(url: str, *, headers: dict | None = None, method: str = "GET",
                 body: Any = None, client: httpx.AsyncClient | None = None
                 ) -> AsyncIterator[Stream]:
    own = client is None
    http = client or httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(10, read=None))
    try:
        kw = {"json": body} if body is not None else {}
        async with http.stream(method, url, headers=headers, **kw) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            yield Stream(response)
    finally:
        if own:
            await http.aclose()


async def post(broker, room: dict, data: Any, history: bool = False) -> None:
    r = await broker.atrigger([room], None, body={"rooms": [room], "data": data,
                                                  "history": history})
    assert r.status_code == 202, r.text


def slow_drops(metrics_text: str) -> int:
    m = re.search(r'^combroker_drops_total\{cause="slow"\} (\d+)$', metrics_text, re.M)
    return int(m.group(1)) if m else 0


# ------------------------------------------------------------------ the stream


@pytest.mark.parametrize("server", SERVERS)
async def test_stream_gets_welcome_replies_triggers_and_heartbeats(broker_factory, auth_api,
                                                                   server):
    auth_api.allow(token="bob", body=BOB)
    broker = broker_factory(auth_api=auth_api, server=server, BROKER_SSE_HEARTBEAT=0.3)
    url = sse_url(broker, [{"requestId": 1, "room": NEWS}, {"requestId": "x"}], token="bob")
    async with stream(url) as s:
        headers = s.response.headers
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        welcome = (await s.next()).json()
        assert welcome["type"] == "welcome" and welcome["login_id"] == "bob"
        assert (await s.next()).json() == {"code": "success", "requestId": 1}
        # an item the session refuses is its error event, as over WebSocket
        error = (await s.next()).json()
        assert error["type"] == "error" and error["requestId"] == "x"
        # a comment every BROKER_SSE_HEARTBEAT while nothing else is written
        beat = await s.next(comments=True)
        assert beat.data is None and beat.fields == ["comment"]
        # data with line breaks and what would be SSE fields stays one event, intact
        tricky = "a\nb\r\n\nevent: close\rdata: {}\n\nid: 9"
        for data in ("one", tricky, {"n": 3}):
            await post(broker, NEWS, data)
        got = [(await s.next()).json() for _ in range(3)]
        assert [(f["type"], f["requestId"], f["data"]) for f in got] == [
            ("publish", 1, "one"), ("publish", 1, tricky), ("publish", 1, {"n": 3})]
    # the same request as POST, for lists too long for a URL
    async with stream(sse_url(broker, token="bob"), method="POST",
                      body={"subscribe": [{"requestId": 7, "room": NEWS}]}) as s:
        assert (await s.next()).json()["type"] == "welcome"
        assert (await s.next()).json() == {"code": "success", "requestId": 7}
        await post(broker, NEWS, "posted")
        assert (await s.next()).json()["data"] == "posted"
        # SIGTERM: the stream's last event says 1001, then it ends
        broker.terminate()
        ev = await s.next()
        assert ev.event == "close" and ev.json() == {"code": 1001, "reason": "going-away"}
        assert await asyncio.wait_for(s._line(), 5) is None


async def test_last_event_id_resumes_on_another_process(broker_factory, auth_api, redis_server,
                                                        unique):
    """A numbered sequence published continuously to a history room; the stream is cut on
    process A and reopened on process B with its last event id: every number exactly once, in
    order."""
    auth_api.allow(token="bob", body=BOB)
    env = {"BROKER_HISTORY": HISTORY, "BROKER_KEY_PREFIX": f"sse-{unique}"}
    a = broker_factory(auth_api=auth_api, redis=redis_server, **env)
    b = broker_factory(auth_api=auth_api, redis=redis_server, **env)
    room, quiet = chat(unique), chat(f"{unique}-quiet")
    await post(a, quiet, "before", history=True)  # a second history room, offset 1
    items = [{"requestId": "c", "room": room}, {"requestId": 2, "room": quiet},
             {"requestId": 3, "room": NEWS}]
    total = 120
    seen: list[int] = []
    offsets: dict[int, int] = {}  # number -> its offset

    async def publish() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            for n in range(total):
                r = await http.post(a.base_url + "/trigger", json={
                    "rooms": [room], "data": n, "history": True},
                    headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 202, r.text
                await asyncio.sleep(0.01)

    async with stream(sse_url(a, items, token="bob")) as s:
        assert (await s.next()).json()["type"] == "welcome"
        replies = [await s.next() for _ in range(3)]
        # the reply of a history room says its offset, and its event id the position
        q = replies[1].json()["offset"]
        assert [r.json() for r in replies] == [
            {"code": "success", "requestId": "c", "offset": 0},
            {"code": "success", "requestId": 2, "offset": q},
            {"code": "success", "requestId": 3}]
        assert q > 0 and replies[0].id == "%22c%22=0"
        assert replies[1].id == f"%22c%22=0&2={q}"
        assert replies[2].id is None and s.last_id == f"%22c%22=0&2={q}"
        publisher = asyncio.ensure_future(publish())
        while len(seen) < 30:
            ev = await s.next()
            frame = ev.json()
            assert frame["requestId"] == "c"
            seen.append(frame["data"])
            offsets[frame["data"]] = frame["offset"]
            assert ev.id == f"%22c%22={frame['offset']}&2={q}"
        last_id = s.last_id
    # cut on A (the publisher goes on), reopened on B: EventSource sends Last-Event-ID
    await asyncio.sleep(0.2)
    async with stream(sse_url(b, items, token="bob"),
                      headers={"Last-Event-ID": last_id}) as s:
        assert (await s.next()).json()["type"] == "welcome"
        reply = await s.next()
        assert reply.json()["recovered"] is True
        assert reply.id == f"%22c%22={offsets[seen[-1]]}"  # resumes after the last one seen
        while seen[-1] != total - 1:
            frame = (await s.next(timeout=15)).json()
            if frame.get("requestId") == "c":
                seen.append(frame["data"])
                offsets[frame["data"]] = frame["offset"]
    await asyncio.wait_for(publisher, 30)
    assert seen == list(range(total))
    # ?lastEventId= does the same for a script that reopens the stream itself
    resume = f"%22c%22={offsets[total - 2]}"
    async with stream(sse_url(b, items[:1], token="bob", lastEventId=resume)) as s:
        await s.next()
        assert (await s.next()).json()["recovered"] is True
        assert (await s.next()).json()["data"] == total - 1


@pytest.mark.parametrize("server", SERVERS)
async def test_a_client_that_stops_reading_is_closed_as_slow(broker_factory, auth_api, server):
    """Under uvicorn its send waits while the socket's buffer is full; under daphne the
    response flow (broker.daphne_ext) says so: either way the frames wait in the outbox, whose
    bound closes the stream."""
    auth_api.allow(token="bob", body=BOB)
    broker = broker_factory(auth_api=auth_api, server=server, BROKER_MAX_OUTBOX_BYTES=262_144)
    payload = secrets.token_urlsafe(75_000)  # 100 KB frames: well within the outbox bound
    async with stream(sse_url(broker, [{"requestId": 1, "room": NEWS}], token="bob")) as s, \
            httpx.AsyncClient(trust_env=False, timeout=30) as http:
        await s.frames(2)  # welcome, reply: then it reads nothing
        for i in range(300):  # up to 30 MB: over the socket buffers and the outbox
            r = await http.post(broker.base_url + "/trigger",
                                json={"rooms": [NEWS], "data": {"i": i, "p": payload}},
                                headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 202
            if slow_drops((await http.get(broker.base_url + "/metrics")).text):
                break
        assert slow_drops((await http.get(broker.base_url + "/metrics")).text) >= 1
        # it reads again: what was written before the drop, then the last event, then the end
        got = []
        while True:
            ev = await s.next(timeout=15)
            if ev.event == "close":
                break
            got.append(ev.json()["data"]["i"])
        assert json.loads(ev.data) == {"code": 4008, "reason": "slow"}
        assert got == list(range(len(got))) and 10 < len(got) < i + 1
        with_end = await asyncio.wait_for(s._line(), 5)
        assert with_end is None and s.ended
    assert "closing as slow" in broker.log()


# ------------------------------------------------------------------ refusals, before any stream


async def test_refusals_and_bad_requests_are_http_statuses(broker_factory, auth_api):
    auth_api.allow(token="bob", body=BOB)
    broker = broker_factory(auth_api=auth_api, BROKER_MAX_SUBSCRIPTIONS=2,
                            BROKER_MAX_MESSAGE_BYTES=2048, BROKER_MAX_CONNECTIONS=1,
                            BROKER_ALLOWED_ORIGINS="https://app.example.com")
    one = [{"requestId": 1, "room": NEWS}]
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        async def get(url: str, **kw: Any) -> tuple[int, Any]:
            r = await http.get(url, **kw)
            assert r.headers["content-type"] == "application/json"
            return r.status_code, r.json()

        def error(code: str) -> Any:
            return lambda body: body["type"] == "error" and body["message"] == code

        # a refused login: 403 with the refused frame, which EventSource does not retry
        assert await get(sse_url(broker, one, token="nobody")) == (403, {
            "type": "refused", "is_authorized": False, "reason": "refused"})
        assert (await get(sse_url(broker, one, token="bob"),
                          headers={"Origin": "https://evil.example.com"})) == (403, {
            "type": "refused", "is_authorized": False, "reason": "origin-not-allowed"})
        # a page of an allowed origin may read what it is told (CORS, with its cookies)
        app = {"Origin": "https://app.example.com"}
        r = await http.get(sse_url(broker, one, token="nobody"), headers=app)
        assert r.status_code == 403
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert r.headers["access-control-allow-credentials"] == "true"
        r = await http.options(sse_url(broker), headers=app)
        assert r.status_code == 204 and "last-event-id" in r.headers[
            "access-control-allow-headers"]
        r = await http.options(sse_url(broker), headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in r.headers
        for url, kw, status, check in [
            (sse_url(broker, "[1", token="bob"), {}, 400, error("invalid-subscribe-list")),
            (sse_url(broker, [1, 2], token="bob"), {}, 400, error("invalid-subscribe-list")),
            (sse_url(broker, one * 3, token="bob"), {}, 400, error("too-many-subscriptions")),
            (sse_url(broker, [{"requestId": "x" * 3000}], token="bob"), {}, 413,
             error("subscribe-list-too-big")),
            (sse_url(broker, one, token="bob"), {"headers": {"Last-Event-ID": "c=1"}}, 400,
             error("invalid-last-event-id")),
            (sse_url(broker, one, token="bob", lastEventId="%22c%22=-1"), {}, 400,
             error("invalid-last-event-id")),
        ]:
            got_status, body = await get(url, **kw)
            assert got_status == status and check(body), (url, got_status, body)
        r = await http.post(sse_url(broker, token="bob"), content=b'{"subscribe": 1}')
        assert r.status_code == 400 and r.json()["message"] == "invalid-subscribe-list"
        r = await http.delete(sse_url(broker, token="bob"))
        assert r.status_code == 405
        # over capacity (BROKER_MAX_CONNECTIONS=1): 503 while a stream holds the place
        async with stream(sse_url(broker, one, token="bob")) as s:
            await s.frames(2)
            assert await get(sse_url(broker, one, token="bob")) == (503, {
                "type": "refused", "is_authorized": False, "reason": "over-capacity"})
        # the auth API unavailable: 503, which the client may retry
        auth_api.stop()
        await broker.until_metric("combroker_connections", 0)
        assert await get(sse_url(broker, one, token="bob")) == (503, {
            "type": "refused", "is_authorized": False, "reason": "auth-unavailable"})


async def test_a_ticket_opens_one_stream_while_the_auth_api_is_down(broker_factory, auth_api):
    """A connection ticket (``?ticket=``, broker.tickets) works as over WebSocket, and only
    once: EventSource's own reconnect presents it again and is refused for good (403)."""
    from broker.tickets import encode

    auth_api.stop()
    broker = broker_factory(auth_api=auth_api, BROKER_TICKET_SECRET="sse-secret")
    ticket = encode(BOB, "sse-secret", 60)
    one = [{"requestId": 1, "room": NEWS}]
    async with stream(sse_url(broker, one, ticket=ticket)) as s:
        assert (await s.next()).json()["login_id"] == "bob"
        assert (await s.next()).json() == {"code": "success", "requestId": 1}
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            again = await http.get(sse_url(broker, one, ticket=ticket))
        assert again.status_code == 403 and again.json()["reason"] == "ticket-replayed"
        await post(broker, NEWS, "ticketed")
        assert (await s.next()).json()["data"] == "ticketed"


async def test_a_stream_has_no_resume_token_and_writing_an_acked_message_confirms_it(
        broker_factory, auth_api, redis_server, unique):
    """A stream cannot send ``confirm``: an acknowledged message written to it is confirmed by
    that (as over STOMP), and the sender hears ``confirmed``; no resume token is handed out,
    since a stream resumes by its event ids."""
    from tests.harness import recv_until, send_json, ws_open

    auth_api.allow(token="billing", body={"login_id": "billing", "profile": "service"})
    auth_api.allow(token="bob", body={"login_id": f"bob-{unique}"})
    broker = broker_factory(auth_api=auth_api, redis=redis_server,
                            BROKER_KEY_PREFIX=f"sse-ack-{unique}")
    sender, _ = await ws_open(broker.ws_url, token="billing", subprotocols=["combroker.v1"])
    bob = f"/agent/bob-{unique}"
    async with stream(sse_url(broker, token="bob")) as s:
        welcome = (await s.next()).json()
        assert welcome["type"] == "welcome" and welcome["resume_token"] is None, welcome
        assert "resume_ttl" not in welcome
        await send_json(sender, {"type": "send", "to": bob, "data": {"invoice": 7}, "ack": True,
                                 "requestId": 1})
        reply = await recv_until(sender, lambda f: f.get("requestId") == 1)
        assert reply["code"] == "success", reply
        message = (await s.next()).json()
        assert (message["type"], message["data"], message["ack"]) == ("message", {"invoice": 7},
                                                                       True)
        confirmed = await recv_until(sender, lambda f: f.get("type") == "confirmed")
        assert confirmed == {"type": "confirmed", "id": reply["id"], "to": bob}
    await sender.close()
