"""A Redis outage and its recovery, against a Redis this test starts and stops itself
(PROTOCOL §5 503; issue 7: existing connections stay open, fan-out resumes without a restart,
rich-dialect clients are told to resync)."""

import asyncio

from tests.harness import atrigger, recv_json, recv_until, send_json, ws_open

ROOM = {"target": "news"}


async def test_outage_refuses_triggers_keeps_connections_and_recovers(
        broker_factory, auth_api, fresh_redis):
    auth_api.allow("t", body={"allowed_rooms": [ROOM]})
    broker = broker_factory(auth_api=auth_api, redis=fresh_redis, BROKER_REGISTRY_TTL=1.5)
    rich, welcome = await ws_open(broker.ws_url, token="t", subprotocols=["combroker.v1"])
    ht, _ = await ws_open(broker.ws_url, token="t")
    assert welcome["type"] == "welcome"
    for ws in (rich, ht):
        await send_json(ws, {"type": "subscribe", "room": ROOM, "requestId": 1})
        assert (await recv_json(ws))["code"] == "success"

    fresh_redis.stop()
    r = await atrigger(broker.base_url, "test-token", [ROOM], {"n": 1})
    assert r.status_code == 503
    assert "not delivered" in r.json()["error"]
    health = await asyncio.to_thread(broker.get, "/healthz")
    assert health.status_code == 503 and health.json()["redis"] is False

    # Existing connections stay open and keep answering.
    await ht.send("ping")
    assert await asyncio.wait_for(ht.recv(), 5) == "pong"
    await send_json(rich, {"type": "ping", "requestId": "p"})
    assert await recv_json(rich) == {"type": "pong", "requestId": "p"}

    fresh_redis.restart()
    # The rich client is told that messages may have been missed.
    assert await recv_until(rich, lambda f: f.get("type") == "resync", timeout=15) == {
        "type": "resync"}
    # Fan-out works again without a broker restart.
    r = await atrigger(broker.base_url, "test-token", [ROOM], {"n": 2})
    assert r.status_code == 202, r.text
    assert await recv_json(ht, timeout=10) == {"type": "publish", "requestId": 1, "data": {"n": 2}}
    frame = await recv_json(rich, timeout=10)
    assert frame["data"] == {"n": 2} and frame["requestId"] == 1
    await rich.close()
    await ht.close()
