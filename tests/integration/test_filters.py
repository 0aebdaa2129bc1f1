"""Event filters (docs/protocol.md "Event filters"): trigger tags through ``/trigger`` on one
process reach a filtered subscriber on another (Redis), over the JSON dialect and a STOMP
``filter`` header; a filter over its bound and bad tags are refused by name; a ``since`` replay
and a resume apply the same filter as live delivery.

No fixed waits: after the triggers a subscriber must not get, a trigger it must get is posted
from the same process to the same room, and has to be the next frame it sees.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.harness import recv_json, recv_many, send_json, ws_open
from tests.integration.test_stomp_ws import stomp_ws

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}
HISTORY = [{"room": CHAT_ANY, "size": 100, "ttl": 60}]
BOB = {"login_id": "bob", "allowed_rooms": [CHAT_ANY]}
PAID = {"eq": ["status", "paid"]}

pytestmark = pytest.mark.timeout(60)


def chat(customer: str) -> dict:
    return {"target": "chat", "customer": customer}


async def ask(ws, frame: dict) -> dict:
    await send_json(ws, frame)
    return await recv_json(ws)


async def post(broker, body) -> dict:
    r = await broker.atrigger(None, None, body=body)
    assert r.status_code == 202, r.text
    return r.json()


@pytest.fixture
def cluster(broker_factory, auth_api, redis_server, unique):
    auth_api.allow(token="bob", body=BOB)
    env = {"BROKER_HISTORY": HISTORY, "BROKER_KEY_PREFIX": f"filters-{unique}"}
    return (broker_factory(auth_api=auth_api, redis=redis_server, **env),
            broker_factory(auth_api=auth_api, redis=redis_server, **env))


async def test_tags_cross_processes_and_each_subscription_gets_what_its_filter_matches(
        cluster, unique):
    a, b = cluster
    room = chat(unique)
    ws, _ = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    subs = {"all": None, "paid": PAID, "not-paid": {"ne": ["status", "paid"]},
            "big": {"and": [{"in": ["status", ["paid", "open"]]}, {"gt": ["amount", 100]}]}}
    for rid, flt in subs.items():
        frame = {"type": "subscribe", "room": room, "requestId": rid}
        if flt is not None:
            frame["filter"] = flt
        assert await ask(ws, frame) == {"code": "success", "requestId": rid, "offset": 0}

    await post(a, {"rooms": [room], "data": 1, "tags": {"status": "paid", "amount": 50}})
    await post(a, {"rooms": [room], "data": 2, "tags": {"status": "open", "amount": 500}})
    await post(a, {"rooms": [room], "data": 3})  # no tags: evaluated with none
    batch = await a.atrigger(None, None, body=[
        {"rooms": [room], "data": 4, "tags": {"status": "paid", "amount": 101.5}},
        {"rooms": [room], "data": 5, "tags": {"status": "void", "amount": 1000}}])
    assert batch.status_code == 202, batch.text

    got = await recv_many(ws, 5 + 2 + 3 + 2)
    by_sub: dict[str, list] = {}
    for frame in got:
        by_sub.setdefault(frame["requestId"], []).append(frame["data"])
    assert by_sub == {"all": [1, 2, 3, 4, 5], "paid": [1, 4], "not-paid": [2, 3, 5],
                      "big": [2, 4]}
    # nothing else came: the next frames are the two ends each subscription gets
    await post(a, {"rooms": [room], "data": "end", "tags": {"status": "paid", "amount": 999}})
    await post(a, {"rooms": [room], "data": "end", "tags": {"status": "open", "amount": 999}})
    assert sorted(f["requestId"] for f in await recv_many(ws, 6)) == [
        "all", "all", "big", "big", "not-paid", "paid"]
    await ws.close()


async def test_bad_filters_and_tags_are_refused_by_name(cluster, unique):
    a, b = cluster
    room = chat(unique)
    ws, _ = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    deep: dict = PAID
    for _ in range(8):
        deep = {"not": deep}
    reply = await ask(ws, {"type": "subscribe", "room": room, "requestId": 1, "filter": deep})
    assert reply["code"] == "error" and reply["message"] == "filter-too-large", reply
    assert reply["requestId"] == 1 and "nested" in reply["detail"]
    wide = {"in": ["status", list(range(65))]}
    reply = await ask(ws, {"type": "subscribe", "room": room, "requestId": 2, "filter": wide})
    assert reply["message"] == "filter-too-large", reply
    reply = await ask(ws, {"type": "subscribe", "room": room, "requestId": 3,
                           "filter": {"lt": ["amount", "10"]}})
    assert reply["message"] == "invalid-filter" and reply["detail"], reply
    # the refused ids are free: nothing was subscribed
    assert (await ask(ws, {"type": "subscribe", "room": room, "requestId": 1,
                           "filter": PAID}))["code"] == "success"

    r = await a.atrigger(None, None, body={"rooms": [room], "data": 1, "tags": ["paid"]})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid-tags: "), r.text
    r = await a.atrigger(None, None, body={"rooms": [room], "data": 1,
                                           "tags": {"note": "x" * 300}})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid-tags: "), r.text
    r = await a.atrigger(None, None, body=[{"rooms": [room], "data": 1, "tags": {"a": [1]}},
                                           {"rooms": [room], "data": 2,
                                            "tags": {"status": "paid"}}])
    assert r.status_code == 207, r.text
    first, second = r.json()["results"]
    assert first["status"] == 400 and first["error"].startswith("invalid-tags: ")
    assert "id" in second
    assert (await recv_json(ws))["data"] == 2  # the refused entry was not delivered
    await ws.close()


async def test_stomp_filter_header(cluster, auth_api, unique):
    a, b = cluster
    room = chat(unique)
    client, connected = await stomp_ws(b.ws_url, token="bob")
    assert connected.command == "CONNECTED"
    await client.send("SUBSCRIBE", id="s1", destination="/room/" + json.dumps(room),
                      filter=json.dumps(PAID), receipt="r1")
    assert (await client.recv()).headers == {"receipt-id": "r1"}
    await post(a, {"rooms": [room], "data": "open", "tags": {"status": "open"}})
    await post(a, {"rooms": [room], "data": "paid", "tags": {"status": "paid"}})
    msg = await client.recv()
    assert msg.command == "MESSAGE" and json.loads(msg.body) == "paid"
    assert msg.headers["subscription"] == "s1"
    # a filter header over its bound: ERROR naming it (standard STOMP then closes)
    await client.send("SUBSCRIBE", id="s2", destination="/room/" + json.dumps(room),
                      filter=json.dumps({"in": ["status", list(range(65))]}))
    error = await client.recv()
    assert error.command == "ERROR" and error.headers["message"] == "filter-too-large", error
    bad, _ = await stomp_ws(b.ws_url, token="bob")
    await bad.send("SUBSCRIBE", id="s3", destination="/room/" + json.dumps(room),
                   filter="{not json")
    error = await bad.recv()
    assert error.command == "ERROR" and error.headers["message"] == "invalid-filter", error


async def test_since_replay_and_resume_apply_the_filter(cluster, unique):
    a, b = cluster
    room = chat(unique)
    statuses = ["paid", "open", None, "paid", "void", "paid"]
    for n, status in enumerate(statuses):
        body = {"rooms": [room], "data": n, "history": True}
        if status is not None:
            body["tags"] = {"status": status}
        await post(a, body)

    # the replay (read from Redis on the other process) is filtered as live frames are
    ws, welcome = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    reply = await ask(ws, {"type": "subscribe", "room": room, "requestId": "p", "since": 0,
                           "filter": PAID})
    assert reply["recovered"] is True, reply
    replayed = await recv_many(ws, 3)
    assert [f["data"] for f in replayed] == [0, 3, 5]
    await post(a, {"rooms": [room], "data": "live", "history": True,
                   "tags": {"status": "paid"}})
    live = await recv_json(ws)
    assert live["data"] == "live" and live["offset"] == replayed[-1]["offset"] + 1

    # resume: the saved subscription keeps its filter, on the other process too
    token = welcome["resume_token"]
    await ws.close()
    await b.until_metric("combroker_connections", 0)  # the state is saved
    await post(a, {"rooms": [room], "data": "missed-open", "history": True,
                   "tags": {"status": "open"}})
    await post(a, {"rooms": [room], "data": "missed-paid", "history": True,
                   "tags": {"status": "paid"}})
    url = f"{a.ws_url}?{urllib.parse.urlencode({'resume': token})}"
    ws, welcome = await ws_open(url, token="bob", subprotocols=RICH)
    assert welcome["resumed"] is True
    assert [s["recovered"] for s in welcome["subscriptions"]] == [True]
    assert (await recv_json(ws))["data"] == "missed-paid"
    await post(b, {"rooms": [room], "data": "live-open", "tags": {"status": "open"}})
    await post(b, {"rooms": [room], "data": "live-paid", "tags": {"status": "paid"}})
    assert (await recv_json(ws))["data"] == "live-paid"
    await ws.close()
