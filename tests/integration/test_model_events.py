"""Django model events (issue 8): a project that mounts the broker (tests/mountproject) puts
its model's changes on the broker with ``broker.model_events.publish_model_events``.

Created, updated and deleted reach a subscribed WebSocket client; a transaction that rolls back
publishes nothing. The project runs under daphne with a SQLite database of this test's own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.harness import ROOT, expect_nothing, recv_json, send_json, ws_open

MOUNT_ARGV = ["{python}", "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}",
              "tests.mountproject.asgi:application"]
SETTINGS = "tests.mountproject.settings"


def migrate(db: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(DJANGO_SETTINGS_MODULE=SETTINGS, MOUNTPROJECT_DB=db)
    done = subprocess.run([sys.executable, "-m", "django", "migrate", "--run-syncdb", "-v", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def mounted(broker_factory, auth_api, redis_server, prefix: str, tmp_path, target: str):
    """The mount project under daphne on a migrated database of this test's own; token ``t``
    may subscribe to every board's room of ``target``."""
    auth_api.allow(token="t", body={"allowed_rooms": [{"target": target, "board": "*"}]})
    db = str(tmp_path / "notes.sqlite3")
    migrate(db)
    return broker_factory(
        argv=MOUNT_ARGV, ready_path="/rt/healthz", auth_api=auth_api, redis=redis_server,
        BROKER_KEY_PREFIX=prefix, DJANGO_SETTINGS_MODULE=SETTINGS,
        MOUNTPROJECT_DB=db, BROKER_TRIGGER_TOKEN=None)


async def test_model_events_reach_a_websocket_client(broker_factory, auth_api, redis_server,
                                                     unique, tmp_path):
    board = f"b-{unique}"
    room = {"target": "notes", "board": board}
    broker = mounted(broker_factory, auth_api, redis_server, f"notes-{unique}", tmp_path,
                     "notes")

    ws, welcome = await ws_open(broker.ws_url, token="t")
    assert welcome["is_authorized"] is True
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": "n"})
    assert await recv_json(ws) == {"code": "success"}

    async with httpx.AsyncClient(base_url=broker.base_url, trust_env=False) as http:
        async def call(path: str, body: dict) -> dict:
            r = await http.post(path, json=body)
            assert r.status_code in (200, 201), r.text
            return r.json()

        def event(kind: str, pk: int, title: str) -> dict:
            return {"type": "publish", "requestId": "n", "data": {
                "model": "notes.note", "event": kind, "pk": pk,
                "data": {"title": title, "board": board}}}

        pk = (await call("/notes/", {"board": board, "title": "first"}))["id"]
        assert await recv_json(ws) == event("created", pk, "first")
        await call(f"/notes/{pk}/", {"title": "renamed"})
        assert await recv_json(ws) == event("updated", pk, "renamed")
        # another board's note is another room: not ours
        await call("/notes/", {"board": board + "-other", "title": "elsewhere"})

        # a transaction that rolls back publishes nothing of what it did
        done = await call("/notes/rolled-back/", {"board": board, "title": "ghost"})
        assert done == {"rolled_back": True, "count": 1}
        await expect_nothing(ws, 0.5)

        await call(f"/notes/{pk}/delete/", {})
        assert await recv_json(ws) == event("deleted", pk, "renamed")
        await expect_nothing(ws)
    await ws.close()
