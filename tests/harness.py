"""Test harness for combroker integration tests.

Plain Python, no Django import: integration tests talk to real subprocesses
(the broker under uvicorn or daphne, a private redis-server) and real sockets only.

Contents
--------
- ``free_port()``
- ``RedisServer``  -- a private redis-server on a free port (stop/restart/freeze for outage tests)
- ``AuthAPI``      -- a real threaded HTTP server standing in for ``GET /api/bootstrap/``
- ``BrokerProcess``-- the broker as a subprocess: the production uvicorn command
  (``UVICORN_ARGV``) by default, daphne (``DAPHNE_ARGV``) with ``server="daphne"``
  (``metric`` / ``until_metric``: a series of its ``GET /metrics``, read or waited for)
- ``SERVERS``      -- the ASGI servers the broker supports, to parametrize a test over
- WebSocket helpers on ``websockets.asyncio.client``: ``ws_connect``, ``ws_open``,
  ``recv_json``, ``recv_text``, ``recv_frame``, ``recv_until``, ``expect_nothing``,
  ``send_json``, ``close_code``
- ``trigger`` / ``atrigger`` -- ``POST /trigger``
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.cookies
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import httpx

# Project root: tests/harness.py -> tests -> root
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_ROOT = ROOT / "test-artifacts"

LOCALHOST = "127.0.0.1"

__all__ = [
    "ROOT",
    "ARTIFACTS_ROOT",
    "free_port",
    "wait_for_port",
    "RedisServer",
    "RedisServerError",
    "AuthAPI",
    "Recorded",
    "Reply",
    "CIDict",
    "BrokerProcess",
    "BrokerStartError",
    "UVICORN_ARGV",
    "DAPHNE_ARGV",
    "SERVERS",
    "ws_connect",
    "ws_open",
    "recv_frame",
    "recv_json",
    "recv_text",
    "recv_until",
    "recv_many",
    "expect_nothing",
    "send_json",
    "close_code",
    "WSClosedError",
    "trigger",
    "atrigger",
]


# ---------------------------------------------------------------------------
# Process bookkeeping: make sure nothing we spawned outlives the test run.
# ---------------------------------------------------------------------------

_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - safety net
    for obj in list(_LIVE):
        with contextlib.suppress(Exception):
            obj._hard_kill()


def _kill_proc(proc: subprocess.Popen, *, group: bool, timeout: float) -> int | None:
    """SIGTERM ``proc`` (its process group if ``group``), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    _sigkill(proc, group=group)
    return proc.wait(10)


def _sigkill(proc: subprocess.Popen, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


def _tail(path: Path | None, limit: int = 4000) -> str:
    if path is None or not path.exists():
        return ""
    data = path.read_bytes()
    text = data[-limit:].decode("utf-8", "replace")
    if len(data) > limit:
        text = "...\n" + text
    return text


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = LOCALHOST, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = LOCALHOST, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1, in its own temp dir, persisting nothing.

    >>> with RedisServer() as r:
    ...     r.url            # redis://127.0.0.1:PORT/0
    ...     r.stop(); r.ping()   # False
    ...     r.restart(); r.ping()  # True (same port, empty data)
    """

    def __init__(self, port: int | None = None, *, binary: str | None = None,
                 extra_args: Iterable[str] = (), start_timeout: float = 10.0) -> None:
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="combroker-redis-"))
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self._frozen = False

    # -- properties -------------------------------------------------------
    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def url_db(self, db: int) -> str:
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle --------------------------------------------------------
    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--save", "",
            "--appendonly", "no",
            "--port", str(self.port),
            "--bind", LOCALHOST,
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--logfile", "",
            *self.extra_args,
        ]

    def start(self) -> "RedisServer":
        if self.running:
            return self
        if shutil.which(self.binary) is None and not Path(self.binary).exists():
            raise RedisServerError(
                f"redis-server binary not found ({self.binary!r}); run ./test.sh to install it"
            )
        attempts = 1 if self._fixed_port else 3
        last_err = ""
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- start on port {self.port} ---\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self._argv(), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True,
                )
            _LIVE.add(self)
            try:
                self._wait_ready()
                self._frozen = False
                return self
            except RedisServerError as exc:
                last_err = str(exc)
                self._hard_kill()
        raise RedisServerError(last_err)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {self.proc.returncode} on port {self.port}:\n"
                    f"{_tail(self.log_path)}"
                )
            if self.ping(timeout=0.5):
                return
            time.sleep(0.05)
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{self.start_timeout}s:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Really stop the server and wait for the process to be gone."""
        if self.proc is None:
            return
        if self._frozen:
            self.thaw()
        _kill_proc(self.proc, group=False, timeout=timeout)
        # wait until the port is released so that restart() can bind it again
        deadline = time.monotonic() + 5
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> "RedisServer":
        """Stop (if running) and start again on the same port. Data is gone."""
        self.stop()
        fixed = self._fixed_port
        self._fixed_port = True
        try:
            return self.start()
        finally:
            self._fixed_port = fixed

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (a hung Redis)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self._frozen = False

    def _hard_kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(5)

    def close(self) -> None:
        """Stop and remove the temp dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- talking to it ----------------------------------------------------
    def command(self, *args: str | bytes | int, timeout: float = 2.0) -> bytes:
        """Send one command over a raw socket; return the raw first reply line(s)."""
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        payload = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
        )
        with socket.create_connection((LOCALHOST, self.port), timeout=timeout) as s:
            s.sendall(payload)
            return s.recv(65536)

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the server answers PING with PONG within ``timeout``."""
        try:
            return self.command("PING", timeout=timeout).startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RedisServerError(f"FLUSHALL failed: {reply!r}")

    def client(self, **kw: Any):
        """A sync ``redis.Redis`` client (decode_responses=True unless overridden)."""
        import redis  # local import: only tests that need it pay for it

        kw.setdefault("decode_responses", True)
        return redis.Redis.from_url(self.url, **kw)

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} running={self.running}>"


# ---------------------------------------------------------------------------
# Auth API stub
# ---------------------------------------------------------------------------


class CIDict(dict):
    """A dict with lower-cased string keys; lookups are case-insensitive."""

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        super().__init__()
        if isinstance(items, Mapping):
            items = items.items()
        for k, v in items:
            self[k] = v

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def update(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def setdefault(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().setdefault(key.lower(), default)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        return super().pop(key.lower(), *default)


@dataclass
class Recorded:
    """One request received by ``AuthAPI``."""

    method: str
    path: str                      # without the query string
    raw_query: str                 # the query string, undecoded
    query: dict[str, str]          # decoded; first value of each key
    headers: CIDict                # lower-cased keys
    cookies: dict[str, str]
    body: bytes
    client: tuple[str, int]
    connection_id: int             # one number per TCP connection (to check pooling)
    time: float = field(default_factory=time.monotonic)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """How ``AuthAPI`` answers. ``body``: dict/list -> JSON, bytes/str -> sent raw."""

    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        if self.body is None:
            return b"", "text/plain"
        return json.dumps(self.body).encode(), "application/json"


def _as_reply(value: Reply | tuple | int) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, int):
        return Reply(value, b"")
    if isinstance(value, tuple):
        return Reply(*value)
    raise TypeError(f"cannot make a Reply from {value!r}")


class _AuthHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    api: "AuthAPI"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients (the broker) may hang up mid-answer, e.g. on their auth timeout.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)  # pragma: no cover


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection pooling is observable
    server: _AuthHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.api._new_connection(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.api._drop_connection(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def _handle(self) -> None:
        api = self.server.api
        api._enter()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parsed = urllib.parse.urlsplit(self.path)
            headers = CIDict()
            for k, v in self.headers.items():
                if k.lower() in headers:
                    sep = "; " if k.lower() == "cookie" else ", "
                    headers[k] = headers[k] + sep + v
                else:
                    headers[k] = v
            cookies: dict[str, str] = {}
            if "cookie" in headers:
                jar = http.cookies.SimpleCookie()
                with contextlib.suppress(http.cookies.CookieError):
                    jar.load(headers["cookie"])
                cookies = {k: m.value for k, m in jar.items()}
                if not cookies:  # fall back to a lenient split
                    for part in headers["cookie"].split(";"):
                        if "=" in part:
                            k, v = part.split("=", 1)
                            cookies[k.strip()] = v.strip()
            rec = Recorded(
                method=self.command,
                path=parsed.path,
                raw_query=parsed.query,
                query={k: v[0] for k, v in urllib.parse.parse_qs(
                    parsed.query, keep_blank_values=True).items()},
                headers=headers,
                cookies=cookies,
                body=body,
                client=self.client_address,
                connection_id=self.connection_id,
            )
            api._record(rec)
            reply = api._decide(rec)
            if reply.delay > 0:
                api._wait(reply.delay)
            api._hold_if_paused()
            if api._stopping.is_set():
                # the stub is going away: hang up without an answer
                self.close_connection = True
                return
            payload, ctype = reply.encode()
            self.send_response(reply.status)
            hdrs = CIDict({"Content-Type": ctype})
            hdrs.update(reply.headers)
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
        except (ConnectionError, OSError):
            self.close_connection = True
        finally:
            api._leave()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class AuthAPI:
    """A real HTTP server standing in for the project's ``GET /api/bootstrap/``.

    Rules (checked in this order; the first that matches answers):
      1. ``allow(token=...)`` / ``allow(authorization=...)``: exact ``Authorization`` header
         value (``Token <token>`` for ``token=``),
      2. ``allow_cookie(sessionid=...)``: the ``sessionid`` cookie,
      3. ``when(predicate, ...)``: any callable ``Recorded -> bool``, in the order added,
      4. ``default`` (``(status, body, delay)`` tuple or a ``Reply``), 403 ``{"detail": "no"}``.
    Requests to another path than ``/api/bootstrap/`` get 404 (still recorded).

    Bodies: dict/list -> JSON; ``bytes``/``str`` are sent raw (for malformed replies).
    """

    PATH = "/api/bootstrap/"

    def __init__(self, port: int | None = None) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections_opened = 0
        self._conn_ids = itertools.count(1)
        self._open_socks: set[socket.socket] = set()
        self._by_auth: dict[str, Reply] = {}
        self._by_cookie: dict[str, Reply] = {}
        self._predicates: list[tuple[Callable[[Recorded], bool], Reply]] = []
        self._default: Reply = Reply(403, {"detail": "no"})
        self._server = _AuthHTTPServer((LOCALHOST, port or 0), _AuthHandler)
        self._server.api = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"AuthAPI:{self.port}", daemon=True,
        )
        self._thread.start()
        _LIVE.add(self)

    # -- addresses --------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.PATH

    # -- rules ------------------------------------------------------------
    def allow(self, token: str | None = None, body: Any = None, status: int = 200,
              delay: float = 0.0, *, authorization: str | None = None,
              headers: Mapping[str, str] | None = None) -> "AuthAPI":
        """Answer requests whose Authorization is ``Token <token>`` (or exactly
        ``authorization``) with ``status``/``body`` after ``delay`` seconds.
        ``body`` defaults to ``{"allowed_rooms": []}``."""
        if (token is None) == (authorization is None):
            raise ValueError("give exactly one of token= or authorization=")
        key = authorization if authorization is not None else f"Token {token}"
        reply = Reply(status, {"allowed_rooms": []} if body is None else body, delay,
                      dict(headers or {}))
        with self._lock:
            self._by_auth[key] = reply
        return self

    def allow_cookie(self, sessionid: str, body: Any = None, status: int = 200,
                     delay: float = 0.0, *, headers: Mapping[str, str] | None = None
                     ) -> "AuthAPI":
        """Answer requests carrying the cookie ``sessionid=<sessionid>``."""
        reply = Reply(status, {"allowed_rooms": []} if body is None else body, delay,
                      dict(headers or {}))
        with self._lock:
            self._by_cookie[sessionid] = reply
        return self

    def when(self, predicate: Callable[[Recorded], bool], body: Any = None, status: int = 200,
             delay: float = 0.0, *, headers: Mapping[str, str] | None = None) -> "AuthAPI":
        """Answer requests for which ``predicate(recorded)`` is true."""
        reply = Reply(status, {"allowed_rooms": []} if body is None else body, delay,
                      dict(headers or {}))
        with self._lock:
            self._predicates.append((predicate, reply))
        return self

    def deny(self, token: str, status: int = 403, body: Any = None) -> "AuthAPI":
        return self.allow(token=token, status=status,
                          body={"detail": "no"} if body is None else body)

    def clear_rules(self) -> None:
        with self._lock:
            self._by_auth.clear()
            self._by_cookie.clear()
            self._predicates.clear()

    @property
    def default(self) -> Reply:
        return self._default

    @default.setter
    def default(self, value: Reply | tuple | int) -> None:
        """``api.default = (500, b"<html>oops", 0.0)`` or ``(503, {"x": 1})`` or ``Reply(...)``."""
        self._default = _as_reply(value)

    # -- pausing (deterministic concurrency tests) -------------------------
    def pause(self) -> None:
        """Hold every answer (after its delay) until ``resume()``."""
        self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    # -- recording --------------------------------------------------------
    def clear(self) -> None:
        """Forget recorded requests and reset the counters (not the rules)."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = self.in_flight
            self.connections_opened = 0

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def last(self) -> Recorded:
        with self._lock:
            if not self.requests:
                raise AssertionError("AuthAPI received no request")
            return self.requests[-1]

    def wait_for_requests(self, n: int = 1, timeout: float = 5.0) -> list[Recorded]:
        """Block until at least ``n`` requests were received; return a copy of the list."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.requests) >= n, timeout)
            if not ok:
                raise AssertionError(
                    f"AuthAPI got {len(self.requests)} request(s), expected >= {n} "
                    f"within {timeout}s")
            return list(self.requests)

    async def await_requests(self, n: int = 1, timeout: float = 5.0) -> list[Recorded]:
        """Async version of ``wait_for_requests`` (does not block the event loop)."""
        return await asyncio.to_thread(self.wait_for_requests, n, timeout)

    def wait_for_in_flight(self, n: int, timeout: float = 5.0) -> None:
        """Block until exactly ``n`` requests are being served at once."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_flight == n, timeout):
                raise AssertionError(
                    f"AuthAPI in_flight={self.in_flight}, expected {n} within {timeout}s")

    # -- internals (called from handler threads) ---------------------------
    def _new_connection(self, sock: socket.socket) -> int:
        with self._lock:
            self.connections_opened += 1
            self._open_socks.add(sock)
            return next(self._conn_ids)

    def _drop_connection(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_socks.discard(sock)

    def _enter(self) -> None:
        with self._cond:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()

    def _leave(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def _record(self, rec: Recorded) -> None:
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()

    def _decide(self, rec: Recorded) -> Reply:
        with self._lock:
            if rec.path.rstrip("/") != self.PATH.rstrip("/"):
                return Reply(404, {"detail": "not found"})
            auth = rec.headers.get("authorization")
            if auth is not None and auth in self._by_auth:
                return self._by_auth[auth]
            sid = rec.cookies.get("sessionid")
            if sid is not None and sid in self._by_cookie:
                return self._by_cookie[sid]
            predicates = list(self._predicates)
            default = self._default
        for pred, reply in predicates:
            if pred(rec):
                return reply
        return default

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _hold_if_paused(self) -> None:
        while not self._unpaused.wait(0.05):
            if self._stopping.is_set():
                return

    # -- lifecycle --------------------------------------------------------
    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._unpaused.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            socks = list(self._open_socks)
        for s in socks:  # hang up keep-alive connections so clients notice
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    _hard_kill = stop

    def __enter__(self) -> "AuthAPI":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<AuthAPI {self.url} requests={len(self.requests)}>"


# ---------------------------------------------------------------------------
# Broker process
# ---------------------------------------------------------------------------


class BrokerStartError(RuntimeError):
    pass


# The production command (README "Production", docs/operations.md "Processes"), with two
# differences, both because the tests' clients talk to the broker directly, with no proxy:
# - ``--no-proxy-headers`` for ``--proxy-headers`` (which is uvicorn's default anyway): uvicorn
#   trusts X-Forwarded-For from 127.0.0.1, the address of every test client, so a client could
#   claim any address (production has nginx there, which sets the header itself);
# - ``--no-access-log`` is kept: a line per request (every ``/metrics`` poll) would crowd the
#   broker's own lines out of the output tail a failing test shows. A test of the access log
#   adds ``--access-log`` (the last of two flags wins).
UVICORN_ARGV = ["{python}", "-m", "uvicorn", "combroker.asgi:application",
                "--host", LOCALHOST, "--port", "{port}", "--loop", "uvloop", "--http", "httptools",
                "--ws", "broker.wsedge:WebSocketEdge", "--ws-per-message-deflate", "false",
                "--no-proxy-headers", "--no-access-log",
                "--ws-max-size", "1048576", "--timeout-graceful-shutdown", "5",
                "--timeout-keep-alive", "30"]
# daphne as a team that mounts the broker into its Channels deployment runs it (no
# --proxy-headers, for the reason above); broker.daphne_ext patches it on import.
DAPHNE_ARGV = ["{python}", "-m", "daphne", "-b", LOCALHOST, "-p", "{port}",
               "combroker.asgi:application"]
# The servers the broker supports: ``@pytest.mark.parametrize("server", SERVERS)`` and
# ``BrokerProcess(server=server)`` (or ``broker_factory(server=server)``).
SERVERS = {"uvicorn": UVICORN_ARGV, "daphne": DAPHNE_ARGV}


def _broker_env(overrides: Mapping[str, Any]) -> dict[str, str]:
    # Start from the caller's environment, minus inherited BROKER_* settings, so a
    # developer's shell (say BROKER_REDIS_URL) never leaks into a test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["DJANGO_SETTINGS_MODULE"] = "combroker.settings"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    no_proxy = ",".join(x for x in (env.get("NO_PROXY", ""), "127.0.0.1,localhost") if x)
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        elif isinstance(v, bool):
            env[k] = "true" if v else "false"
        elif isinstance(v, (list, dict)):
            env[k] = json.dumps(v)
        else:
            env[k] = str(v)
    return env


class BrokerProcess:
    """The broker as a subprocess, under the production server by default:
    ``uvicorn combroker.asgi:application --host 127.0.0.1 --port PORT ...`` (``UVICORN_ARGV``).

    ``server``: ``"uvicorn"`` (the default) or ``"daphne"`` (``DAPHNE_ARGV``), a key of
    ``SERVERS``. ``argv`` replaces the command altogether (``runbroker``, ``runtcpgate``, a
    server with other flags); the strings ``{port}`` and ``{python}`` in it are substituted.
    ``env``: settings as env vars (``BROKER_REDIS_URL``, ``BROKER_AUTH_URL``, ...).
    A value of ``None`` removes the variable; bools become "true"/"false", lists/dicts JSON.
    Inherited ``BROKER_*`` variables are dropped.
    Ready when the port is open and ``GET /healthz`` gives any HTTP answer
    (``ready_path=None``: port open is enough).
    """

    DEFAULT_SERVER = "uvicorn"

    def __init__(self, env: Mapping[str, Any] | None = None, *, port: int | None = None,
                 server: str | None = None, argv: list[str] | None = None,
                 cwd: str | Path | None = None, start_timeout: float = 20.0,
                 ready_path: str | None = "/healthz", start: bool = True,
                 name: str = "broker") -> None:
        if server is not None and argv is not None:
            raise TypeError("pass server= or argv=, not both")
        if server is not None and server not in SERVERS:
            raise ValueError(f"unknown server {server!r}: one of {', '.join(SERVERS)}")
        self.env_overrides: dict[str, Any] = dict(env or {})
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        if argv is None:
            server = server or self.DEFAULT_SERVER
            argv = SERVERS[server]
        self.server = server  # None when ``argv`` gave the command
        self.argv_template = list(argv)
        self.cwd = Path(cwd) if cwd else ROOT
        self.start_timeout = start_timeout
        self.ready_path = ready_path
        self.name = name
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f"combroker-{name}-"))
        self.log_path = self._tmpdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        if start:
            self.start()

    # -- addresses --------------------------------------------------------
    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOCALHOST}:{self.port}/ws/"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def argv(self) -> list[str]:
        return [a.replace("{port}", str(self.port)).replace("{python}", sys.executable)
                for a in self.argv_template]

    @property
    def env(self) -> dict[str, str]:
        return _broker_env(self.env_overrides)

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "BrokerProcess":
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            if port_open(self.port):
                if self._fixed_port:
                    raise BrokerStartError(f"port {self.port} is already in use")
                continue
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn()
            try:
                self._wait_ready()
                return self
            except BrokerStartError as exc:
                new_output = self.log_path.read_bytes()[offset:]
                if (not self._fixed_port and attempt + 1 < attempts
                        and b"address already in use" in new_output.lower()):
                    continue  # lost a port race (daphne: "Address", uvicorn: "address")
                raise exc
        raise BrokerStartError(f"{self.name}: could not find a free port")

    def _spawn(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- {self.name} start #{self.starts} on port {self.port}: "
                      f"{' '.join(self.argv)} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        last = "port not open"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerStartError(
                    f"{self.name} exited early with code {self.proc.returncode} "
                    f"(port {self.port}). Output tail:\n{self.log_tail()}")
            if port_open(self.port):
                if self.ready_path is None:
                    return
                try:
                    httpx.get(self.base_url + self.ready_path, timeout=2.0, trust_env=False)
                    return  # any HTTP answer (200, or 503 with Redis down) means it serves
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
        self._hard_kill()
        raise BrokerStartError(
            f"{self.name} not ready on port {self.port} after {self.start_timeout}s "
            f"({last}). Output tail:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        return _kill_proc(self.proc, group=True, timeout=timeout)

    def terminate(self) -> None:
        """Send SIGTERM and return at once (to test graceful shutdown while it runs)."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL at once (a crash)."""
        if self.proc is None:
            return
        _sigkill(self.proc, group=True)
        self.proc.wait(10)

    _hard_kill = kill

    def restart(self, *, kill: bool = False, **env: Any) -> "BrokerProcess":
        """Stop (or kill) and start again on the same port, optionally changing env."""
        self.kill() if kill else self.stop()
        self.env_overrides.update(env)
        fixed = self._fixed_port
        self._fixed_port = True
        try:
            deadline = time.monotonic() + 5
            while port_open(self.port) and time.monotonic() < deadline:
                time.sleep(0.05)
            return self.start()
        finally:
            self._fixed_port = fixed

    # -- output -----------------------------------------------------------
    def log(self) -> str:
        """Everything the process printed (stdout + stderr), across restarts."""
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def log_tail(self, limit: int = 4000) -> str:
        return _tail(self.log_path, limit)

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log()
            if text in out:
                return out
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in {self.name} log after {timeout}s:\n"
                             f"{self.log_tail()}")

    # -- HTTP convenience ---------------------------------------------------
    def get(self, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("timeout", 10.0)
        return httpx.get(self.base_url + path, trust_env=False, **kw)

    def metric(self, name: str) -> float | None:
        """The value of the unlabelled series ``name`` in ``GET /metrics`` (None: absent)."""
        found = re.search(rf"^{re.escape(name)} (\S+)$", self.get("/metrics").text, re.M)
        return None if found is None else float(found.group(1))

    async def until_metric(self, name: str, value: float, timeout: float = 5.0) -> None:
        """Wait until ``GET /metrics`` shows ``name`` at ``value``: the observable end of
        something the process does on its own time. ``combroker_connections`` back to 0, say,
        means every connection has finished closing (the driver saves its resume state
        before the hub detaches it, which is what sets the gauge)."""
        deadline = time.monotonic() + timeout
        while True:
            last = await asyncio.to_thread(self.metric, name)
            if last == value:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {name} is {last}, not {value}, after "
                                     f"{timeout}s")
            await asyncio.sleep(0.02)

    def trigger(self, rooms: Any, data: Any = None, token: str | None = None,
                **kw: Any) -> httpx.Response:
        if token is None:
            token = self.env_overrides.get("BROKER_TRIGGER_TOKEN")
        return trigger(self.base_url, token, rooms, data, **kw)

    async def atrigger(self, rooms: Any, data: Any = None, token: str | None = None,
                       **kw: Any) -> httpx.Response:
        if token is None:
            token = self.env_overrides.get("BROKER_TRIGGER_TOKEN")
        return await atrigger(self.base_url, token, rooms, data, **kw)

    def __enter__(self) -> "BrokerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BrokerProcess {self.name} {self.base_url} running={self.running}>"


# ---------------------------------------------------------------------------
# WebSocket helpers
# ---------------------------------------------------------------------------

from websockets.asyncio.client import ClientConnection, connect as _ws_connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402


class WSClosedError(AssertionError):
    """The connection closed while a frame was expected."""

    def __init__(self, code: int | None, reason: str, waited_for: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed (code={code}, reason={reason!r}) "
                         f"while waiting for {waited_for}")


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    q.extend((k, v) for k, v in params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def _cookie_header(cookie: str | Mapping[str, str]) -> str:
    if isinstance(cookie, str):
        return cookie
    return "; ".join(f"{k}={v}" for k, v in cookie.items())


def ws_connect(url: str, *, subprotocols: Iterable[str] | None = None,
               headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
               cookie: str | Mapping[str, str] | None = None, token: str | None = None,
               origin: str | None = None, **kw: Any) -> _ws_connect:
    """Open a WebSocket. Use as ``ws = await ws_connect(...)`` or
    ``async with ws_connect(...) as ws:``.

    ``token`` is appended as ``?token=...``; ``cookie`` (str or dict) becomes a Cookie header.
    Extra ``kw`` go to ``websockets.asyncio.client.connect`` (e.g. ``open_timeout``,
    ``max_size``). Keepalive pings and system proxies are off by default.
    A refused handshake raises ``websockets.exceptions.InvalidStatus``.
    """
    if token is not None:
        url = _with_query(url, token=token)
    hdrs: list[tuple[str, str]] = []
    if headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        hdrs.extend((str(k), str(v)) for k, v in items)
    if cookie is not None:
        hdrs.append(("Cookie", _cookie_header(cookie)))
    kw.setdefault("open_timeout", 10)
    kw.setdefault("ping_interval", None)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("proxy", None)
    kw.setdefault("max_size", 16 * 1024 * 1024)
    return _ws_connect(
        url,
        subprotocols=list(subprotocols) if subprotocols else None,
        additional_headers=hdrs or None,
        origin=origin,
        **kw,
    )


async def ws_open(url: str, *, timeout: float = 5.0, **kw: Any) -> tuple[ClientConnection, Any]:
    """Connect and read the first JSON frame (the welcome / refusal): ``(ws, frame)``."""
    ws = await ws_connect(url, **kw)
    try:
        first = await recv_json(ws, timeout=timeout)
    except BaseException:
        await ws.close()
        raise
    return ws, first


async def recv_frame(ws: ClientConnection, timeout: float = 5.0) -> str | bytes:
    """The next frame (text or bytes). AssertionError on timeout, WSClosedError on close."""
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise AssertionError(f"no WebSocket frame received within {timeout}s") from None
    except ConnectionClosed:
        raise WSClosedError(ws.close_code, ws.close_reason or "", "a frame") from None


async def recv_text(ws: ClientConnection, timeout: float = 5.0) -> str:
    frame = await recv_frame(ws, timeout)
    if not isinstance(frame, str):
        raise AssertionError(f"expected a text frame, got binary {frame[:200]!r}")
    return frame


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> Any:
    """``json.loads`` of the next text frame."""
    text = await recv_text(ws, timeout)
    try:
        return json.loads(text)
    except ValueError:
        raise AssertionError(f"expected a JSON frame, got {text[:500]!r}") from None


async def recv_many(ws: ClientConnection, n: int, timeout: float = 5.0) -> list[Any]:
    """The next ``n`` JSON frames (``timeout`` for all of them together)."""
    deadline = asyncio.get_running_loop().time() + timeout
    out: list[Any] = []
    for i in range(n):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"got {i} of {n} frames within {timeout}s: {out!r}")
        try:
            out.append(await recv_json(ws, left))
        except AssertionError as exc:
            if isinstance(exc, WSClosedError):
                raise
            raise AssertionError(f"got {i} of {n} frames within {timeout}s: {out!r}") from None
    return out


async def recv_until(ws: ClientConnection, predicate: Callable[[Any], bool],
                     timeout: float = 5.0) -> Any:
    """Skip JSON frames until ``predicate(frame)`` is true; return that frame.
    Non-JSON text frames are passed to the predicate as strings."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    skipped: list[Any] = []
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no matching frame within {timeout}s; skipped {skipped!r}")
        try:
            frame = await recv_frame(ws, left)
        except WSClosedError:
            raise
        except AssertionError:
            raise AssertionError(
                f"no matching frame within {timeout}s; skipped {skipped!r}") from None
        if isinstance(frame, str):
            with contextlib.suppress(ValueError):
                frame = json.loads(frame)
        if predicate(frame):
            return frame
        skipped.append(frame)


async def expect_nothing(ws: ClientConnection, within: float = 0.3) -> None:
    """Assert that no frame arrives within ``within`` seconds (and the connection stays open)."""
    try:
        frame = await asyncio.wait_for(ws.recv(), within)
    except (asyncio.TimeoutError, TimeoutError):
        return
    except ConnectionClosed:
        raise WSClosedError(ws.close_code, ws.close_reason or "", "nothing (silence)") from None
    raise AssertionError(f"expected no frame within {within}s, got {frame!r}")


async def send_json(ws: ClientConnection, obj: Any) -> None:
    await ws.send(json.dumps(obj))


async def close_code(ws: ClientConnection, timeout: float = 5.0,
                     frames: list | None = None) -> tuple[int | None, str]:
    """Wait for the server to close; return ``(code, reason)``.

    Frames still arriving before the close are read and discarded (appended to ``frames``
    when a list is given). Code 1006 means the TCP connection dropped without a close frame.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"connection still open after {timeout}s")
        try:
            frame = await asyncio.wait_for(ws.recv(), left)
        except (asyncio.TimeoutError, TimeoutError):
            raise AssertionError(f"connection still open after {timeout}s") from None
        except ConnectionClosed:
            break
        if frames is not None:
            frames.append(frame)
    with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), max(0.1, deadline - loop.time()))
    return ws.close_code, ws.close_reason or ""


# ---------------------------------------------------------------------------
# Triggers
# ---------------------------------------------------------------------------

_MISSING = object()


def _trigger_request(base_url: str, token: str | None, rooms: Any, data: Any,
                     path: str, headers: Mapping[str, str] | None, body: Any,
                     scheme: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs.setdefault("Authorization", f"{scheme} {token}")
    url = base_url.rstrip("/") + path
    if body is not _MISSING:
        if isinstance(body, (bytes, str)):
            hdrs.setdefault("Content-Type", "application/json")
            return url, hdrs, {"content": body}
        return url, hdrs, {"json": body}
    return url, hdrs, {"json": {"rooms": rooms, "data": data}}


def trigger(base_url: str, token: str | None, rooms: Any, data: Any = None, *,
            path: str = "/trigger", headers: Mapping[str, str] | None = None,
            body: Any = _MISSING, scheme: str = "Bearer", timeout: float = 10.0,
            **kw: Any) -> httpx.Response:
    """``POST {base_url}/trigger`` with ``Authorization: Bearer <token>`` and
    ``{"rooms": rooms, "data": data}``. ``token=None`` sends no Authorization;
    ``body=`` replaces the JSON body (bytes/str sent raw, for malformed input)."""
    url, hdrs, payload = _trigger_request(base_url, token, rooms, data, path, headers, body,
                                          scheme)
    return httpx.post(url, headers=hdrs, timeout=timeout, trust_env=False, **payload, **kw)


async def atrigger(base_url: str, token: str | None, rooms: Any, data: Any = None, *,
                   path: str = "/trigger", headers: Mapping[str, str] | None = None,
                   body: Any = _MISSING, scheme: str = "Bearer", timeout: float = 10.0,
                   client: httpx.AsyncClient | None = None, **kw: Any) -> httpx.Response:
    """Async ``trigger``. Pass ``client=`` to reuse an ``httpx.AsyncClient``."""
    url, hdrs, payload = _trigger_request(base_url, token, rooms, data, path, headers, body,
                                          scheme)
    if client is not None:
        return await client.post(url, headers=hdrs, timeout=timeout, **payload, **kw)
    async with httpx.AsyncClient(trust_env=False) as c:
        return await c.post(url, headers=hdrs, timeout=timeout, **payload, **kw)
