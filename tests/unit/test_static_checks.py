"""The house rules as tests: ruff is clean on the project's code, and the strict set (the pure
core -- rooms/ and broker/session.py -- the leaf modules, the composition root and the
commands) passes mypy --strict."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Checked with mypy --strict --follow-imports=silent. One path per line, sorted: a module that
# is rewritten or typed joins here.
STRICT = [
    "broker/apps.py",
    "broker/auth.py",
    "broker/codec.py",
    "broker/conf.py",
    "broker/connection.py",
    "broker/consumers.py",
    "broker/daphne_ext.py",
    "broker/delivery.py",
    "broker/errors.py",
    "broker/fanout/__init__.py",
    "broker/fanout/channel.py",
    "broker/fanout/hub.py",
    "broker/fanout/membership.py",
    "broker/fanout/receiver.py",
    "broker/fanout/router.py",
    "broker/fanout/running.py",
    "broker/fanout/settings.py",
    "broker/fanout/upkeep.py",
    "broker/heartbeat.py",
    "broker/history.py",
    "broker/httpguard.py",
    "broker/identity.py",
    "broker/logctx.py",
    "broker/metrics.py",
    "broker/model_events.py",
    "broker/outbox.py",
    "broker/publish.py",
    "broker/resume.py",
    "broker/routing.py",
    "broker/serve.py",
    "broker/session.py",
    "broker/shutdown.py",
    "broker/stores/__init__.py",
    "broker/stores/acks.py",
    "broker/stores/history.py",
    "broker/stores/redis.py",
    "broker/stores/registry.py",
    "broker/stores/resume.py",
    "broker/urls.py",
    "broker/views.py",
    "combroker",
    "rooms",
    "tcpgate/apps.py",
    "tcpgate/management",
    "tcpgate/server.py",
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_ruff_clean() -> None:
    result = run("ruff", "check", "--output-format", "concise", "rooms", "broker", "combroker",
                 "tcpgate")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_strict_set() -> None:
    assert STRICT == sorted(STRICT)
    result = run("mypy", "--strict", "--follow-imports=silent", *STRICT)
    assert result.returncode == 0, result.stdout + result.stderr
