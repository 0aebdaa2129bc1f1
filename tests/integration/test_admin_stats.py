"""Admin `stats` is fresh within about a second, whatever BROKER_REGISTRY_TTL (the monitor
console draws per-second rates from it)."""

import asyncio
import time

from tests.harness import atrigger, recv_json, send_json, ws_open

ROOM = {"target": "stats"}


async def test_stats_rates_refresh_within_a_second(broker_factory, auth_api, redis_server,
                                                   unique):
    auth_api.allow(f"root-{unique}", {"login_id": f"root{unique}", "profile": "admin"})
    auth_api.allow(f"sub-{unique}", {"allowed_rooms": [ROOM]})
    # The default TTL: a heartbeat only every 5 s; stats must not wait for it.
    broker = broker_factory(auth_api=auth_api, redis=redis_server,
                            BROKER_KEY_PREFIX=f"t{unique}", BROKER_REGISTRY_TTL=15)
    admin, _ = await ws_open(broker.ws_url, token=f"root-{unique}", subprotocols=["combroker.v1"])
    sub, _ = await ws_open(broker.ws_url, token=f"sub-{unique}")
    await send_json(sub, {"type": "subscribe", "room": ROOM, "requestId": 1})
    assert await recv_json(sub) == {"code": "success"}
    await asyncio.sleep(0.6)  # let the first rate window open
    for n in range(20):
        assert (await atrigger(broker.base_url, "test-token", [ROOM], n)).status_code == 202
    for _ in range(20):
        await recv_json(sub)
    posted = time.monotonic()
    while True:
        await send_json(admin, {"type": "admin", "action": "stats", "requestId": "s"})
        stats = (await recv_json(admin))["stats"]
        if stats["triggers"] >= 20 and stats["deliveries"] >= 20:
            break
        assert time.monotonic() - posted < 2.5, stats
        await asyncio.sleep(0.2)
    assert stats["triggers_per_s"] > 0 and stats["deliveries_per_s"] > 0, stats
    await admin.close()
    await sub.close()
