#!/usr/bin/env bash
# Run the broker with its embedded defaults:   ./run.sh [--host H] [--port P]
#
# In-memory channel layer, built-in demo auth API, demo page at http://127.0.0.1:8000/.
# Creates .venv and installs the project on first use. Set BROKER_REDIS_URL, BROKER_AUTH_URL,
# BROKER_TRIGGER_TOKEN (and any BROKER_* setting, see docs/operations.md) to change the defaults.
# COMBROKER_VENV points at another virtualenv to use instead of ./.venv.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${COMBROKER_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# what runbroker runs: the project, Channels and uvicorn with its loop, parser and WebSockets
if ! "$VENV/bin/python" -c 'import broker, channels, uvicorn, uvloop, httptools, websockets' \
        >/dev/null 2>&1 \
   || [ -z "${COMBROKER_VENV:-}" ]; then
    "$VENV/bin/python" -m pip install -q -e . >&2
fi
exec "$VENV/bin/python" manage.py runbroker "$@"
