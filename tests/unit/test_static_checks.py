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


def test_mypy_strict_on_the_pure_core() -> None:
    result = run("mypy", "--strict", "--follow-imports=silent",
                 "broker/codec.py",
                 "broker/connection.py",
                 "broker/delivery.py",
                 "broker/outbox.py",
                 "broker/session.py",
                 "rooms",
                 )
    assert result.returncode == 0, result.stdout + result.stderr
