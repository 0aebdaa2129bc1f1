"""The bench's moving parts: servers under test, trigger senders, the load generator.

- ``Target``: one server under test (the broker under daphne or uvicorn, in 1 or 2 processes,
  optionally with a TCP gate; the previous commit; High-templar; the raw websockets server).
  It knows its WebSocket URLs, how to send it a trigger, and its process tree (CPU, RSS).
- Trigger senders: ``HttpTrigger`` (POST /trigger over keep-alive connections, hand-rolled
  HTTP/1.1 on asyncio streams so the sender is cheap), ``AmqpTrigger`` (RabbitMQ exchange
  ``hightemplar``, routing key ``*``: how High-templar is triggered), ``WsPubTrigger`` (the raw
  server's ``/pub`` connection).
- ``Clients``: W Node processes (bench/loadgen.js, the ``ws`` package) holding the subscribers,
  counting deliveries and sampling latency.

Latency stamps are CLOCK_MONOTONIC microseconds (``time.monotonic_ns``), the clock Node's
``process.hrtime`` reads too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests.harness import BrokerProcess, RedisServer, free_port, wait_for_port  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
HT_VENV = BENCH / ".venv-ht"
TOKEN = "bench-token"
PAD = "x" * 200


def now_us() -> int:
    return time.monotonic_ns() // 1000


def payload(t_us: int) -> str:
    """The data of one trigger: 200 bytes of JSON carrying its send time."""
    head = f'{{"t":{t_us},"p":"'
    return head + PAD[: 200 - len(head) - 2] + '"}'


# ------------------------------------------------------------------ process tree stats

def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            if int(parts[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / tick
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
    return total


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ------------------------------------------------------------------ trigger senders

class HttpTrigger:
    """POST /trigger with keep-alive over ``conns`` connections (a pool)."""

    def __init__(self, base_urls: list[str], token: str = TOKEN, conns: int = 8,
                 fields: dict[str, Any] | None = None) -> None:
        self.addrs = []
        for u in base_urls:
            hostport = u.split("://", 1)[1].rstrip("/")
            host, port = hostport.rsplit(":", 1)
            self.addrs.append((host, int(port)))
        self.token = token
        # extra members of every /trigger body, e.g. {"history": true}; encoded once
        self.extra = "".join(f",{json.dumps(k)}:{json.dumps(v)}"
                             for k, v in (fields or {}).items())
        self.nconns = conns
        self.ok = 202  # the status of an accepted trigger
        self.pool: asyncio.Queue | None = None
        self.errors = 0
        self._all: list[Any] = []

    async def start(self) -> None:
        self.pool = asyncio.Queue()
        for i in range(self.nconns):
            host, port = self.addrs[i % len(self.addrs)]
            r, w = await asyncio.open_connection(host, port)
            self._all.append(w)
            await self.pool.put((r, w, host, port))

    async def post(self, body: bytes, path: str = "/trigger") -> int:
        return (await self.post_read(body, path))[0]

    async def post_read(self, body: bytes, path: str = "/trigger") -> tuple[int, bytes]:
        """(status, body of the answer); a status other than ``ok`` counts as an error."""
        assert self.pool is not None
        r, w, host, port = await self.pool.get()
        try:
            try:
                return await self._post(r, w, host, port, body, path)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
                # the server closed an idle keep-alive connection before reading: reconnect
                w.close()
                r, w = await asyncio.open_connection(host, port)
                self._all.append(w)
                return await self._post(r, w, host, port, body, path)
        finally:
            self.pool.put_nowait((r, w, host, port))

    async def _post(self, r: Any, w: Any, host: str, port: int, body: bytes,
                    path: str) -> tuple[int, bytes]:
        w.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (path.encode(), host.encode(), port, self.token.encode(), len(body), body))
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        answer = await r.readexactly(length) if length else b""
        if status != self.ok:
            self.errors += 1
        return status, answer

    async def send(self, rooms_json: str, data: str) -> None:
        await self.post(f'{{"rooms":{rooms_json},"data":{data}{self.extra}}}'.encode())

    async def close(self) -> None:
        for w in self._all:
            w.close()


class AmqpTrigger:
    """High-templar's trigger path: publish ``{"rooms":..,"data":..}`` to RabbitMQ."""

    def __init__(self, url: str = "amqp://guest:guest@127.0.0.1/") -> None:
        self.url = url
        self.errors = 0

    async def start(self) -> None:
        import aio_pika

        self._aio_pika = aio_pika
        self.conn = await aio_pika.connect(self.url)
        self.channel = await self.conn.channel(publisher_confirms=False)
        self.exchange = await self.channel.declare_exchange("hightemplar")

    async def send(self, rooms_json: str, data: str) -> None:
        body = f'{{"rooms":{rooms_json},"data":{data}}}'.encode()
        await self.exchange.publish(self._aio_pika.Message(body), routing_key="*")

    async def close(self) -> None:
        await self.conn.close()


class WsPubTrigger:
    """The raw server's trigger source: frames sent on ``/pub`` are broadcast as they are."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors = 0

    async def start(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, compression=None, ping_interval=None)

    async def send(self, rooms_json: str, data: str) -> None:
        await self.ws.send(f'{{"type":"publish","requestId":1,"data":{data}}}')

    async def close(self) -> None:
        await self.ws.close()


# ------------------------------------------------------------------ servers under test

class Target:
    name = "?"
    kind = "?"

    def __init__(self) -> None:
        self.ws_urls: list[str] = []
        self.base_urls: list[str] = []
        self.pids: list[int] = []
        self.stomp_port: int | None = None

    def trigger(self, conns: int = 8):  # noqa: ANN201
        return HttpTrigger(self.base_urls, conns=conns)

    def proc_pids(self) -> list[int]:
        out: list[int] = []
        for p in self.pids:
            out.extend(tree(p))
        return out

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def uvicorn_argv(app: str, *extra: str, src: Path = ROOT, ws: str | None = None) -> list[str]:
    """The production server's command (the README's flags): the broker, and the bare ASGI app
    of the ``rawtrigger`` target, run under exactly these. The WebSocket implementation is the
    broker's own edge where the tree ``src`` has one (``broker/wsedge.py``), else uvicorn's
    ``websockets-sansio`` (a ``prev`` tree from before it); ``ws`` or ``BENCH_UVICORN_WS``
    choose another."""
    edge = (Path(src) / "broker" / "wsedge.py").exists()
    ws_impl = ws or os.environ.get("BENCH_UVICORN_WS") or (
        "broker.wsedge:WebSocketEdge" if edge else "websockets-sansio")
    return [PY, "-m", "uvicorn", app, *extra, "--host", "127.0.0.1",
            "--port", "{port}", "--no-access-log", "--log-level", "warning",
            "--loop", "uvloop", "--http", "httptools", "--ws", ws_impl,
            "--ws-per-message-deflate", "false",
            "--backlog", "4096", "--timeout-keep-alive", "30"]


def broker_env(redis_url: str, auth_url: str, src: Path) -> dict[str, Any]:
    return {"BROKER_REDIS_URL": redis_url, "BROKER_AUTH_URL": auth_url,
            "BROKER_TRIGGER_TOKEN": TOKEN, "BROKER_LOG_LEVEL": "WARNING",
            "BROKER_AUTH_MAX_IN_FLIGHT": os.environ.get("BENCH_AUTH_MAX_IN_FLIGHT", None),
            "PYTHONPATH": os.pathsep.join(
                [str(src)] + ([os.environ["BENCH_EXTRA_PYTHONPATH"]]
                              if os.environ.get("BENCH_EXTRA_PYTHONPATH") else [])),
            "DJANGO_SECRET_KEY": "bench"}


class BrokerTarget(Target):
    """combroker (this tree, or the previous commit's tree ``src``) on a private Redis."""

    def __init__(self, name: str, auth_url: str, *, src: Path = ROOT, server: str = "daphne",
                 procs: int = 1, tcpgate: bool = False, layer: str = "pubsub",
                 env: dict[str, str] | None = None,
                 trigger_fields: dict[str, Any] | None = None, ws: str | None = None) -> None:
        """``env``: extra settings of the broker processes (e.g. BROKER_HISTORY);
        ``trigger_fields``: extra members of every /trigger body (e.g. {"history": True});
        ``ws``: uvicorn's ``--ws`` (default: the tree's production one, ``uvicorn_argv``)."""
        super().__init__()
        self.name, self.kind = name, "broker"
        self.auth_url, self.src, self.server, self.nprocs = auth_url, src, server, procs
        self.tcpgate = tcpgate
        self.layer = layer
        self.extra_env, self.trigger_fields = dict(env or {}), dict(trigger_fields or {})
        self.redis: RedisServer | None = None
        self.procs: list[BrokerProcess] = []
        self.gate: subprocess.Popen | None = None
        self.ws = ws

    def trigger(self, conns: int = 8) -> HttpTrigger:
        return HttpTrigger(self.base_urls, conns=conns, fields=self.trigger_fields)

    def argv(self) -> list[str]:
        if self.server == "uvicorn":
            return uvicorn_argv("combroker.asgi:application", src=self.src, ws=self.ws)
        return [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}",
                "combroker.asgi:application"]

    def start(self) -> None:
        self.redis = RedisServer().start()
        env = broker_env(self.redis.url, self.auth_url, self.src)
        if self.layer == "classic":
            env["DJANGO_SETTINGS_MODULE"] = "settings_classic"
            env["PYTHONPATH"] += os.pathsep + str(BENCH)
        env.update(self.extra_env)
        for i in range(self.nprocs):
            p = BrokerProcess(env, argv=self.argv(), cwd=self.src, name=f"{self.name}{i}",
                              start_timeout=60)
            self.procs.append(p)
        self.ws_urls = [p.ws_url for p in self.procs]
        self.base_urls = [p.base_url for p in self.procs]
        self.pids = [p.pid for p in self.procs if p.pid]
        if self.tcpgate:
            self.stomp_port = free_port()
            log = open(Path(tempfile.gettempdir()) / f"bench-gate-{self.stomp_port}.log", "wb")
            from tests.harness import _broker_env

            self.gate = subprocess.Popen(
                [PY, "manage.py", "runtcpgate", "--host", "127.0.0.1", "--port",
                 str(self.stomp_port)], cwd=self.src, env=_broker_env(env), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            wait_for_port(self.stomp_port, timeout=30)
            self.pids.append(self.gate.pid)

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop()
            shutil.rmtree(p._tmpdir, ignore_errors=True)  # its log; the harness keeps it
        if self.gate is not None and self.gate.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.gate.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.gate.wait(10)
            if self.gate.poll() is None:
                os.killpg(self.gate.pid, signal.SIGKILL)
        if self.redis is not None:
            self.redis.close()


class _Subprocess(Target):
    def _spawn(self, argv: list[str], env: dict[str, str], port: int) -> None:
        self.log = Path(tempfile.gettempdir()) / f"bench-{self.name}-{port}.log"
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            wait_for_port(port, timeout=60)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not start:\n{self.log.read_text()[-3000:]}") from None
        self.pids = [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class RawTarget(_Subprocess):
    name, kind = "raw", "raw"

    def start(self) -> None:
        port = free_port()
        self._spawn([PY, str(BENCH / "raw_server.py"), str(port)], dict(os.environ), port)
        self.ws_urls = [f"ws://127.0.0.1:{port}/ws/"]
        self.pub_url = f"ws://127.0.0.1:{port}/pub"

    def trigger(self, conns: int = 8):  # noqa: ANN201
        return WsPubTrigger(self.pub_url)


class RawAuthTarget(_Subprocess):
    """B3's Python limit: bench/raw_server.py with ``--auth``, one auth call per connection
    through a pooled aiohttp session before the welcome."""

    name, kind = "rawauth", "raw"

    def __init__(self, auth_url: str) -> None:
        super().__init__()
        self.auth_url = auth_url

    def start(self) -> None:
        port = free_port()
        limit = os.environ.get("BENCH_AUTH_MAX_IN_FLIGHT") or "64"
        self._spawn([PY, str(BENCH / "raw_server.py"), str(port), "--auth", self.auth_url,
                     "--auth-limit", limit], dict(os.environ), port)
        self.ws_urls = [f"ws://127.0.0.1:{port}/ws/"]
        self.pub_url = f"ws://127.0.0.1:{port}/pub"

    def trigger(self, conns: int = 8):  # noqa: ANN201
        return WsPubTrigger(self.pub_url)


class RawTriggerTarget(_Subprocess):
    """B7's Python limit: bench/raw_trigger.py, a bare ASGI app under the broker's uvicorn
    flags, on a private redis-server (one PUBLISH per trigger, 202)."""

    name, kind = "rawtrigger", "raw"

    def start(self) -> None:
        self.redis = RedisServer().start()
        port = free_port()
        argv = [a.replace("{port}", str(port))
                for a in uvicorn_argv("raw_trigger:application", "--app-dir", str(BENCH))]
        env = dict(os.environ, RAW_TRIGGER_REDIS_URL=self.redis.url,
                   BROKER_TRIGGER_TOKEN=TOKEN)
        try:
            self._spawn(argv, env, port)
        except Exception:
            self.redis.close()
            raise
        self.base_urls = [f"http://127.0.0.1:{port}"]

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.redis.close()


class HighTemplarTarget(_Subprocess):
    """High-templar 3.1.0 under hypercorn (one worker), on the local RabbitMQ."""

    name, kind = "hightemplar", "hightemplar"

    def __init__(self, api_base: str) -> None:
        super().__init__()
        self.api_base = api_base  # .../api/ : High-templar GETs <API_URL>bootstrap/

    def start(self) -> None:
        port = free_port()
        env = dict(os.environ, HT_API_URL=self.api_base, PYTHONPATH=str(ROOT))
        self._spawn([str(HT_VENV / "bin" / "hypercorn"), "-b", f"127.0.0.1:{port}",
                     "--backlog", "4096", "-w", "1", "bench.ht_app:application"], env, port)
        self.ws_urls = [f"ws://127.0.0.1:{port}/ws/"]
        time.sleep(1.0)  # its RabbitMQ consumer starts with the first request; warm it up
        with contextlib.suppress(Exception):
            import urllib.request
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        time.sleep(1.0)

    def trigger(self, conns: int = 8):  # noqa: ANN201
        return AmqpTrigger()


# ------------------------------------------------------------------ load generator

class Clients:
    """W Node worker processes holding ``n`` clients between them."""

    def __init__(self, urls: list[str], n: int, *, subs: str, workers: int = 2,
                 concurrency: int = 100, wait_go: bool = False, stomp_port: int | None = None,
                 room: dict | None = None, query: str = "?token=bench",
                 offset: int = 0) -> None:
        self.urls, self.n, self.subs, self.workers = urls, n, subs, max(1, min(workers, n))
        self.concurrency, self.wait_go, self.stomp_port = concurrency, wait_go, stomp_port
        self.room, self.query, self.offset = room, query, offset
        self.procs: list[asyncio.subprocess.Process] = []
        self.ready: list[dict] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        per = [self.n // self.workers + (1 if i < self.n % self.workers else 0)
               for i in range(self.workers)]
        off = self.offset
        for i, k in enumerate(per):
            cfg = {"url": self.urls[i % len(self.urls)], "n": k, "offset": off, "subs": self.subs,
                   "concurrency": max(1, self.concurrency // self.workers),
                   "wait_go": self.wait_go, "query": self.query, "room": self.room}
            if self.stomp_port:
                cfg.update(stomp=True, port=self.stomp_port, token="bench")
            off += k
            self.procs.append(await asyncio.create_subprocess_exec(
                "node", str(BENCH / "loadgen.js"), json.dumps(cfg), cwd=BENCH,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26))
        if not self.wait_go:
            await self.wait_ready()

    async def go(self) -> None:
        for p in self.procs:
            p.stdin.write(b'{"cmd":"go"}\n')
        for p in self.procs:
            await p.stdin.drain()

    async def _read(self, p: asyncio.subprocess.Process, timeout: float) -> dict:
        line = await asyncio.wait_for(p.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("load generator worker exited")
        return json.loads(line)

    async def wait_ready(self, timeout: float = 600) -> dict:
        self.ready = [await self._read(p, timeout) for p in self.procs]
        ok = sum(r["ok"] for r in self.ready)
        return {"ok": ok, "errors": sum(r["errors"] for r in self.ready),
                "first_error": next((r["first_error"] for r in self.ready if r["first_error"]),
                                    None),
                "start_us": min(r["start_us"] for r in self.ready),
                "end_us": max(r["end_us"] for r in self.ready),
                "connect_p50_ms": max((r["connect_p50_ms"] or 0) for r in self.ready),
                "connect_p99_ms": max((r["connect_p99_ms"] or 0) for r in self.ready)}

    async def report(self) -> dict:
        async with self._lock:  # one request/answer at a time on the workers' pipes
            for p in self.procs:
                p.stdin.write(b'{"cmd":"report"}\n')
            reps = [await self._read(p, 60) for p in self.procs]
        lat: list[int] = []
        for r in reps:
            lat.extend(r["lat"])
        codes: dict[str, int] = {}
        for r in reps:
            for k, v in r["close_codes"].items():
                codes[k] = codes.get(k, 0) + v
        return {"recv": sum(r["recv"] for r in reps), "last_us": max(r["last_us"] for r in reps),
                "lat": lat, "closed_early": sum(r["closed_early"] for r in reps),
                "close_codes": codes, "open": sum(r["open"] for r in reps)}

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stdin.write(b'{"cmd":"close"}\n')
                await p.stdin.drain()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()


# ------------------------------------------------------------------ setup

def ensure_ht_venv(log=print) -> None:  # noqa: ANN001
    """bench/.venv-ht with High-templar 3.1.0 from PyPI (created once, never committed)."""
    if (HT_VENV / "bin" / "hypercorn").exists():
        return
    log("creating bench/.venv-ht with high-templar==3.1.0 ...")
    base = shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(HT_VENV)], check=True)
    subprocess.run([str(HT_VENV / "bin" / "pip"), "install", "-q", "high-templar==3.1.0"],
                   check=True)


def ensure_node_ws(log=print) -> None:  # noqa: ANN001
    if (BENCH / "node_modules" / "ws").exists():
        return
    log("npm install (bench/package.json: ws) ...")
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=BENCH,
                   check=True)


SNAPSHOT_ITEMS = ("rooms", "broker", "combroker", "tcpgate", "manage.py",
                  "pyproject.toml")


def snapshot_tree() -> Path:
    """A copy of this tree's code, taken once at the start of a run: other engineers edit the
    work tree while the bench runs, and every target of one run must run the same code."""
    d = Path(tempfile.mkdtemp(prefix="combroker-snap-"))
    for item in SNAPSHOT_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, d / item, ignore=shutil.ignore_patterns(
                "__pycache__", "node_modules", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, d / item)
    return d


def prev_tree(log=print, rev: str = "HEAD~1") -> Path | None:  # noqa: ANN001
    """A commit (the previous one by default) exported read-only into a temp dir
    (``git archive``)."""
    d = Path(tempfile.mkdtemp(prefix="combroker-prev-"))
    try:
        arch = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT,
                              capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(d)], input=arch, check=True)
        rev = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        (d / ".bench-rev").write_text(rev)
        return d
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        log(f"previous commit not available: {exc}")
        shutil.rmtree(d, ignore_errors=True)
        return None
