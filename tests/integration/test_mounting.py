"""Mounting the broker into an existing Django project (PROTOCOL §7): tests/mountproject.

Its settings add "channels" and "broker" to INSTALLED_APPS and take CHANNEL_LAYERS from
``broker.conf.channel_layers_setting()``; its urls include ``broker.urls`` under ``rt/`` next to
its own view; its asgi.py routes WebSockets to ``broker.routing.websocket_urlpatterns`` and
``rt/sse/`` to ``broker.sse.SseStream.as_asgi()``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

from tests.harness import expect_nothing, recv_json, send_json, trigger, ws_open
from tests.integration.test_sse import stream

MOUNT_ARGV = ["{python}", "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}",
              "tests.mountproject.asgi:application"]
NEWS = {"target": "news"}


async def test_mounted_broker(broker_factory, auth_api, redis_server, unique):
    auth_api.allow(token="t", body={"allowed_rooms": [NEWS]})
    broker = broker_factory(
        argv=MOUNT_ARGV, ready_path="/rt/healthz", auth_api=auth_api, redis=redis_server,
        BROKER_KEY_PREFIX=f"mount-{unique}", DJANGO_SETTINGS_MODULE="tests.mountproject.settings",
        BROKER_TRIGGER_TOKEN=None)  # the project's settings.py holds the token

    own = broker.get("/")
    assert (own.status_code, own.text) == (200, "the host project's own view")
    health = broker.get("/rt/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "redis": True})
    # the broker's routes live where the project put them, and only there
    assert trigger(broker.base_url, "mounted-token", [NEWS], 1).status_code == 404

    ws, welcome = await ws_open(broker.ws_url, token="t")
    assert welcome == {"is_authorized": True, "allowed_rooms": [NEWS]}
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": "n"})
    assert await recv_json(ws) == {"code": "success"}

    assert trigger(broker.base_url, "test-token", [NEWS], 0, path="/rt/trigger").status_code \
        == 401
    r = trigger(broker.base_url, "mounted-token", [NEWS], {"from": "rt"}, path="/rt/trigger")
    assert r.status_code == 202, r.text
    assert await recv_json(ws) == {"type": "publish", "requestId": "n", "data": {"from": "rt"}}
    await expect_nothing(ws)
    await ws.close()

    # the SSE stream where the project routes SseStream.as_asgi()
    url = (f"{broker.base_url}/rt/sse/?token=t&subscribe="
           + urllib.parse.quote(json.dumps([{"requestId": "s", "room": NEWS}])))
    async with stream(url) as s:
        assert (await s.next()).json()["type"] == "welcome"
        assert (await s.next()).json() == {"code": "success", "requestId": "s"}
        r = trigger(broker.base_url, "mounted-token", [NEWS], "sse", path="/rt/trigger")
        assert r.status_code == 202, r.text
        assert (await s.next()).json()["data"] == "sse"
    assert broker.get("/sse/").status_code == 404  # only where the project put it

    # an environment variable overrides the project's setting of the same name
    broker.restart(BROKER_TRIGGER_TOKEN="env-token")
    assert trigger(broker.base_url, "mounted-token", [NEWS], 0, path="/rt/trigger/"
                   ).status_code == 401
    assert trigger(broker.base_url, "env-token", [NEWS], 0, path="/rt/trigger/"
                   ).status_code == 202


async def test_the_host_project_hears_lifecycle_events_by_django_signal(
        broker_factory, auth_api, redis_server, unique, tmp_path):
    """No webhook: a receiver of ``broker.signals.lifecycle`` in the project's own app
    (tests/mountproject/notes/apps.py) hears online, joined, left and offline, once each."""
    log = tmp_path / "lifecycle.jsonl"
    auth_api.allow(token="t", body={"login_id": "bob", "allowed_rooms": [NEWS]})
    broker = broker_factory(
        argv=MOUNT_ARGV, ready_path="/rt/healthz", auth_api=auth_api, redis=redis_server,
        BROKER_KEY_PREFIX=f"mount-{unique}", DJANGO_SETTINGS_MODULE="tests.mountproject.settings",
        BROKER_LIFECYCLE_ROOMS=json.dumps([NEWS]), MOUNTPROJECT_LIFECYCLE_LOG=str(log))
    ws, welcome = await ws_open(broker.ws_url, token="t")
    assert welcome["is_authorized"] is True
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": "n"})
    assert await recv_json(ws) == {"code": "success"}
    await ws.close()

    def heard() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] \
            if log.exists() else []
    deadline = time.monotonic() + 10
    while len(heard()) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    events = heard()
    assert [(e["type"], e["login"]) for e in events] == [
        ("online", "bob"), ("joined", "bob"), ("left", "bob"), ("offline", "bob")], events
    assert events[1]["room"] == NEWS and len({e["id"] for e in events}) == 4
