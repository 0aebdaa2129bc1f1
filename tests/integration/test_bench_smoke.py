"""Smoke test of the benchmark runner (bench/run, issue 6): the scenarios run end to end
against the broker and deliver every message they send. Tiny sizes, a few seconds; the
figures themselves are not asserted (they belong to docs/performance.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("redis-server") is None,
    reason="bench/run needs node and redis-server")


def _have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode == 0


@pytest.mark.timeout(180)
def test_b1_b1h_b2_run_and_deliver_everything(tmp_path: Path) -> None:
    if not (_have("uvloop") and _have("uvicorn") and _have("aiohttp")):
        pytest.skip("the [bench] extra is not installed (bench/run installs it)")
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "runner.py"), "--smoke", "--only", "B1,B1h,B2",
         "--targets", "uvicorn", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    b1 = res["B1"]["uvicorn"]["20"]
    assert "error" not in b1, b1
    assert b1["delivered_all"], b1
    assert b1["saturation_msgs_s"] > 0
    for variant in ("plain", "history"):  # B1h: B1 without, then with room history
        b1h = res["B1h"]["20"][variant]
        assert "error" not in b1h, b1h
        assert b1h["delivered_all"], b1h
    for n in ("20", "40"):
        b2 = res["B2"]["uvicorn"][n]
        assert "error" not in b2, b2
        assert b2["delivered_all"], b2
        assert b2["triggers_s"] > 0
    assert "B1" in proc.stdout and "Goals" in proc.stdout  # the table was printed


@pytest.mark.parametrize("args, named", [
    (["--targets", "hightemplar"], "valid targets: daphne, uvicorn"),
    (["--targets", "uvicorn,nosuch"], "nosuch"),
    (["--only", "B1,B9"], "valid scenarios: B1, B1h"),
])
def test_an_unknown_target_or_scenario_is_an_error(args: list[str], named: str) -> None:
    """A misspelt target or scenario used to run nothing and exit 0."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "runner.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr


@pytest.mark.timeout(180)
def test_the_python_limit_baselines_run_and_answer_everything(tmp_path: Path) -> None:
    """Issue 13's baselines beside the broker: raw (B1, with its latency at the broker's
    half-saturation rate; B4), rawauth (B3: one auth call per connection), rawtrigger (B7,
    single and batch form); the broker's batch form answers in full or is "unsupported"."""
    if not (_have("uvloop") and _have("uvicorn") and _have("aiohttp")):
        pytest.skip("the [bench] extra is not installed (bench/run installs it)")
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "runner.py"), "--smoke", "--only", "B1,B3,B4,B7",
         "--targets", "uvicorn,raw,rawauth,rawtrigger", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    raw = res["B1"]["raw"]["20"]
    assert "error" not in raw, raw
    assert raw["delivered_all"], raw
    broker_rate = res["B1"]["uvicorn"]["20"]["runs"][0]["latency_rate"]  # one run in --smoke
    assert raw["at_rate"]["rate"] == broker_rate, raw["at_rate"]
    assert raw["at_rate"]["p99_ms"] is not None, raw["at_rate"]
    storm = res["B3"]["rawauth"]
    assert storm["all_connected"], storm
    assert [(r["auth_requests"], r["auth_distinct_credentials"]) for r in storm["runs"]] == [
        (20, 20)] * len(storm["runs"]), storm  # one call per connection, a user each
    assert res["B4"]["raw"]["ok"] == 20, res["B4"]["raw"]
    ingest = res["B7"]["rawtrigger"]
    assert ingest["answered_all"] and ingest["trigger_req_s"] > 0, ingest
    assert ingest["batch"]["answered_all"] and ingest["batch"]["triggers_s"] > 0, ingest
    broker_batch = res["B7"]["uvicorn"]["batch"]
    assert broker_batch.get("unsupported") or broker_batch.get("answered_all"), broker_batch
    assert "Goals (issue 13)" in proc.stdout
