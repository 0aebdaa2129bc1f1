"""bench/run: every scenario of issue 6 against the broker and its baselines, in one run.

Targets (all measured in the same run, through the same load generator):
  uvicorn  this tree under uvicorn (the production server, docs/performance.md), one process,
           private redis-server, pub/sub layer; goals and ratios use it
  nopresence  this tree on the production server with BROKER_PRESENCE=false: beside uvicorn,
           what presence costs (B1, B3, B4; run with BENCH_AUTH_LOGINS=1 so that every
           connection has a login, whose online state presence keeps)
  asgi     this tree under uvicorn with uvicorn's own WebSocket implementation
           (websockets-sansio) and the ASGI adapter (broker/consumers.py), not the edge
  daphne   this tree under daphne
  classic  this tree on channels_redis's classic layer (not in the default targets)
  prev     another commit (--prev, default HEAD~1), same venv, same settings: regressions
  ht       High-templar 3.1.0 from PyPI (bench/.venv-ht) under hypercorn, local RabbitMQ
  raw      a minimal websockets broadcast server (bench/raw_server.py): the physical limit
           of B1 (also its p99 at the production broker's half-saturation rate) and B4
  rawauth  the same server making the broker's auth call per connection through one pooled
           aiohttp session (raw_server.py --auth): the limit of B3
  rawtrigger  a bare ASGI app under the broker's uvicorn flags: parse, one PUBLISH, 202
           (bench/raw_trigger.py; also the batch form): the limit of B7
Scenarios: B1 broadcast fan-out, B2 targeted triggers, B3 connect storm, B4 idle memory,
B5 TCP gate fan-out (STOMP), B6 scale-out (2 broker processes), B7 trigger ingestion,
B1h what room history costs: B1 on the production server twice, plain triggers then
BROKER_HISTORY on the B1 room with every trigger posted "history": true (issue 8).
B7 also posts the batch form (a JSON array of 100 triggers; "unsupported" where it is answered
400). The goals of issue 13 are each a ratio against the limit measured in the same run
(bench/report.py). An unknown target or scenario is an error.

    bench/run --quick          # ~5 minutes, reduced sizes
    bench/run                  # full sizes, medians over 3 runs (~20 minutes)
    bench/run --only B1,B3 --targets uvicorn,ht
    bench/run --quick --only B1h                       # what history costs in B1
    bench/run --smoke --only B1,B2 --targets uvicorn   # seconds: tests/integration
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402

import lib  # noqa: E402
from report import _g  # noqa: E402  (a path into a nested result, or None)
from lib import (  # noqa: E402
    BENCH, PY, ROOT, BrokerTarget, Clients, HighTemplarTarget, RawAuthTarget, RawTarget,
    RawTriggerTarget, cpu_seconds, free_port, loadavg, now_us, payload, wait_for_port,
)

B1_ROOM = '[{"bench":"b1"}]'
# B1h: the B1 room keeps history (broker/history.py); every trigger asks to be recorded.
B1H_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "history": {"env": {"BROKER_HISTORY": json.dumps(
                    [{"room": json.loads(B1_ROOM)[0], "size": 1000, "ttl": 600}])},
                "trigger_fields": {"history": True}},
}
# The recommended production ASGI server (docs/performance.md): goals and ratios use it.
PRODUCTION_SERVER = "uvicorn"


def log(*a: Any) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def med(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# ------------------------------------------------------------------ the auth API

class AuthServer:
    def __init__(self, delay_ms: float = 5.0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([PY, str(BENCH / "authapi.py"), str(self.port),
                                      str(delay_ms)], cwd=ROOT, stdin=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=30)
        self.url = f"http://127.0.0.1:{self.port}/api/bootstrap/"
        self.api_base = f"http://127.0.0.1:{self.port}/api/"

    def _call(self, path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._call("/stats")

    def reset(self) -> dict:
        return self._call("/reset", "POST")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ------------------------------------------------------------------ measuring primitives

class Meter:
    """Counts deliveries through the clients, and the server's CPU while it works."""

    def __init__(self, clients: Clients, target: lib.Target) -> None:
        self.clients, self.target = clients, target
        self.recv = 0
        self.lat: list[int] = []

    async def sync(self) -> dict:
        r = await self.clients.report()
        self.recv = r["recv"]
        self.lat.extend(r["lat"])
        return r

    async def sample(self, out: list[tuple[float, int]], stop: asyncio.Event,
                     every: float = 0.1) -> None:
        """Append (time, deliveries so far) every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            r = await self.sync()
            out.append((time.monotonic(), r["recv"]))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def drain(self, expected: int, stall_s: float = 3.0, limit_s: float = 60.0,
                    samples: list[tuple[float, int]] | None = None) -> dict:
        """Wait until ``expected`` deliveries in total arrived, or nothing moved for stall_s."""
        t0 = last_move = time.monotonic()
        prev = -1
        while True:
            r = await self.sync()
            if samples is not None:
                samples.append((time.monotonic(), r["recv"]))
            if r["recv"] >= expected:
                return r
            if r["recv"] != prev:
                prev, last_move = r["recv"], time.monotonic()
            if time.monotonic() - last_move > stall_s or time.monotonic() - t0 > limit_s:
                return r
            await asyncio.sleep(0.1)


def steady_rate(samples: list[tuple[float, int]], send_start: float, send_end: float,
                almost: float) -> float | None:
    """Deliveries/s in the steady part of a step: from 30% into the sending until the clients
    hold 95% of what was sent (later than send_end when the server is saturated and drains a
    backlog), so neither the ramp-up nor the latency tail is counted."""
    t_start = send_start + 0.3 * (send_end - send_start)
    inside = [(t, c) for t, c in samples if t >= t_start]
    end = next((i for i, (t, c) in enumerate(inside) if c >= almost), len(inside) - 1)
    inside = inside[: end + 1]
    if len(inside) < 3 or inside[-1][0] - inside[0][0] < 0.2:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


async def paced(trig: Any, rate: float, count: int, rooms: Any = B1_ROOM) -> int:
    """Send ``count`` triggers at ``rate``/s (open loop); ``rooms`` may be a callable."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        r = rooms(i) if callable(rooms) else rooms
        tasks.append(asyncio.ensure_future(trig.send(r, payload(now_us()))))
    await asyncio.gather(*tasks)
    return count


async def closed_loop(trig: Any, conc: int, seconds: float, rooms: Any) -> tuple[int, float]:
    """``conc`` senders, each sending its next trigger as soon as the last one was answered."""
    done = 0
    stop_at = time.monotonic() + seconds

    async def lane() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await trig.send(rooms() if callable(rooms) else rooms, payload(now_us()))
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(conc)))
    return done, time.monotonic() - t0




def per_unit_us(cpu_s: float, units: int) -> float | None:
    """µs of server CPU per delivery (or trigger); None below 5 clock ticks of CPU (50 ms),
    which /proc cannot tell apart from nothing."""
    return round(cpu_s / units * 1e6, 2) if units and cpu_s >= 0.05 else None


def lat_summary(lat_us: list[int]) -> dict:
    return {"p50_ms": round(pct(lat_us, 0.5) / 1000, 2) if lat_us else None,
            "p99_ms": round(pct(lat_us, 0.99) / 1000, 2) if lat_us else None,
            "samples": len(lat_us)}


# ------------------------------------------------------------------ B1 / B5 / B6: fan-out

async def fanout(target: lib.Target, n: int, cfg: argparse.Namespace, *,
                 stomp: bool = False, at_rate: float | None = None) -> dict:
    """Saturation, then latency at half of it. ``at_rate`` (triggers/s): latency at that rate
    too, in every run (the raw server at the production broker's half-saturation rate: the
    latency goal compares p99s at the same offered rate)."""
    clients = Clients(target.ws_urls, n, subs="same", workers=cfg.workers, concurrency=64,
                      stomp_port=target.stomp_port if stomp else None)
    t0 = time.monotonic()
    await clients.start()
    ready = clients_ready(clients)
    log(f"  {target.name}: {ready['ok']}/{n} subscribers in {time.monotonic() - t0:.1f}s")
    if ready["ok"] != n:
        await clients.close()
        return {"error": f"only {ready['ok']} of {n} subscribed: {ready['first_error']}"}
    trig = target.trigger(conns=8)
    await trig.start()
    m = Meter(clients, target)
    sent_total = 0
    result: dict[str, Any] = {"subscribers": n, "runs": []}
    try:
        # warm-up: a few triggers, all delivered
        sent_total += await paced(trig, 20, 10)
        await m.drain(sent_total * n)
        for run in range(cfg.runs if n <= 1000 else max(1, cfg.runs - 1)):
            steps = []
            rate = max(1.0, cfg.start_msgs / n)
            overloaded = 0
            while len(steps) < cfg.max_steps:
                count = max(3, int(rate * cfg.step_s))
                await m.sync()
                base = m.recv
                cpu0, tcpu = cpu_seconds(target.proc_pids()), time.monotonic()
                gcpu0 = cpu_seconds(clients.pids() + [os.getpid()])
                first = now_us()
                samples: list[tuple[float, int]] = []
                stop = asyncio.Event()
                poll = asyncio.ensure_future(m.sample(samples, stop))
                try:
                    sent_total += await paced(trig, rate, count)
                finally:
                    send_end = time.monotonic()
                    stop.set()
                    await poll
                r = await m.drain(sent_total * n, samples=samples)
                got = r["recv"] - base
                delivered = steady_rate(samples, send_end - (count / rate), send_end,
                                        base + 0.95 * count * n)
                if delivered is None:  # too few samples: fall back to first send..last receipt
                    delivered = got / max((r["last_us"] - first) / 1e6, 1e-6)
                cpu_s = cpu_seconds(target.proc_pids()) - cpu0
                cpu = cpu_s / (time.monotonic() - tcpu)
                gcpu = (cpu_seconds(clients.pids() + [os.getpid()]) - gcpu0) / (
                    time.monotonic() - tcpu)
                step = {"rate": round(rate, 2), "offered_msgs_s": round(rate * n),
                        "delivered_msgs_s": round(delivered), "lost": count * n - got,
                        "server_cpu": round(cpu, 2), "loadgen_cpu": round(gcpu, 2),
                        # the server's CPU per delivery: steadier than msgs/s on a shared
                        # machine, where the server gets 0.4 to 1.0 of a core from run to run
                        "server_cpu_us_per_msg": per_unit_us(cpu_s, got)}
                steps.append(step)
                if step["lost"]:
                    sent_total = r["recv"] // n  # resync; losses are reported
                    m.recv = r["recv"]
                    result["losses"] = result.get("losses", 0) + step["lost"]
                if step["delivered_msgs_s"] < 0.8 * step["offered_msgs_s"] or step["lost"]:
                    overloaded += 1
                    if overloaded >= 2:
                        break
                    rate *= 1.3
                else:
                    rate *= 2
            sat = max(s["delivered_msgs_s"] for s in steps)
            sat_step = next(s for s in steps if s["delivered_msgs_s"] == sat)

            async def latency_at(rate: float) -> dict:
                """p50/p99 of every delivery of triggers sent at ``rate`` for cfg.lat_s."""
                nonlocal sent_total
                await m.sync()
                m.lat = []
                sent_total += await paced(trig, rate, max(5, int(rate * cfg.lat_s)))
                await m.drain(sent_total * n)
                return lat_summary(m.lat)

            # latency at half of saturation
            lat_rate = max(0.5, 0.5 * sat / n)
            lat = await latency_at(lat_rate)
            brief = [(s["offered_msgs_s"], s["delivered_msgs_s"], s["server_cpu"],
                      s["loadgen_cpu"]) for s in steps]
            log(f"  {target.name} n={n} run {run + 1}: saturation {sat:,} msgs/s, "
                f"p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms at {lat_rate:.1f} trig/s; "
                f"steps (offered, delivered, server cpu, loadgen cpu) {brief}")
            result["runs"].append({"saturation_msgs_s": sat, "latency_rate": round(lat_rate, 2),
                                   "cpu_us_per_msg": sat_step["server_cpu_us_per_msg"],
                                   **lat, "steps": steps})
            if at_rate:
                lat = await latency_at(at_rate)
                result["runs"][-1]["at_rate"] = {"rate": round(at_rate, 2), **lat}
                log(f"  {target.name} n={n} run {run + 1}: p50 {lat['p50_ms']} ms "
                    f"p99 {lat['p99_ms']} ms at {at_rate:.1f} trig/s (the given rate)")
        result["saturation_msgs_s"] = med([r["saturation_msgs_s"] for r in result["runs"]])
        result["p50_ms"] = med([r["p50_ms"] for r in result["runs"]])
        result["p99_ms"] = med([r["p99_ms"] for r in result["runs"]])
        result["cpu_us_per_msg"] = med([r["cpu_us_per_msg"] for r in result["runs"]])
        if at_rate:
            result["at_rate"] = {
                "rate": round(at_rate, 2),
                "p50_ms": med([_g(r, "at_rate", "p50_ms") for r in result["runs"]]),
                "p99_ms": med([_g(r, "at_rate", "p99_ms") for r in result["runs"]])}
        final = await m.sync()
        result["closed_early"] = final["closed_early"]
        result["trigger_errors"] = trig.errors
        result["delivered_all"] = (not result.get("losses") and final["recv"] == sent_total * n
                                   and not trig.errors)
    finally:
        await trig.close()
        await clients.close()
    return result


def history_stored(target: BrokerTarget) -> dict:
    """What the target's Redis holds as room history (broker/stores/history.py: streams P:h:<room>):
    proof that B1h's history variant records its triggers."""
    import redis

    r = redis.Redis.from_url(target.redis.url)
    try:
        streams = [k for k in r.scan_iter(match="*:h:*") if r.type(k) == b"stream"]
        # Redis-side time of the scripts (the history append is one EVALSHA per trigger)
        ev = r.info("commandstats").get("cmdstat_evalsha") or {}
        return {"streams": len(streams), "entries": sum(r.xlen(k) for k in streams),
                "evalsha_calls": ev.get("calls", 0), "evalsha_usec_per_call":
                ev.get("usec_per_call")}
    finally:
        r.close()


async def fanout_b1h(target: BrokerTarget, n: int, cfg: argparse.Namespace) -> dict:
    res = await fanout(target, n, cfg)
    res["history_stored"] = history_stored(target)
    return res


def clients_ready(clients: Clients) -> dict:
    rs = clients.ready
    return {"ok": sum(r["ok"] for r in rs),
            "first_error": next((r["first_error"] for r in rs if r["first_error"]), None)}


# ------------------------------------------------------------------ B2: targeted

async def targeted(target: lib.Target, n: int, cfg: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    clients = Clients(target.ws_urls, n, subs="own", workers=cfg.workers, concurrency=64)
    await clients.start()
    ready = clients_ready(clients)
    setup_s = time.monotonic() - t0
    log(f"  {target.name}: {ready['ok']}/{n} own-room subscribers in {setup_s:.1f}s")
    if ready["ok"] != n:
        await clients.close()
        return {"error": f"only {ready['ok']} of {n} subscribed: {ready['first_error']}"}
    trig = target.trigger(conns=cfg.trigger_conns)
    await trig.start()
    m = Meter(clients, target)
    rnd = random.Random(6)

    def room() -> str:
        return f'[{{"user":{rnd.randrange(n)}}}]'

    sent = 0
    runs = []
    try:
        sent += await paced(trig, 50, 20, lambda i: room())
        await m.drain(sent)
        for run in range(cfg.runs):
            await m.sync()
            base = m.recv
            cpu0 = cpu_seconds(target.proc_pids())
            done, secs = await closed_loop(trig, cfg.trigger_conns, cfg.step_s * 2, room)
            sent += done
            r = await m.drain(sent)
            cpu = (cpu_seconds(target.proc_pids()) - cpu0) / secs
            tps = (r["recv"] - base) / secs
            m.lat = []
            rate = max(1.0, tps / 2)
            sent += await paced(trig, rate, max(10, int(rate * cfg.lat_s)), lambda i: room())
            r = await m.drain(sent)
            lat = lat_summary(m.lat)
            runs.append({"triggers_s": round(tps, 1), "server_cpu": round(cpu, 2),
                         "latency_rate": round(rate, 1), **lat})
            log(f"  {target.name} n={n} run {run + 1}: {tps:,.0f} triggers/s (cpu {cpu:.2f}); "
                f"p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms at {rate:.0f}/s")
        final = await m.sync()
        return {"connections": n, "setup_s": round(setup_s, 1),
                "triggers_s": med([r["triggers_s"] for r in runs]),
                "p50_ms": med([r["p50_ms"] for r in runs]),
                "p99_ms": med([r["p99_ms"] for r in runs]),
                "delivered_all": final["recv"] == sent and trig.errors == 0, "runs": runs}
    finally:
        await trig.close()
        await clients.close()


# ------------------------------------------------------------------ B3: connect storm

def storm_query() -> str:
    """B3's clients present a token each (``?token=bench-<i>``): a storm of distinct users, so
    that every connection costs the broker and rawauth one auth call alike (identical
    concurrent requests may be shared; BENCH_B3_TOKENS=same gives every client one token)."""
    return "?token=bench" if os.environ.get("BENCH_B3_TOKENS") == "same" else "?token=bench-{i}"


async def storm(target: lib.Target, n: int, auth: AuthServer, cfg: argparse.Namespace) -> dict:
    runs = []
    for run in range(min(cfg.runs, 2)):
        auth.reset()
        clients = Clients(target.ws_urls, n, subs="none", workers=cfg.workers,
                          concurrency=cfg.storm_concurrency, wait_go=True,
                          query=storm_query(), offset=run * n)  # new users in each run
        await clients.start()
        await asyncio.sleep(0.3)  # node start-up
        await clients.go()
        ready = await clients.wait_ready()
        st = auth.stats()
        secs = (ready["end_us"] - ready["start_us"]) / 1e6
        runs.append({"ok": ready["ok"], "errors": ready["errors"],
                     "conns_s": round(ready["ok"] / secs, 1),
                     "auth_requests": st["count"], "auth_max_in_flight": st["max_in_flight"],
                     "auth_distinct_credentials": st.get("distinct_credentials"),
                     "connect_p50_ms": ready["connect_p50_ms"],
                     "connect_p99_ms": ready["connect_p99_ms"],
                     "first_error": ready["first_error"]})
        log(f"  {target.name} storm {n} run {run + 1}: {runs[-1]}")
        await clients.close()
        await asyncio.sleep(1.0)  # let the server forget them
    return {"clients": n, "tokens": "same" if "{i}" not in storm_query() else "distinct",
            "conns_s": med([r["conns_s"] for r in runs]),
            "auth_max_in_flight": max(r["auth_max_in_flight"] for r in runs),
            "all_connected": all(r["ok"] == n for r in runs), "runs": runs}


# ------------------------------------------------------------------ B4: idle memory

async def idle_memory(target: lib.Target, n: int, cfg: argparse.Namespace) -> dict:
    subs = os.environ.get("BENCH_B4_SUBS", "two")  # "none": the cost of a bare connection
    warm = Clients(target.ws_urls, 50, subs=subs, workers=1, concurrency=50)
    await warm.start()
    await asyncio.sleep(cfg.settle_s)
    rss0 = lib.rss_bytes(target.proc_pids())
    t0 = time.monotonic()
    clients = Clients(target.ws_urls, n, subs=subs, workers=cfg.workers, concurrency=64,
                      offset=1000)  # rooms {"user": i} apart from the warm clients' ones
    await clients.start()
    ready = clients_ready(clients)
    setup = time.monotonic() - t0
    await asyncio.sleep(cfg.settle_s * 1.5)
    rss1 = lib.rss_bytes(target.proc_pids())
    await clients.close()
    await warm.close()
    per = (rss1 - rss0) / max(1, ready["ok"])
    res = {"connections": n, "ok": ready["ok"], "rss_before_mb": round(rss0 / 2**20, 1),
           "rss_after_mb": round(rss1 / 2**20, 1), "bytes_per_conn": round(per),
           "kib_per_conn": round(per / 1024, 1), "setup_s": round(setup, 1),
           "first_error": ready["first_error"]}
    log(f"  {target.name} idle {n}: {res}")
    return res


# ------------------------------------------------------------------ B7: ingestion

PUBLISH_SYNC_SNIPPET = r"""
import json, os, sys, time
import django
django.setup()
from broker import publish_sync
secs = float(sys.argv[1])
for _ in range(50):
    publish_sync([{"bench": "nobody"}], {"x": 1})
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < secs:
    publish_sync([{"bench": "nobody"}], {"x": 1})
    n += 1
print(json.dumps({"calls_s": n / (time.monotonic() - t0)}))
"""


NOBODY = '[{"bench":"nobody"}]'
B7_BATCH = 100  # triggers per batch (the batch form: POST /trigger with a JSON array)


async def ingestion(target: lib.Target, cfg: argparse.Namespace) -> dict:
    """B7: /trigger closed-loop over 16 keep-alive connections, one trigger per request, to a
    room nobody holds; then the batch form; then (a broker) publish_sync() in a loop."""
    trig = target.trigger(conns=cfg.trigger_conns)
    await trig.start()
    runs = []
    try:
        await closed_loop(trig, cfg.trigger_conns, 0.5, NOBODY)
        for _ in range(cfg.runs):
            cpu0 = cpu_seconds(target.proc_pids())
            done, secs = await closed_loop(trig, cfg.trigger_conns, cfg.step_s * 2, NOBODY)
            cpu_s = cpu_seconds(target.proc_pids()) - cpu0
            runs.append({"trigger_req_s": round(done / secs, 1),
                         "server_cpu": round(cpu_s / secs, 2),
                         "cpu_us_per_trigger": per_unit_us(cpu_s, done)})
    finally:
        await trig.close()
    res = {"trigger_req_s": med([r["trigger_req_s"] for r in runs]),
           "server_cpu": med([r["server_cpu"] for r in runs]),
           "cpu_us_per_trigger": med([r["cpu_us_per_trigger"] for r in runs]), "runs": runs,
           "trigger_errors": trig.errors, "answered_all": trig.errors == 0}
    res["batch"] = await batch_ingestion(target, cfg)
    if isinstance(target, BrokerTarget):
        res.update(publish_sync_rate(target, cfg))
    log(f"  {target.name} ingestion: {res}")
    return res


async def batch_ingestion(target: lib.Target, cfg: argparse.Namespace,
                          size: int = B7_BATCH) -> dict:
    """The batch form: ``size`` triggers per POST /trigger (a JSON array), closed-loop over
    the same 16 keep-alive connections, to the room nobody holds. Each answer must be 202 with
    one result per entry. A 400 to the first array: the target has no batch form
    ("unsupported")."""
    trig = target.trigger(conns=cfg.trigger_conns)
    await trig.start()
    entry = f'{{"rooms":{NOBODY},"data":{payload(0)}}}'
    body = ("[" + ",".join([entry] * size) + "]").encode()

    def complete(status: int, answer: bytes) -> bool:
        return status == 202 and answer.count(b'"id"') == size

    try:
        status, answer = await trig.post_read(body)
        if status == 400:
            return {"unsupported": True, "status": status,
                    "answer": answer[:200].decode("utf-8", "replace")}
        if not complete(status, answer):
            return {"error": f"a batch of {size} answered {status}: "
                             f"{answer[:300].decode('utf-8', 'replace')}"}
        done = bad = 0
        first_bad: str | None = None

        async def lane(stop_at: float) -> None:
            nonlocal done, bad, first_bad
            while time.monotonic() < stop_at:
                st, ans = await trig.post_read(body)
                if complete(st, ans):
                    done += size
                else:
                    bad += 1
                    first_bad = first_bad or f"{st}: {ans[:200].decode('utf-8', 'replace')}"

        async def closed(seconds: float) -> float:
            t0 = time.monotonic()
            await asyncio.gather(*(lane(t0 + seconds) for _ in range(cfg.trigger_conns)))
            return time.monotonic() - t0

        await closed(0.5)  # warm-up
        runs = []
        for _ in range(cfg.runs):
            done = 0
            cpu0 = cpu_seconds(target.proc_pids())
            secs = await closed(cfg.step_s * 2)
            cpu_s = cpu_seconds(target.proc_pids()) - cpu0
            runs.append({"triggers_s": round(done / secs, 1),
                         "batches_s": round(done / size / secs, 1),
                         "server_cpu": round(cpu_s / secs, 2),
                         "cpu_us_per_trigger": per_unit_us(cpu_s, done)})
        return {"batch_size": size, "triggers_s": med([r["triggers_s"] for r in runs]),
                "server_cpu": med([r["server_cpu"] for r in runs]),
                "cpu_us_per_trigger": med([r["cpu_us_per_trigger"] for r in runs]), "runs": runs,
                "incomplete_answers": bad, "first_incomplete": first_bad,
                "answered_all": bad == 0}
    finally:
        await trig.close()


def publish_sync_rate(target: BrokerTarget, cfg: argparse.Namespace) -> dict:
    env = lib.broker_env(target.redis.url, target.auth_url, target.src)
    from tests.harness import _broker_env

    ps = []
    for _ in range(cfg.runs):
        out = subprocess.run([PY, "-c", PUBLISH_SYNC_SNIPPET, str(cfg.step_s * 2)],
                             cwd=target.src, env=_broker_env(env), capture_output=True,
                             text=True, timeout=120)
        try:
            ps.append(json.loads(out.stdout.strip().splitlines()[-1])["calls_s"])
        except (IndexError, ValueError, KeyError):
            log(f"  publish_sync failed: {out.stderr[-1000:]}")
    return {"publish_sync_calls_s": round(med(ps), 1) if ps else None, "publish_sync_runs": ps}


# ------------------------------------------------------------------ orchestration

def gate_works(src: Path) -> bool:
    """True when ``manage.py runtcpgate`` exists and speaks STOMP (checked on a real gate)."""
    commands = ("broker/management/commands", "tcpgate/management/commands")  # before/after 12
    return (src / "tcpgate" / "server.py").exists() and any(
        (src / where / "runtcpgate.py").exists() for where in commands)


async def with_target(target: lib.Target, fn: Any) -> Any:
    log(f"starting {target.name} ...")
    try:
        target.start()
    except Exception as exc:  # noqa: BLE001 - a baseline that cannot start is reported
        log(f"  {target.name} failed to start: {exc}")
        with_stop(target)
        return {"error": f"start failed: {exc}"[:500]}
    try:
        return await fn(target)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        with_stop(target)


def with_stop(target: lib.Target) -> None:
    try:
        target.stop()
    except Exception:  # noqa: BLE001
        pass


async def main(cfg: argparse.Namespace) -> dict:
    lib.ensure_node_ws(log)
    if "ht" in cfg.targets:
        lib.ensure_ht_venv(log)
    prev = lib.prev_tree(log, cfg.prev) if "prev" in cfg.targets else None
    prev_rev = (prev / ".bench-rev").read_text() if prev else None
    snap = lib.snapshot_tree()
    auth = AuthServer(5.0)
    res: dict[str, Any] = {"mode": "quick" if cfg.quick else "full",
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "loadavg_start": loadavg(), "cpus": os.cpu_count(),
                           "prev_rev": prev_rev,
                           "auth_logins": os.environ.get("BENCH_AUTH_LOGINS") == "1",
                           "config": {k: v for k, v in vars(cfg).items()}}

    res["production_server"] = cfg.prod

    def mk(name: str, **kw: Any) -> lib.Target | None:
        if name in ("daphne", "uvicorn"):
            return BrokerTarget(name, auth.url, src=snap, server=name, **kw)
        if name == "asgi":  # uvicorn's own WebSocket implementation and the ASGI adapter
            return BrokerTarget(name, auth.url, src=snap, server="uvicorn",
                                ws="websockets-sansio", **kw)
        if name == "nopresence":  # the production server with presence off: what it costs
            return BrokerTarget(name, auth.url, src=snap, server=cfg.prod,
                                env={"BROKER_PRESENCE": "false"}, **kw)
        if name == "classic":  # the production server on channels_redis's classic layer
            return BrokerTarget(name, auth.url, src=snap, server=cfg.prod, layer="classic", **kw)
        if name == "prev":
            return BrokerTarget("prev", auth.url, src=prev, server=cfg.prod, **kw) \
                if prev else None
        if name == "ht":
            return HighTemplarTarget(auth.api_base)
        if name == "raw":
            return RawTarget()
        if name == "rawauth":
            return RawAuthTarget(auth.url)
        if name == "rawtrigger":
            return RawTriggerTarget()
        raise ValueError(name)

    def want(s: str) -> bool:
        return s in cfg.only

    def among(scenario: str, other_server: str = "never") -> list[str]:
        """The targets of --targets that take part in ``scenario`` (SCENARIO_TARGETS), in
        their order. The non-production server runs ``other_server``: "always" (B1, B4),
        "full" (B3: not in quick mode) or "never" (B2, B7)."""
        other = "daphne" if cfg.prod == "uvicorn" else "uvicorn"
        skip = other_server == "never" or (other_server == "full" and cfg.quick)
        names = [x for x in cfg.targets if x in SCENARIO_TARGETS[scenario]
                 and not (skip and x == other)]
        if not names:
            log(f"{scenario}: none of --targets {','.join(cfg.targets)} takes part "
                f"({', '.join(SCENARIO_TARGETS[scenario])} do)")
        return names

    def raw_at_broker_rate(n: int) -> tuple[float | None, str | None]:
        """The production broker's half-saturation rate in this run's B1 at ``n`` (triggers/s),
        or why there is none."""
        b = _g(res, "B1", cfg.prod, str(n))
        if not b or "error" in b:
            return None, (f"the production broker ({cfg.prod}) has no B1 result at n={n} in "
                          f"this run before raw (--targets runs it first when it is listed "
                          f"first)")
        rate = med([r.get("latency_rate") for r in b.get("runs", [])])
        return rate, None

    try:
        if want("B1"):
            res["B1"] = {}
            for name in among("B1", "always"):
                for n in cfg.b1_sizes:
                    if name == "prev" and n > 1000 and not cfg.sizes:
                        continue  # regressions show at 1,000 already; saves minutes
                    t = mk(name)
                    if t is None:
                        continue
                    at_rate, why = raw_at_broker_rate(n) if name == "raw" else (None, None)
                    out = await with_target(t, lambda t, n=n, r=at_rate: fanout(t, n, cfg,
                                                                               at_rate=r))
                    if why:
                        out["at_rate"] = {"skipped": why}
                        log(f"  raw n={n}: no latency at the broker's rate: {why}")
                    res["B1"].setdefault(t.name, {})[str(n)] = out
        if want("B1h"):
            # plain and history back to back for each size, on the production server
            res["B1h"] = {}
            for n in cfg.b1h_sizes:
                row: dict[str, Any] = {"server": cfg.prod}
                for variant, kw in B1H_VARIANTS.items():
                    row[variant] = await with_target(
                        BrokerTarget(f"{cfg.prod}-{variant}", auth.url, src=snap,
                                     server=cfg.prod, **kw),
                        lambda t, n=n: fanout_b1h(t, n, cfg))
                for key in ("saturation_msgs_s", "p50_ms", "p99_ms"):
                    a, b = row["history"].get(key), row["plain"].get(key)
                    row[f"{key}_ratio"] = round(a / b, 3) if a and b else None
                log(f"  B1h n={n}: history/plain delivered msgs/s "
                    f"{row['saturation_msgs_s_ratio']}")
                res["B1h"][str(n)] = row
        if want("B2"):
            res["B2"] = {}
            for name in among("B2"):
                t = mk(name)
                if t is None:
                    continue

                async def b2(t: lib.Target) -> dict:
                    return {str(n): await targeted(t, n, cfg) for n in cfg.b2_sizes}
                res["B2"][t.name] = await with_target(t, b2)
        if want("B3"):
            res["B3"] = {}
            for name in among("B3", "full"):
                t = mk(name)
                if t is not None:
                    res["B3"][t.name] = await with_target(
                        t, lambda t: storm(t, cfg.b3_clients, auth, cfg))
        if want("B4"):
            res["B4"] = {}
            for name in among("B4", "always"):
                t = (BrokerTarget(f"broker-{name}", auth.url, src=snap, server=name)
                     if name in ("daphne", "uvicorn") else mk(name))
                res["B4"][name if t.kind == "broker" else t.name] = await with_target(
                    t, lambda t: idle_memory(t, cfg.b4_conns, cfg))
        if want("B5"):
            if gate_works(snap):
                res["B5"] = await with_target(
                    BrokerTarget("broker-gate", auth.url, src=snap, server=cfg.prod,
                                 tcpgate=True),
                    lambda t: fanout(t, cfg.b5_size, cfg, stomp=True))
            else:
                res["B5"] = {"error": "pending: no working tcpgate/runtcpgate"}
        if want("B6"):
            # 1 process, then 2, back to back: the scale-out goal is their ratio, so both are
            # measured under the same load of this shared machine (B1's figure, minutes earlier,
            # gave 2p/1p 3.03x on 2 cores once: the machine, not the broker).
            res["B6"] = {}
            for key, procs in (("procs1", 1), ("procs2", 2)):
                res["B6"][key] = await with_target(
                    BrokerTarget(f"broker-{procs}p", auth.url, src=snap, server=cfg.prod,
                                 procs=procs),
                    lambda t: fanout(t, cfg.b6_size, cfg))
        if want("B7"):
            res["B7"] = {}
            for name in among("B7"):
                t = mk(name)
                if t is not None:
                    res["B7"][t.name] = await with_target(t, lambda t: ingestion(t, cfg))
    finally:
        auth.stop()
        if prev:
            shutil.rmtree(prev, ignore_errors=True)
        shutil.rmtree(snap, ignore_errors=True)
    res["loadavg_end"] = loadavg()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return res


# Every target --targets accepts, and every scenario --only accepts; anything else is an error
# (a misspelt name used to run nothing, silently).
TARGETS = ("daphne", "uvicorn", "asgi", "nopresence", "classic", "prev", "ht", "raw",
           "rawauth", "rawtrigger")
SCENARIOS = ("B1", "B1h", "B2", "B3", "B4", "B5", "B6", "B7")
# Names people reach for that are spelt otherwise here (the results call High-templar
# "hightemplar"; the target is "ht").
ALIAS_HINTS = {"hightemplar": "ht", "high-templar": "ht", "broker": "uvicorn"}


# Which targets take part in which scenario (the others are skipped there): raw is the limit of
# B1 and B4, rawauth of B3, rawtrigger of B7.
SCENARIO_TARGETS: dict[str, tuple[str, ...]] = {
    "B1": ("daphne", "uvicorn", "asgi", "nopresence", "classic", "prev", "ht", "raw"),
    "B1h": (), "B5": (), "B6": (),  # the production server, whatever --targets says
    "B2": ("daphne", "uvicorn", "classic"),
    "B3": ("daphne", "uvicorn", "asgi", "nopresence", "prev", "ht", "rawauth"),
    "B4": ("daphne", "uvicorn", "asgi", "nopresence", "ht", "raw"),
    "B7": ("daphne", "uvicorn", "prev", "classic", "rawtrigger"),
}


def check_names(ap: argparse.ArgumentParser, cfg: argparse.Namespace) -> None:
    """Exit non-zero (argparse's usage error, status 2) on an unknown target or scenario."""
    bad = [t for t in cfg.targets if t not in TARGETS]
    if bad or not cfg.targets:
        hints = "".join(f" ('{t}': did you mean '{ALIAS_HINTS[t]}'?)" for t in bad
                        if t in ALIAS_HINTS)
        ap.error(f"unknown target(s) {', '.join(bad) or '(none given)'}{hints}; valid targets: "
                 f"{', '.join(TARGETS)}")
    bad = [s for s in cfg.only if s not in SCENARIOS]
    if bad or not cfg.only:
        ap.error(f"unknown scenario(s) {', '.join(bad) or '(none given)'} in --only; valid "
                 f"scenarios: {', '.join(SCENARIOS)}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced sizes, one run (< 5 min)")
    ap.add_argument("--only", default="B1,B1h,B2,B3,B4,B5,B6,B7")
    ap.add_argument("--targets", default="daphne,uvicorn,prev,ht,raw,rawauth,rawtrigger",
                    help="daphne/uvicorn: this tree under that server; prev: --prev under "
                         "--prod; raw, rawauth, rawtrigger: the Python limits (B1/B4, B3, B7)")
    ap.add_argument("--prev", default="HEAD~1",
                    help="the commit the 'prev' target runs (default HEAD~1), e.g. the one "
                         "before a series of commits")
    ap.add_argument("--prod", default=PRODUCTION_SERVER, choices=("uvicorn", "daphne"),
                    help="the server the goals are checked on (docs/performance.md)")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--out", help="JSON file (default bench/results/<mode>-<time>.json)")
    ap.add_argument("--sizes", help="override every size with one number")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds, tiny sizes: the scenarios run and deliver everything")
    cfg = ap.parse_args(argv)
    cfg.only = [s.strip() for s in cfg.only.split(",") if s.strip()]
    cfg.targets = [t.strip() for t in cfg.targets.split(",") if t.strip()]
    check_names(ap, cfg)
    q = cfg.quick
    cfg.runs = cfg.runs or (1 if q else 3)
    cfg.workers = 2
    cfg.step_s = 1.2 if q else 2.0
    cfg.lat_s = 1.5 if q else 3.0
    cfg.max_steps = 8
    cfg.start_msgs = 5000
    cfg.trigger_conns = 16
    cfg.storm_concurrency = 200
    cfg.b1_sizes = [500] if q else [1000, 5000]
    cfg.b2_sizes = [200, 1000] if q else [1000, 10000]
    # quick: 1,000 connects (issue 13's storm); 300 took 0.2 s at today's rates, too short to time
    cfg.b3_clients = 1000 if q else 2000
    cfg.b4_conns = 600 if q else 10000
    cfg.b5_size = 300 if q else 1000
    cfg.b6_size = 500 if q else 5000
    cfg.settle_s = 2.0  # B4: the server settles before each RSS reading
    if cfg.smoke:
        cfg.runs, cfg.step_s, cfg.lat_s, cfg.max_steps = 1, 0.5, 0.5, 2
        cfg.start_msgs = 400
        cfg.b1_sizes, cfg.b2_sizes = [20], [20, 40]
        cfg.b3_clients = cfg.b4_conns = cfg.b5_size = cfg.b6_size = 20
        cfg.settle_s = 0.3
    if cfg.sizes:
        s = int(cfg.sizes)
        cfg.b1_sizes = [s]
        cfg.b2_sizes = [s]
        cfg.b3_clients = cfg.b4_conns = cfg.b5_size = cfg.b6_size = s
    cfg.b1h_sizes = cfg.b1_sizes
    return cfg


def run(argv: list[str] | None = None) -> dict:
    cfg = parse(argv)
    t0 = time.monotonic()
    res = uvloop.run(main(cfg))
    res["duration_s"] = round(time.monotonic() - t0, 1)
    import report

    out = Path(cfg.out) if cfg.out else BENCH / "results" / (
        f"{res['mode']}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(report.table(res))
    print(f"\nJSON: {out}  ({res['duration_s']} s, load {res['loadavg_start']} -> "
          f"{res['loadavg_end']})")
    return res


if __name__ == "__main__":
    run()
