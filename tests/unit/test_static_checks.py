"""The house rules as tests: ruff is clean on the project's code, and mypy --strict passes on
all of broker/, rooms/ and combroker/ and on the TCP gate (its Python client, tcpgate/client.py,
is not yet typed)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Checked with mypy --strict --follow-imports=silent. One path per line, sorted; a package
# listed whole covers every module added to it.
STRICT = [
    "broker",
    "combroker",
    "rooms",
    "tcpgate/apps.py",
    "tcpgate/management",
    "tcpgate/readers.py",
    "tcpgate/server.py",
    "tcpgate/transport.py",
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
