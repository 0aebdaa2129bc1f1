"""The house rules as tests: ruff is clean on the project's code, and the pure core (rooms/ and
broker/session.py) passes mypy --strict."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_ruff_clean() -> None:
    result = run("ruff", "check", "--output-format", "concise", "rooms", "broker", "combroker",
                 "tcpgate")
    assert result.returncode == 0, result.stdout + result.stderr


# One path per line, sorted.
STRICT = [
    "broker/fanout/__init__.py",
    "broker/fanout/channel.py",
    "broker/fanout/hub.py",
    "broker/fanout/membership.py",
    "broker/fanout/receiver.py",
    "broker/fanout/router.py",
    "broker/fanout/running.py",
    "broker/fanout/settings.py",
    "broker/fanout/upkeep.py",
    "broker/hub.py",
    "broker/publish.py",
    "broker/session.py",
    "broker/shutdown.py",
    "broker/stores/__init__.py",
    "broker/stores/acks.py",
    "broker/stores/history.py",
    "broker/stores/redis.py",
    "broker/stores/registry.py",
    "broker/stores/resume.py",
    "broker/views.py",
    "rooms",
]


def test_mypy_strict_on_the_pure_core() -> None:
    result = run("mypy", "--strict", "--follow-imports=silent", *STRICT)
    assert result.returncode == 0, result.stdout + result.stderr
