"""The layers of the house hold: ``lint-imports`` (import-linter) keeps every contract in
pyproject.toml's ``[tool.importlinter]`` -- rooms imports nothing of the project, broker never
imports tcpgate, the Python client (tcpgate.client) imports nothing of the server nor Django,
nothing imports the composition root (combroker), no import cycles inside a package,
transports above the serve loop above the driver above fan-out and stores above the core above
the leaves, and the TCP gate's own layers (management above server above transport above
readers). Run from the project root, so the checkout (not an installed copy) is what is read."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; " \
               "sys.exit(lint_imports_command())"


def test_import_contracts_kept() -> None:
    result = subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout
