"""A new user's first five minutes: clone the repository, ``./run.sh``, and it works.

The clone holds what is committed, nothing of the working tree. COMBROKER_VENV points run.sh at
the project's existing virtualenv so the test does not install anything; the broker still runs
the clone's code (run.sh runs ``manage.py`` from the clone, whose directory comes first on
``sys.path``).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.harness import ROOT, recv_json, send_json, trigger, ws_open

ALICE_ROOMS = [{"target": "chat", "customer": "1"}, {"target": "news"}]


async def test_clone_run_sh_subscribe_and_trigger(broker_factory, tmp_path):
    clone = tmp_path / "combroker"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=60)
    assert (clone / "run.sh").exists()

    # A fresh shell: no BROKER_* settings (BrokerProcess drops inherited ones), no
    # DJANGO_SETTINGS_MODULE, no trigger token of ours.
    broker = broker_factory(
        argv=["./run.sh", "--port", "{port}"], cwd=clone, name="run.sh",
        COMBROKER_VENV=str(ROOT / ".venv"), BROKER_TRIGGER_TOKEN=None,
        DJANGO_SETTINGS_MODULE=None)
    assert Path(os.readlink(f"/proc/{broker.pid}/cwd")) == clone

    found = re.search(r"trigger token\s+(\S+)", broker.wait_for_log("trigger token"))
    assert found, broker.log_tail()
    token = found.group(1)
    assert len(token) >= 16

    page = broker.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>combroker demo</title>" in page.text

    ws, welcome = await ws_open(broker.ws_url, token="alice")
    assert welcome == {"is_authorized": True, "allowed_rooms": ALICE_ROOMS}
    await send_json(ws, {"type": "subscribe", "room": {"target": "news"}, "requestId": 1})
    assert await recv_json(ws) == {"code": "success"}

    assert trigger(broker.base_url, "wrong", [{"target": "news"}], 1).status_code == 401
    r = trigger(broker.base_url, token, [{"target": "news"}], {"hello": "world"})
    assert r.status_code == 202, r.text
    assert await recv_json(ws) == {"type": "publish", "requestId": 1,
                                   "data": {"hello": "world"}}
    await ws.close()
