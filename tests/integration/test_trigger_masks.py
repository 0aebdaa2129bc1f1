"""The wildcard masks a trigger is routed by are cached per process (broker.fanout.masks), and a
subscription confirmed before a trigger was posted still gets it: the cache is checked against
Redis by a read that starts after the trigger's request began, and the groups of a mask that
read adds are sent to before the trigger is answered.

Two real broker processes on one Redis: the subscriptions are made on one, the triggers posted to
the other, whose cache for the room shape was filled (without the new mask) by a trigger just
before. A process that only trusted its cache would not send to the new mask's group.
"""

from __future__ import annotations

import pytest

from tests.harness import atrigger, expect_nothing, recv_json, send_json, ws_open

CHAT = {"target": "chat", "n": "1"}
CHAT_ANY = {"target": "chat", "n": "*"}
TOKEN = "test-token"


async def subscribe(broker, room, request_id):
    ws, welcome = await ws_open(broker.ws_url, token="sub")
    assert welcome["is_authorized"] is True
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": request_id})
    assert (await recv_json(ws))["code"] == "success"
    return ws


@pytest.mark.parametrize("form", ["single", "batch"])
async def test_a_wildcard_mask_new_to_the_posting_process_is_sent_to(
        broker_factory, auth_api, redis_server, unique, form):
    auth_api.allow(token="sub", body={"allowed_rooms": [CHAT, CHAT_ANY]})
    env = {"BROKER_KEY_PREFIX": f"masks-{unique}"}
    holder = broker_factory(auth_api=auth_api, redis=redis_server, **env)
    poster = broker_factory(auth_api=auth_api, redis=redis_server, **env)

    concrete = await subscribe(holder, CHAT, "c")
    # the poster reads the shape's masks: none in use but the room itself
    r = await atrigger(poster.base_url, TOKEN, [CHAT], "warm")
    assert r.status_code == 202, r.text
    assert (await recv_json(concrete))["data"] == "warm"

    wild = await subscribe(holder, CHAT_ANY, "w")  # a new mask, on the other process
    room = {"target": "chat", "n": "2"}
    if form == "single":
        r = await atrigger(poster.base_url, TOKEN, [room], "after")
        assert r.status_code == 202, r.text
    else:
        r = await atrigger(poster.base_url, TOKEN, None,
                           body=[{"rooms": [room], "data": "after"},
                                 {"rooms": [CHAT], "data": "also"}])
        assert r.status_code == 202, r.text
    assert await recv_json(wild) == {"type": "publish", "requestId": "w", "data": "after"}
    if form == "batch":
        assert await recv_json(wild) == {"type": "publish", "requestId": "w", "data": "also"}
        assert await recv_json(concrete) == {"type": "publish", "requestId": "c",
                                             "data": "also"}
    # once, though it went to that group twice where the check found the mask in use
    r = await atrigger(poster.base_url, TOKEN, [room], "again")
    assert r.status_code == 202, r.text
    assert (await recv_json(wild))["data"] == "again"
    await expect_nothing(wild)
    await expect_nothing(concrete)
    await wild.close()
    await concrete.close()
