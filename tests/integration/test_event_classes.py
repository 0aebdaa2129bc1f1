"""Event classes (broker.events): the mount project's ``notes/events.py`` declares
``NoteEvents``, found by the broker app's autodiscovery. A saved note reaches a real subscriber
with the declared fields only and the class's name; the operations it leaves out send nothing;
a subscriber filtering on the class's tags gets only the matching events. A wrong declaration
stops the process at start with ImproperlyConfigured; registering again connects nothing more.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.harness import ROOT, recv_json, recv_many, send_json, ws_open
from tests.integration.test_model_events import SETTINGS, mounted

RICH = ["combroker.v1"]

pytestmark = pytest.mark.timeout(90)


def django(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the mount project's settings."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    full.update(DJANGO_SETTINGS_MODULE=SETTINGS, **env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


async def test_a_saved_model_reaches_subscribers_as_its_event_class_declares(
        broker_factory, auth_api, redis_server, unique, tmp_path):
    board = f"b-{unique}"
    room = {"target": "note-events", "board": board}
    broker = mounted(broker_factory, auth_api, redis_server, f"events-{unique}", tmp_path,
                     "note-events")

    ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
    for rid, extra in (("all", {}), ("paid", {"filter": {"eq": ["status", "paid"]}})):
        await send_json(ws, {"type": "subscribe", "room": room, "requestId": rid, **extra})
        assert await recv_json(ws) == {"code": "success", "requestId": rid}

    async with httpx.AsyncClient(base_url=broker.base_url, trust_env=False) as http:
        async def call(path: str, body: dict) -> dict:
            r = await http.post(path, json=body)
            assert r.status_code in (200, 201), r.text
            return r.json()

        def event(rid: str, kind: str, pk: int, title: str, status: str) -> dict:
            return {"requestId": rid, "data": {
                "name": "note", "model": "notes.note", "event": kind, "pk": pk,
                "data": {"title": title, "status": status}}}  # declared fields: no board

        def seen(frame: dict) -> dict:
            assert frame["type"] == "publish" and frame["room"] == room, frame
            return {"requestId": frame["requestId"], "data": frame["data"]}

        pk = (await call("/notes/", {"board": board, "title": "first"}))["id"]
        # status "open": only the unfiltered subscription hears of it
        assert seen(await recv_json(ws)) == event("all", "created", pk, "first", "open")
        await call(f"/notes/{pk}/", {"status": "paid"})
        got = sorted((seen(f) for f in await recv_many(ws, 2)), key=lambda e: e["requestId"])
        assert got == [event("all", "updated", pk, "first", "paid"),
                       event("paid", "updated", pk, "first", "paid")]
        # "deleted" is not among its operations: nothing is sent for it
        await call(f"/notes/{pk}/delete/", {})
        second = (await call("/notes/", {"board": board, "title": "second",
                                         "status": "paid"}))["id"]
        got = sorted((seen(f) for f in await recv_many(ws, 2)), key=lambda e: e["requestId"])
        assert got == [event("all", "created", second, "second", "paid"),
                       event("paid", "created", second, "second", "paid")]
    await ws.close()


@pytest.mark.parametrize("bad, message", [
    ("field", "has no field 'colour'"),
    ("operation", "unknown: ['archived']"),
    ("model", "model must be a Django model class"),
    ("rooms", "rooms must be a list of rooms or a method"),
])
def test_a_wrong_declaration_stops_the_process_at_start(bad, message):
    done = django("import django; django.setup()", MOUNTPROJECT_BAD_EVENTS=bad)
    assert done.returncode != 0
    assert "django.core.exceptions.ImproperlyConfigured: event class " \
           "tests.mountproject.badevents.events." in done.stderr, done.stderr
    assert message in done.stderr, done.stderr


def test_registering_again_connects_nothing_more():
    done = django("""
import importlib
import django
django.setup()
from django.db.models.signals import post_delete, post_save
from django.utils.module_loading import autodiscover_modules
from broker import events
import tests.mountproject.notes.events as declared

before = (len(post_save.receivers), len(post_delete.receivers))
autodiscover_modules("events")
importlib.reload(declared)  # the class declared again, as a second autodiscovery in tests
assert len(events.register_all()) == 1
print(before == (len(post_save.receivers), len(post_delete.receivers)), before[0] >= 2)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
