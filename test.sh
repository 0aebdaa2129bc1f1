#!/usr/bin/env bash
# Install what the tests need, then run them:   ./test.sh [pytest args...]
#
# Works on a fresh Debian machine with python3 (3.11+): creates .venv, installs the
# project with its [test] extra, makes sure redis-server is installed and a Redis
# answers on 127.0.0.1:6379, then runs pytest and exits with its status.
# (The integration tests start their own private redis-server processes on free ports;
# the binary must be installed for that. Likewise rabbitmq-server, for the AMQP source's.)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv

log() { printf '[test.sh] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only when needed: none present, or the install fails.
    if [ "$APT_UPDATED" -eq 0 ] && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
        as_root apt-get update -q && APT_UPDATED=1
    fi
    if ! as_root apt-get install -y -q "$@"; then
        if [ "$APT_UPDATED" -eq 1 ]; then
            return 1
        fi
        as_root apt-get update -q && APT_UPDATED=1
        as_root apt-get install -y -q "$@"
    fi
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV with $PYTHON"
        if ! "$PYTHON" -m venv "$VENV"; then
            rm -rf "$VENV"
            pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
            log "venv failed; installing python${pyver}-venv"
            apt_install "python${pyver}-venv" || apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    log "installing the project and its test dependencies"
    "$VENV/bin/python" -m pip install -q -e '.[test,bench]'
}

ensure_redis_server() {
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server"
        apt_install redis-server
    fi
}

redis_ping() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null || true)" = "PONG" ]
    else
        "$VENV/bin/python" - <<'EOF' 2>/dev/null
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
EOF
    fi
}

ensure_redis_running() {
    if redis_ping; then
        return 0
    fi
    log "no Redis on 127.0.0.1:6379; starting one"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        >/dev/null
    for _ in $(seq 1 50); do
        if redis_ping; then
            return 0
        fi
        sleep 0.1
    done
    log "Redis did not come up on 127.0.0.1:6379"
    return 1
}

ensure_browser() {
    # The browser tests (tests/browser) drive Debian's chromium with Python Playwright (from the
    # [test] extra; it launches /usr/bin/chromium and never downloads a browser), and run
    # broker/static/combroker/combroker.js under Node's test runner with the npm packages pinned in
    # tests/browser/package-lock.json. COMBROKER_BROWSER_TESTS=required makes a missing piece
    # fail those tests: an install that fails here is reported, never turned into a skip.
    export COMBROKER_BROWSER_TESTS=required
    if ! command -v chromium >/dev/null 2>&1; then
        log "installing chromium (Debian package) for the browser tests"
        if ! apt_install chromium; then
            log "ERROR: could not install chromium: the browser tests will fail"
            return 0
        fi
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        log "installing nodejs and npm (Debian packages) for the browser tests"
        if ! apt_install nodejs npm; then
            log "ERROR: could not install node/npm: the browser tests will fail"
            return 0
        fi
    fi
    local dir=tests/browser
    local stamp="$dir/node_modules/.combroker-npm-stamp"
    local want
    want="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "$dir/node_modules is up to date"
    else
        log "installing the Node packages of $dir (npm ci)"
        if (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2); then
            echo "$want" >"$stamp"
        else
            log "ERROR: npm ci failed in $dir: the browser tests will fail"
            return 0
        fi
    fi
}

ensure_rabbitmq_server() {
    # tests/integration/test_amqp_source.py starts its own rabbitmq-server (tests/rabbitmq.py)
    # on free ports, its own epmd port and node name; only the binary is needed.
    if ! command -v rabbitmq-server >/dev/null 2>&1 \
            && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        log "installing rabbitmq-server"
        apt_install rabbitmq-server
    fi
}

ensure_tools() {
    # nginx: the deploy/ site is checked with `nginx -t`; openssl: self-signed test certificates.
    local missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # postgresql: tests/integration/test_outbox_relay.py starts its own server (initdb +
    # postgres from /usr/lib/postgresql/<version>/bin, tests/postgres.py).
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
        # Debian starts the packaged nginx on port 80; the tests only need the binary.
        as_root sh -c 'nginx -s quit 2>/dev/null || true'
    fi
}

ensure_venv
ensure_redis_server
ensure_redis_running
ensure_tools
ensure_rabbitmq_server
ensure_browser

set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
exit "$status"
