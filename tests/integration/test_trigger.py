"""POST /trigger (PROTOCOL §5): every status code, the batch form, and publish()/publish_sync()
from a Django process of its own reaching a WebSocket subscriber through Redis.

The HTTP contract runs against both ways the route is served (``ROUTES``): the sidecar's ASGI
route in front of Django (``broker.backendroute``) and the Django view a project that mounts
``broker.urls`` serves (``tests/viewasgi.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import _BROKERS as BROKERS_KEY
from tests.harness import (
    ROOT, UVICORN_ARGV, AuthAPI, BrokerProcess, expect_nothing, recv_json, send_json, trigger,
    ws_open,
)

TOKEN = "test-token"
NEWS = {"target": "news"}
MAX_BYTES = 300
MAX_BATCH = 5
# How POST /trigger is served: "route", the sidecar's own ASGI route (combroker.asgi);
# "view", Django's request cycle and broker.views.trigger (tests/viewasgi.py).
ROUTES = {"route": UVICORN_ARGV,
          "view": [a.replace("combroker.asgi:", "tests.viewasgi:") for a in UVICORN_ARGV]}


def publish(request_id, data) -> dict:
    return {"type": "publish", "requestId": request_id, "data": data}


async def subscriber(broker, room=NEWS, request_id=1, **kw):
    ws, welcome = await ws_open(broker.ws_url, token="sub", **kw)
    assert welcome["is_authorized"] is True
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": request_id})
    assert (await recv_json(ws))["code"] == "success"
    return ws


def api_rules(api: AuthAPI) -> AuthAPI:
    return api.allow(token="sub", body={"allowed_rooms": [NEWS, {"target": "chat", "n": "*"}]})


@pytest.fixture(scope="module", params=list(ROUTES))
def shared_broker(request):
    with AuthAPI() as api:
        api_rules(api)
        with BrokerProcess({"BROKER_AUTH_URL": api.url, "BROKER_TRIGGER_TOKEN": TOKEN,
                            "BROKER_MAX_TRIGGER_BYTES": MAX_BYTES,
                            "BROKER_MAX_TRIGGER_BATCH": MAX_BATCH},
                           argv=ROUTES[request.param],
                           name=f"shared-broker-{request.param}") as broker:
            yield broker


@pytest.fixture
def broker(shared_broker, request):
    request.node.stash.setdefault(BROKERS_KEY, []).append(shared_broker)
    return shared_broker


def post(broker, body, *, token: str | None = TOKEN, scheme="Bearer", path="/trigger",
         **kw) -> httpx.Response:
    """POST a raw body (bytes/str) or a JSON value."""
    return trigger(broker.base_url, token, None, None, body=body, scheme=scheme, path=path,
                   **kw)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


# ---------------------------------------------------------------- 202


async def test_202_delivers(broker):
    ws = await subscriber(broker)
    r = await broker.atrigger([NEWS], {"hello": "world"})
    assert r.status_code == 202
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"id"} and re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert await recv_json(ws) == publish(1, {"hello": "world"})

    # /trigger/ too; data may be null; Authorization: Token <t> is accepted as well
    r2 = await broker.atrigger([NEWS], None, path="/trigger/", scheme="Token")
    assert r2.status_code == 202 and r2.json()["id"] != body["id"]
    assert await recv_json(ws) == publish(1, None)
    await expect_nothing(ws)
    await ws.close()


# ---------------------------------------------------------------- 400, 401, 405, 413


async def test_400_for_each_cause(broker):
    ws = await subscriber(broker)
    cases = [
        (b"{broken", "body is not JSON"),
        (b"", "body is not JSON"),
        ("[]", "batch is empty"),
        ('"rooms"', "body must be a JSON object"),
        ({"data": 1}, "rooms missing"),
        ({"rooms": [NEWS]}, "data missing"),
        ({"rooms": [{"target": None}], "data": 1}, "invalid room"),
        ({"rooms": [NEWS, {}], "data": 1}, "invalid room"),
        ({"rooms": NEWS, "data": 1}, "invalid room"),
        ({"rooms": [], "data": 1}, "invalid room"),
        ({"rooms": None, "data": 1}, "invalid room"),
    ]
    for body, expected in cases:
        r = post(broker, body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        message = error_of(r)
        assert message == expected or message.startswith(expected + ": "), (body, message)
    # nothing of it was delivered, not even the valid room of a list with an invalid one
    await expect_nothing(ws)
    assert post(broker, {"rooms": [NEWS], "data": "valid"}).status_code == 202
    assert await recv_json(ws) == publish(1, "valid")
    await ws.close()


async def test_401_without_the_right_token(broker):
    ws = await subscriber(broker)
    valid = {"rooms": [NEWS], "data": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token wrong"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"X-Trigger-Token": TOKEN}):
        r = post(broker, valid, token=None, headers=headers)
        assert r.status_code == 401, (headers, r.status_code)
        assert error_of(r)
    # the token is checked before the body
    assert post(broker, b"{broken", token="wrong").status_code == 401
    await expect_nothing(ws)
    assert post(broker, valid, scheme="Token").status_code == 202
    assert await recv_json(ws) == publish(1, 1)
    await ws.close()


@pytest.mark.parametrize("route", ROUTES)
def test_401_for_everyone_without_a_configured_token(broker_factory, route):
    broker = broker_factory(BROKER_TRIGGER_TOKEN=None, argv=ROUTES[route])
    for token in (None, "test-token", "anything"):
        r = broker.trigger([NEWS], 1, token=token)
        assert r.status_code == 401, (token, r.status_code)
        r = broker.trigger(None, None, token=token, body=[{"rooms": [NEWS], "data": 1}])
        assert r.status_code == 401, (token, r.status_code)


def test_405_for_other_methods(broker):
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        for path in ("/trigger", "/trigger/"):
            r = httpx.request(method, broker.base_url + path, trust_env=False, timeout=10,
                              headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 405, (method, path)
            assert r.headers["allow"] == "POST"
            assert error_of(r)


def _body_of_size(n: int) -> bytes:
    body = json.dumps({"rooms": [NEWS], "data": ""}, separators=(",", ":")).encode()
    pad = n - len(body)
    assert pad >= 0
    return body[:-2] + b"x" * pad + b'"}'


async def test_413_over_the_limit(broker):
    ws = await subscriber(broker)
    at_limit = _body_of_size(MAX_BYTES)
    assert len(at_limit) == MAX_BYTES
    assert post(broker, at_limit).status_code == 202
    assert await recv_json(ws) == publish(1, json.loads(at_limit)["data"])

    r = post(broker, _body_of_size(MAX_BYTES + 1))
    assert r.status_code == 413 and error_of(r)

    def chunks():
        yield _body_of_size(MAX_BYTES * 3)

    # without a Content-Length (chunked), the body itself is measured
    r = httpx.post(broker.base_url + "/trigger", content=chunks(), trust_env=False, timeout=10,
                   headers={"Authorization": f"Bearer {TOKEN}",
                            "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    await expect_nothing(ws)
    assert post(broker, {"rooms": [NEWS], "data": "small"}).status_code == 202
    assert await recv_json(ws) == publish(1, "small")
    await ws.close()


# ---------------------------------------------------------------- 503


@pytest.mark.parametrize("route", ROUTES)
async def test_503_when_redis_is_down(broker_factory, auth_api, fresh_redis, route):
    api_rules(auth_api)
    argv = ROUTES[route]
    idle = broker_factory(auth_api=auth_api, redis=fresh_redis, argv=argv)  # no hub yet
    busy = broker_factory(auth_api=auth_api, redis=fresh_redis, argv=argv)  # a hub running
    ws = await subscriber(busy)
    assert (await busy.atrigger([NEWS], "before")).status_code == 202
    assert await recv_json(ws) == publish(1, "before")

    fresh_redis.stop()
    for b in (idle, busy):
        r = await b.atrigger([NEWS], "during")
        assert r.status_code == 503, (b.name, r.status_code, r.text)
        assert error_of(r) == "channel layer unavailable: the trigger was not delivered"
        # a batch none of whose entries could be delivered: 503 as a whole
        batch = [{"rooms": [NEWS], "data": "during"}, {"rooms": [{"n": "*"}], "data": 2}]
        r = post(b, batch)
        assert r.status_code == 503, (b.name, r.status_code, r.text)
        assert error_of(r) == "channel layer unavailable: the trigger was not delivered"
        # with an entry refused for itself as well: 207, each entry answered
        r = post(b, batch + [{"rooms": [NEWS]}])
        assert r.status_code == 207, (b.name, r.status_code, r.text)
        assert r.json() == {"results": [
            {"error": "channel layer unavailable: the trigger was not delivered", "status": 503},
            {"error": "channel layer unavailable: the trigger was not delivered", "status": 503},
            {"error": "data missing", "status": 400}]}
    await expect_nothing(ws)


# ---------------------------------------------------------------- publish() / publish_sync()

PUBLISHER = r"""
import asyncio, json, sys
import django
django.setup()
from broker import publish, publish_sync
from rooms import InvalidRoom
rooms = json.loads(sys.argv[1])
out = {"sync": publish_sync(rooms, {"via": "publish_sync"})}
out["async"] = asyncio.run(publish(rooms, {"via": "publish"}))
try:
    publish_sync([{"bad": None}], 1)
except InvalidRoom:
    out["invalid"] = "InvalidRoom"
print(json.dumps(out))
"""


async def test_publish_and_publish_sync_from_another_process(broker_factory, auth_api,
                                                             redis_server, unique):
    api_rules(auth_api)
    prefix = f"pub-{unique}"
    broker = broker_factory(auth_api=auth_api, redis=redis_server, BROKER_KEY_PREFIX=prefix)
    room = {"target": "chat", "n": "5"}
    ws = await subscriber(broker, room={"target": "chat", "n": "*"}, request_id="r",
                          subprotocols=["combroker.v1"])

    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(DJANGO_SETTINGS_MODULE="combroker.settings", BROKER_REDIS_URL=redis_server.url,
               BROKER_KEY_PREFIX=prefix, PYTHONDONTWRITEBYTECODE="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISHER, json.dumps([room]), cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout.decode().strip().splitlines()[-1])
    assert out["invalid"] == "InvalidRoom"

    assert await recv_json(ws) == {"type": "publish", "requestId": "r", "room": room,
                                   "data": {"via": "publish_sync"}, "id": out["sync"]}
    assert await recv_json(ws) == {"type": "publish", "requestId": "r", "room": room,
                                   "data": {"via": "publish"}, "id": out["async"]}
    await expect_nothing(ws)
    await ws.close()


async def test_400_for_json_that_no_client_could_read(broker):
    """Python's json takes NaN, Infinity and 1e999 (inf); forwarded, they became `NaN` and
    `Infinity` in frames that JSON.parse rejects. They are not JSON: 400 (issue 7 fuzzing)."""
    ws = await subscriber(broker)
    for raw in ('{"rooms":[{"target":"news"}],"data":NaN}',
                '{"rooms":[{"target":"news"}],"data":[-Infinity]}',
                '{"rooms":[{"target":"news"}],"data":1e999}',
                '{"rooms":[{"target":"news"}],"data":' + "[" * 120 + "]" * 120 + "}"):
        r = post(broker, raw)
        if "[[" in raw:  # deep but within the parser's limits: fine
            assert r.status_code == 202, r.text
            assert (await recv_json(ws))["data"] == json.loads(raw)["data"]
            continue
        assert r.status_code == 400, (raw, r.status_code, r.text)
        assert error_of(r) == "body is not JSON"
    await expect_nothing(ws)
    await ws.close()


async def test_data_with_an_unpaired_surrogate_is_delivered(broker):
    """A "\\ud800" escape decodes to a string UTF-8 cannot carry: the frame failed to be
    written (the subscriber got nothing). It is now sent escaped, as it was posted."""
    ws = await subscriber(broker)
    r = post(broker, '{"rooms":[{"target":"news"}],"data":{"s":"a\\ud800b","t":"\\u00e9"}}')
    assert r.status_code == 202, r.text
    assert await recv_json(ws) == publish(1, {"s": "a\ud800b", "t": "\u00e9"})
    await ws.close()


async def test_400_for_a_body_that_is_not_utf8(broker):
    """RFC 8259: JSON exchanged between systems is UTF-8. Python's json also reads UTF-16 and
    UTF-32 bytes; a body in them was accepted (issue 11, item 15). Refused with 400, saying so."""
    ws = await subscriber(broker)
    body = json.dumps({"rooms": [NEWS], "data": "é"}, ensure_ascii=False)
    for raw in (body.encode("utf-16"), body.encode("utf-16-le"), body.encode("utf-16-be"),
                body.encode("utf-32"), body.encode("latin-1")):
        r = post(broker, raw)
        assert r.status_code == 400, (raw[:20], r.status_code, r.text)
        assert "UTF-8" in error_of(r), error_of(r)
    await expect_nothing(ws)
    assert post(broker, body.encode("utf-8")).status_code == 202
    assert await recv_json(ws) == publish(1, "é")
    await ws.close()


async def test_400_for_data_nested_deeper_than_the_broker_reads(broker):
    """Nesting past the codec's depth (128 levels, the body counted: docs/protocol.md) is refused
    as it is on every transport (issue 11, item 13), never a 500."""
    ws = await subscriber(broker)
    prefix = '{"rooms":[{"target":"news"}],"data":'
    for depth, status in ((127, 202), (128, 400)):
        r = post(broker, prefix + "[" * depth + "]" * depth + "}")
        assert r.status_code == status, (depth, r.status_code, r.text)
        if status == 400:
            assert "nested deeper than 128" in error_of(r), error_of(r)
        else:
            assert (await recv_json(ws))["data"] == json.loads("[" * depth + "]" * depth)
    await expect_nothing(ws)
    await ws.close()


# ---------------------------------------------------------------- the batch form

def entry(data, room=NEWS, **fields) -> dict:
    return {"rooms": [room], "data": data, **fields}


async def test_batch_202_answers_each_entry_in_order(broker):
    ws = await subscriber(broker)
    before = broker.metric("combroker_triggers_total")
    r = post(broker, [entry(1), entry(2, id="own-2"), entry(3, history=False)])
    assert r.status_code == 202, r.text
    assert r.headers["content-type"].startswith("application/json")
    results = r.json()["results"]
    assert len(results) == 3 and all(set(x) == {"id"} for x in results), results
    assert results[1] == {"id": "own-2"}
    assert re.fullmatch(r"[0-9a-f]{32}", results[0]["id"]) and results[0] != results[2]
    for n in (1, 2, 3):
        assert await recv_json(ws) == publish(1, n)
    await expect_nothing(ws)
    assert broker.metric("combroker_triggers_total") == before + 3
    # one entry is a batch too; /trigger/ takes batches as well
    r = post(broker, [entry("one")], path="/trigger/")
    assert r.status_code == 202 and len(r.json()["results"]) == 1, r.text
    assert await recv_json(ws) == publish(1, "one")
    await ws.close()


async def test_batch_207_refuses_entries_as_a_single_trigger_would(broker):
    """Each entry is checked on its own: a refused entry gets the very error a single trigger
    with that body gets, and the others are delivered."""
    ws = await subscriber(broker)
    groups = [[{"data": 1}, {"rooms": [NEWS]}],
              [{"rooms": [{"target": None}], "data": 1}, {"rooms": NEWS, "data": 1}],
              [entry(1, history="yes"), entry(1, id="not ok"), entry(1, id=None)]]
    before = broker.metric("combroker_triggers_total")
    for refused in groups:
        batch = [entry("first"), *refused, entry("last")]
        assert len(batch) <= MAX_BATCH
        r = post(broker, batch)
        assert r.status_code == 207, r.text
        results = r.json()["results"]
        assert len(results) == len(batch)
        assert set(results[0]) == {"id"} and set(results[-1]) == {"id"}, results
        for body, result in zip(refused, results[1:-1]):
            single = post(broker, body)
            assert single.status_code == 400, single.text
            assert result == {"error": error_of(single), "status": 400}, (body, result)
        assert await recv_json(ws) == publish(1, "first")
        assert await recv_json(ws) == publish(1, "last")
    await expect_nothing(ws)
    # triggers are counted per accepted entry, refusals not at all
    assert broker.metric("combroker_triggers_total") == before + 2 * len(groups)
    await ws.close()


async def test_batch_400_as_a_whole(broker):
    ws = await subscriber(broker)
    cases = [
        ([], "batch is empty: a batch holds 1 to 5 triggers (BROKER_MAX_TRIGGER_BATCH)"),
        ([entry(n) for n in range(MAX_BATCH + 1)],
         "batch over BROKER_MAX_TRIGGER_BATCH (5 triggers)"),
        ([entry(1), 2], "batch entries must be JSON objects"),
        ([entry(1), [entry(2)]], "batch entries must be JSON objects"),
        ([None], "batch entries must be JSON objects"),
    ]
    for body, expected in cases:
        r = post(broker, body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert error_of(r) == expected
    await expect_nothing(ws)  # nothing of a refused batch is delivered
    await ws.close()


async def test_batch_body_checks_are_the_single_triggers(broker):
    """A batch is one body: 413 over BROKER_MAX_TRIGGER_BYTES, 400 for bytes that are not
    JSON, 401 without the token, whatever it holds."""
    ws = await subscriber(broker)
    big = json.dumps([entry("x" * 100)] * 3).encode()
    assert len(big) > MAX_BYTES
    r = post(broker, big)
    assert r.status_code == 413, r.text
    assert error_of(r) == f"body over BROKER_MAX_TRIGGER_BYTES ({MAX_BYTES} bytes)"
    r = post(broker, b'[{"rooms":[{"target":"news"}],"data":NaN}]')
    assert (r.status_code, error_of(r)) == (400, "body is not JSON")
    assert post(broker, [entry(1)], token="wrong").status_code == 401
    await expect_nothing(ws)
    await ws.close()


async def test_a_client_that_leaves_mid_body_is_no_trouble(broker):
    """A POST whose client goes away before its declared body has arrived is dropped without
    an answer or an error; the next trigger is served."""
    ws = await subscriber(broker)
    before = broker.log()
    body = json.dumps({"rooms": [NEWS], "data": "never"}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(b"POST /trigger HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body) + 50).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    assert post(broker, {"rooms": [NEWS], "data": "next"}).status_code == 202
    assert await recv_json(ws) == publish(1, "next")
    await expect_nothing(ws)
    assert "Traceback" not in broker.log()[len(before):]
    await ws.close()
