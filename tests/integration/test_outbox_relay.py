"""The transactional outbox (issue 17): ``publish_on_commit`` and model events with
``outbox=True`` write triggers in the backend's transaction; ``manage.py runoutboxrelay``
publishes them, in order, at least once.

The host project (tests/mountproject) runs under daphne on a PostgreSQL database of this
test's own (a private server started here from Debian's ``postgresql``); the relays are real
``runoutboxrelay`` processes on the same database and Redis, killed with SIGKILL where a test
says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT, recv_json, recv_many, send_json, ws_open
from tests.postgres import PostgresServer

MOUNT_ARGV = ["{python}", "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}",
              "tests.mountproject.asgi:application"]
SETTINGS = "tests.mountproject.settings"
RICH = ["combroker.v1"]
TARGETS = ["outbox", "outbox-notes", "outbox-note-events"]
HISTORY = [{"room": {"target": t, "board": "*"}, "size": 1000, "ttl": 600} for t in TARGETS]
POLL = "0.2"


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer() as server:
        yield server


class Project:
    """This test's database, the host project on it, and its relays."""

    def __init__(self, postgres: PostgresServer, redis_url: str, prefix: str,
                 tmp_path: Path) -> None:
        self.postgres = postgres
        self.db = postgres.create_database(f"outbox_{prefix}")
        self.tmp_path = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        self.env.update(DJANGO_SETTINGS_MODULE=SETTINGS, MOUNTPROJECT_OUTBOX="1",
                        MOUNTPROJECT_PG_PORT=str(postgres.port), MOUNTPROJECT_PG_NAME=self.db,
                        BROKER_REDIS_URL=redis_url, BROKER_KEY_PREFIX=prefix,
                        BROKER_HISTORY=json.dumps(HISTORY))
        self.relays: list[tuple[subprocess.Popen, Path]] = []
        done = subprocess.run([sys.executable, "-m", "django", "migrate", "--run-syncdb",
                               "-v", "0"], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def rows(self) -> list[tuple]:
        return self.postgres.query(self.db, "SELECT id, state, reason FROM combroker_outbox "
                                            "ORDER BY id")

    def relay(self, poll: str = POLL, **env: str) -> tuple[subprocess.Popen, Path]:
        log = self.tmp_path / f"relay{len(self.relays) + 1}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "django", "runoutboxrelay", "--poll-interval", poll],
                cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.relays.append((proc, log))
        return proc, log

    def stop(self) -> None:
        for proc, _ in self.relays:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}"
                         for _, log in self.relays)


def wait_until(check, what: str, project: Project, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} not seen within {timeout}s\n{project.logs()}")


def active(log: Path) -> bool:
    return "outbox relay: active" in log.read_text(errors="replace")


@pytest.fixture
def project(postgres, redis_server, unique, tmp_path):
    p = Project(postgres, redis_server.url, f"ob{unique}", tmp_path)
    try:
        yield p
    finally:
        p.stop()


def mount(project, broker_factory, auth_api, redis):
    """The host project under daphne; token ``t`` may subscribe to every outbox room."""
    auth_api.allow(token="t", body={"allowed_rooms": [{"target": t, "board": "*"}
                                                      for t in TARGETS]})
    env = {k: v for k, v in project.env.items() if k.startswith(("BROKER_", "MOUNTPROJECT_"))}
    return broker_factory(argv=MOUNT_ARGV, ready_path="/rt/healthz", auth_api=auth_api,
                          redis=redis, DJANGO_SETTINGS_MODULE=SETTINGS,
                          BROKER_TRIGGER_TOKEN=None, **env)


@pytest.fixture
def host(project, broker_factory, auth_api, redis_server):
    return mount(project, broker_factory, auth_api, redis_server)


async def subscriber(host, *rooms: dict, **extra):
    ws, welcome = await ws_open(host.ws_url, token="t", subprotocols=RICH)
    assert welcome["is_authorized"] is True, welcome
    for n, room in enumerate(rooms):
        await send_json(ws, {"type": "subscribe", "room": room, "requestId": n, **extra})
        assert (await recv_json(ws))["code"] == "success"
    return ws


async def post(host, path: str, body: dict) -> dict:
    async with httpx.AsyncClient(base_url=host.base_url, trust_env=False, timeout=30) as http:
        r = await http.post(path, json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def board(unique: str, name: str = "b") -> dict:
    return {"target": "outbox", "board": f"{name}-{unique}"}


async def test_a_rolled_back_transaction_publishes_nothing(project, host, unique):
    room = board(unique)
    # polling every 60 s: only the commit's NOTIFY wakes it within the 10 s waits below
    _, log = project.relay(poll="60")
    wait_until(lambda: active(log), "the relay active", project)
    ws = await subscriber(host, room)
    done = await post(host, "/outbox/", {"rollback": True, "triggers": [
        {"rooms": [room], "data": "ghost"}, {"rooms": [room], "data": "ghost 2"}]})
    assert done["rolled_back"] is True
    ids = (await post(host, "/outbox/", {"triggers": [{"rooms": [room], "data": "real"}]}))["ids"]
    frame = await recv_json(ws, timeout=10)  # the first thing it gets is the committed one
    assert (frame["data"], frame["id"]) == ("real", ids[0])
    assert ids[0].startswith("outbox-")
    for n in range(3):
        ids = (await post(host, "/outbox/", {"triggers": [{"rooms": [room], "data": n}]}))["ids"]
        frame = await recv_json(ws, timeout=10)
        assert (frame["data"], frame["id"]) == (n, ids[0])
    wait_until(lambda: project.rows() == [], "the outbox emptied", project)
    await ws.close()


async def test_a_relay_killed_between_publish_and_mark_delivers_once(project, host, unique,
                                                                     tmp_path):
    room = board(unique)
    hold = tmp_path / "held"
    first, _ = project.relay(BROKER_OUTBOX_TEST_HOLD=str(hold))
    ws = await subscriber(host, room, since=0)  # a history subscription
    ids = (await post(host, "/outbox/", {"triggers": [
        {"rooms": [room], "data": "once", "history": True}]}))["ids"]
    # the relay published it and stopped before marking it done: it is delivered ...
    frame = await recv_json(ws, timeout=10)
    assert (frame["data"], frame["id"]) == ("once", ids[0])
    wait_until(hold.exists, "the relay holding after publishing", project)
    # ... and still in the outbox when the relay dies there
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert [state for _, state, _ in project.rows()] == ["pending"]

    project.relay()  # the next relay publishes it again, with the same trigger id
    wait_until(lambda: project.rows() == [], "the outbox emptied", project)
    after = (await post(host, "/outbox/", {"triggers": [
        {"rooms": [room], "data": "after", "history": True}]}))["ids"]
    frame = await recv_json(ws, timeout=10)  # no second copy before the next trigger
    assert (frame["data"], frame["id"]) == ("after", after[0])
    # and the room's history holds it once
    late = await subscriber(host, room, since=0)
    assert [(f["data"], f["id"]) for f in await recv_many(late, 2)] == [
        ("once", ids[0]), ("after", after[0])]
    for w in (ws, late):
        await w.close()


async def test_order_per_room_with_two_relays(project, host, unique):
    rooms = [board(unique, "x"), board(unique, "y")]
    a, a_log = project.relay()
    wait_until(lambda: active(a_log), "the first relay active", project)
    b, b_log = project.relay()
    wait_until(lambda: "outbox relay: standing by" in b_log.read_text(errors="replace"),
               "the second relay standing by", project)
    ws = await subscriber(host, *rooms)
    n = 60
    triggers = [{"rooms": [rooms[i % 2]], "data": i, "history": True} for i in range(n)]
    await post(host, "/outbox/", {"each": True, "triggers": triggers[:n // 2]})
    got = await recv_many(ws, 10, timeout=20)
    os.kill(a.pid, signal.SIGKILL)  # mid-burst: the standby takes over
    await post(host, "/outbox/", {"each": True, "triggers": triggers[n // 2:]})
    got += await recv_many(ws, n - 10, timeout=30)
    assert active(b_log)
    for r, room in enumerate(rooms):
        seen = [f["data"] for f in got if f["room"] == room]
        assert seen == list(range(r, n, 2)), seen  # in order, each once
    wait_until(lambda: project.rows() == [], "the outbox emptied", project)
    await ws.close()


async def test_model_events_through_the_outbox(project, host, unique):
    notes = {"target": "outbox-notes", "board": unique}
    classes = {"target": "outbox-note-events", "board": unique}
    ws = await subscriber(host, notes, classes)
    done = await post(host, "/notes/rolled-back/", {"board": unique, "title": "ghost"})
    assert done["rolled_back"] is True
    assert project.rows() == []  # its rows rolled back with it
    pk = (await post(host, "/notes/", {"board": unique, "title": "first"}))["id"]
    # in the outbox (one row per receiver) until a relay runs
    assert [state for _, state, _ in project.rows()] == ["pending", "pending"]
    project.relay()
    got = await recv_many(ws, 2, timeout=10)
    assert sorted((f["room"]["target"], f["data"]) for f in got) == [
        ("outbox-note-events", {"name": "note-outbox", "model": "notes.note",
                                "event": "created", "pk": pk, "data": {"title": "first"}}),
        ("outbox-notes", {"model": "notes.note", "event": "created", "pk": pk,
                          "data": {"title": "first"}}),
    ]
    await post(host, f"/notes/{pk}/", {"title": "renamed"})
    frame = await recv_json(ws, timeout=10)  # the class declares "created" only
    assert frame["data"]["event"] == "updated" and frame["room"] == notes
    wait_until(lambda: project.rows() == [], "the outbox emptied", project)
    await ws.close()


async def test_a_bad_row_is_parked_and_the_queue_goes_on(project, host, unique):
    room = board(unique)
    ws = await subscriber(host, room)
    # a row no publish_on_commit would write (rooms missing), then an unreadable one
    project.postgres.query(project.db, "INSERT INTO combroker_outbox (trigger, stamp, state, "
                           "reason) VALUES (%s, 1, 'pending', ''), (%s, 1, 'pending', '')",
                           '{"data": 1}', "{not json")
    ids = (await post(host, "/outbox/", {"triggers": [{"rooms": [room], "data": "next"}]}))["ids"]
    project.relay()
    frame = await recv_json(ws, timeout=10)
    assert (frame["data"], frame["id"]) == ("next", ids[0])
    rows = wait_until(lambda: len(project.rows()) == 2 and project.rows(), "two parked rows",
                      project)
    assert [(state, reason.split(":")[0]) for _, state, reason in rows] == [
        ("failed", "outbox-refused"), ("failed", "outbox-unreadable")]
    assert rows[0][2] == "outbox-refused: rooms missing"
    await ws.close()


async def test_rows_wait_while_redis_is_down(postgres, fresh_redis, broker_factory, auth_api,
                                             unique, tmp_path):
    """Nothing accepted is lost: a relay that cannot publish keeps the rows, and publishes them
    once Redis is back."""
    p = Project(postgres, fresh_redis.url, f"ob{unique}", tmp_path)
    try:
        host = mount(p, broker_factory, auth_api, fresh_redis)
        room = board(unique)
        _, log = p.relay()
        wait_until(lambda: active(log), "the relay active", p)
        fresh_redis.stop()
        ids = (await post(host, "/outbox/", {"triggers": [
            {"rooms": [room], "data": n, "history": True} for n in range(3)]}))["ids"]
        wait_until(lambda: "not published" in log.read_text(errors="replace"),
                   "the relay failing to publish", p, timeout=60)
        assert [state for _, state, _ in p.rows()] == ["pending"] * 3  # nothing lost
        fresh_redis.restart()
        wait_until(lambda: p.rows() == [], "the outbox emptied", p, timeout=30)
        # published once Redis was back: a broker process started now finds them recorded
        later = broker_factory(auth_api=auth_api, redis=fresh_redis,
                               BROKER_KEY_PREFIX=p.env["BROKER_KEY_PREFIX"],
                               BROKER_HISTORY=p.env["BROKER_HISTORY"])
        ws = await subscriber(later, room, since=0)
        assert [(f["data"], f["id"]) for f in await recv_many(ws, 3)] == list(
            zip(range(3), ids))
        await ws.close()
    finally:
        p.stop()
