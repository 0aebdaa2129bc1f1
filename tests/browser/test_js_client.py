"""Runs the Node unit tests of broker/static/combroker/combroker.js (tests/browser/js/*.test.mjs,
``node --test``) against a real broker (``manage.py runbroker``, demo users).

They need Node 20+ and ``npm ci`` in tests/browser (the ``ws`` package); ./test.sh does both.
The Node output is written to test-artifacts/<test name>/node-test.log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.browser.conftest import BROWSER_DIR, missing
from tests.harness import BrokerProcess

pytestmark = pytest.mark.timeout(180)


def test_combroker_js_under_node(demo_broker: BrokerProcess, trigger_token: str,
                                 artifacts_dir: Path) -> None:
    node = shutil.which("node")
    if node is None:
        missing("node is not installed")
    if not (BROWSER_DIR / "node_modules" / "ws" / "package.json").exists():
        missing("tests/browser/node_modules is missing: run npm ci in tests/browser (./test.sh does)")
    files = sorted(str(p.relative_to(BROWSER_DIR)) for p in (BROWSER_DIR / "js").glob("*.test.mjs"))
    assert files, "no tests/browser/js/*.test.mjs"
    env = {**os.environ, "COMBROKER_WS_URL": demo_broker.ws_url,
           "COMBROKER_BASE_URL": demo_broker.base_url, "COMBROKER_TRIGGER_TOKEN": trigger_token,
           "NO_COLOR": "1"}
    proc = subprocess.run(
        [str(node), "--test", "--test-timeout=60000", "--test-reporter=spec", *files],
        cwd=BROWSER_DIR, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=150)
    output = proc.stdout + proc.stderr
    (artifacts_dir / "node-test.log").write_text(output)
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{output[-8000:]}"
    assert "ℹ fail 0" in output and "ℹ pass 0" not in output, output[-3000:]
