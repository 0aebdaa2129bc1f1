"""One table of figures and ratios from a bench/run result (also: ``python bench/report.py F``),
and the goals of issue 13 ("The fast edge"), each a ratio against the Python limit measured in
the same run: the raw broadcast server (B1, B4, B1 latency), the raw server with the broker's
auth call (rawauth, B3), the bare ASGI trigger app (rawtrigger, B7). A goal whose figures are
missing from the run is "not measured", never met."""

from __future__ import annotations

import json
import sys
from typing import Any


def _g(d: Any, *path: Any) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"


def _r(a: Any, b: Any) -> Any:
    """a / b where both are figures (not None, not a word such as "unsupported")."""
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return a / b


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


class Goal:
    """One goal of issue 13: the broker's figure against a baseline's, or an absolute bound."""

    def __init__(self, name: str, broker: Any, baseline: Any, target: str, *,
                 at_least: float | None = None, at_most: float | None = None,
                 absolute: bool = False, why: str | None = None) -> None:
        self.name, self.broker, self.baseline, self.target = name, broker, baseline, target
        self.why = why
        num = isinstance(broker, (int, float)) and not isinstance(broker, bool)
        base = isinstance(baseline, (int, float)) and not isinstance(baseline, bool)
        self.ratio = broker / baseline if num and base and baseline else None
        value = (broker if num else None) if absolute else self.ratio
        if isinstance(broker, str) and broker == "unsupported":
            self.met: bool | None = False  # measured: the broker refuses the batch form
        elif value is None:
            self.met = None
        else:
            self.met = ((at_least is None or value >= at_least)
                        and (at_most is None or value <= at_most))

    @property
    def status(self) -> str:
        if self.met is None:
            return "not measured"
        return "met" if self.met else "missed"


def _sat(res: dict, target: str, n: int | str) -> Any:
    return _g(res, "B1", target, str(n), "saturation_msgs_s")


def issue13_goals(res: dict) -> list[Goal]:
    """Every goal of issue 13, as measured in this run (docs/performance.md)."""
    prod = res.get("production_server", "uvicorn")
    out: list[Goal] = []
    sizes: list[Any] = sorted({int(k) for t in ((_g(res, "B1") or {}).values())
                               if isinstance(t, dict) for k in t}) or ["-"]  # B1 did not run
    for n in sizes:
        out.append(Goal(f"fan-out: B1 {n} subs, delivered msgs/s, {prod} / raw",
                        _sat(res, prod, n), _sat(res, "raw", n), ">= 0.6x", at_least=0.6))
    b3, b3a, b3h = (_g(res, "B3", t, "conns_s") for t in (prod, "rawauth", "hightemplar"))
    out.append(Goal(f"connects: B3 storm, conns/s, {prod} / rawauth", b3, b3a, ">= 0.6x",
                    at_least=0.6))
    out.append(Goal(f"connects: B3 storm, conns/s, {prod} / High-templar", b3, b3h, ">= 2x",
                    at_least=2))
    def answered(t: str) -> tuple[Any, str | None]:
        """B7's req/s of ``t``, unless some answers were not 202 (then req/s counts refusals)."""
        b7 = _g(res, "B7", t) or {}
        if b7.get("answered_all") is False:
            return None, f"{t}: {b7.get('trigger_errors')} /trigger answers were not 202"
        return b7.get("trigger_req_s"), None

    (b7, why_b), (b7r, why_r) = answered(prod), answered("rawtrigger")
    out.append(Goal(f"ingestion: B7 /trigger req/s, {prod} / rawtrigger", b7, b7r, ">= 0.6x",
                    at_least=0.6, why=why_b or why_r))
    batch = _g(res, "B7", prod, "batch") or {}
    figure = "unsupported" if batch.get("unsupported") else batch.get("triggers_s")
    out.append(Goal(f"ingestion: B7 batch of 100, triggers/s, {prod} (rawtrigger for scale)",
                    figure, _g(res, "B7", "rawtrigger", "batch", "triggers_s"),
                    ">= 10,000/s", at_least=10_000, absolute=True))
    out.append(Goal(f"memory: B4 idle, KiB/conn, {prod} / raw",
                    _g(res, "B4", prod, "kib_per_conn"), _g(res, "B4", "raw", "kib_per_conn"),
                    "<= 1.4x", at_most=1.4))
    for n in sizes:
        at = _g(res, "B1", "raw", str(n), "at_rate") or {}
        rate = at.get("rate")
        out.append(Goal(f"latency: B1 {n} subs, p99 ms at {prod}'s half saturation"
                        + (f" ({rate:g} trig/s)" if rate else "") + f", {prod} / raw",
                        _g(res, "B1", prod, str(n), "p99_ms"), at.get("p99_ms"), "<= 2x",
                        at_most=2, why=at.get("skipped")))
    out.append(Goal(f"scale-out: B6 delivered msgs/s, 2 procs / 1 proc ({prod})",
                    _g(res, "B6", "procs2", "saturation_msgs_s"),
                    _g(res, "B6", "procs1", "saturation_msgs_s"), ">= 1.8x", at_least=1.8))
    return out


def presence_cost(res: dict) -> list[str]:
    """What presence costs (issue 14): the production server beside itself with
    BROKER_PRESENCE=false, same run (B3 means something with BENCH_AUTH_LOGINS=1)."""
    prod = res.get("production_server", "uvicorn")
    rows = []
    for n in sorted(_g(res, "B1", prod) or {}, key=int):
        off = _sat(res, "nopresence", n)
        if off:
            rows.append(f"  B1 {n} subs, delivered msgs/s: {_f(_sat(res, prod, n))} with, "
                        f"{_f(off)} without: {_x(_sat(res, prod, n) / off)}")
    on, off = (_g(res, "B3", t, "conns_s") for t in (prod, "nopresence"))
    if on and off:
        rows.append(f"  B3 storm, conns/s: {_f(on)} with, {_f(off)} without: {_x(on / off)}"
                    f" (logins: {'yes' if res.get('auth_logins') else 'no'})")
    on, off = (_g(res, "B4", t, "kib_per_conn") for t in (prod, "nopresence"))
    if on and off:
        rows.append(f"  B4 idle, KiB/conn: {_f(on)} with, {_f(off)} without: {_x(on / off)}")
    return ["", "Presence cost (issue 14), with / without, same run:", *rows] if rows else []


def goals_table(res: dict) -> str:
    rows = [["goal", "broker", "baseline", "ratio", "target", "status"]]
    notes = []
    for g in issue13_goals(res):
        rows.append([g.name, _f(g.broker), _f(g.baseline), _x(g.ratio), g.target,
                     g.status])
        if g.why and g.met is None:
            notes.append(f"  {g.name}: {g.why}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(["Goals (issue 13): each against the Python limit measured in this run",
                      *lines, *notes])


def goals(res: dict) -> list[tuple[str, Any, str, bool | None]]:
    """(goal, measured, threshold, met) for the goals of issue 6 that issue 13 did not
    tighten (those are in ``issue13_goals``)."""
    out: list[tuple[str, Any, str, bool | None]] = []
    prod = res.get("production_server", "uvicorn")
    sizes = sorted(int(k) for k in (_g(res, "B1", prod) or {}).keys())
    for n in sizes:
        b = _g(res, "B1", prod, str(n), "saturation_msgs_s")
        r = _r(b, _g(res, "B1", "hightemplar", str(n), "saturation_msgs_s"))
        out.append((f"B1 n={n} delivered/s vs High-templar", r, ">= 3x",
                    None if r is None else r >= 3))
    p99 = _g(res, "B1", prod, "1000", "p99_ms")
    out.append(("B1 n=1000 p99 at half saturation (ms)", p99, "<= 10 ms",
                None if p99 is None else p99 <= 10))
    b2 = _g(res, "B2", prod) or {}
    ks = sorted(int(k) for k in b2 if isinstance(b2[k], dict))
    if len(ks) >= 2:
        r = _r(_g(b2, str(ks[-1]), "triggers_s"), _g(b2, str(ks[0]), "triggers_s"))
        out.append((f"B2 triggers/s at {ks[-1]} vs {ks[0]}", r, ">= 0.7x",
                    None if r is None else r >= 0.7))
    kib = _g(res, "B4", prod, "kib_per_conn")
    out.append((f"B4 KiB/conn under {prod}", kib, "<= 30 KiB",
                None if kib is None else kib <= 30))
    return out


def table(res: dict) -> str:
    prod = res.get("production_server", "uvicorn")
    cols = ["daphne", "uvicorn", "prev", "hightemplar", "raw"]
    if any("classic" in (res.get(k) or {}) for k in ("B1", "B2", "B7")):
        cols.insert(2, "classic")
    rows: list[list[str]] = [["scenario", "metric", *cols, f"{prod}/HT", f"{prod}/raw",
                              f"{prod}/prev"]]

    def row(scn: str, metric: str, key: str, vals: dict) -> None:
        b, p, h, w = (vals.get(t) for t in (prod, "prev", "hightemplar", "raw"))
        rows.append([scn, metric, *(_f(vals.get(c)) for c in cols), _x(_r(b, h)),
                     _x(_r(b, w)), _x(_r(b, p))])

    b1 = res.get("B1") or {}
    sizes = sorted({k for t in b1.values() if isinstance(t, dict) for k in t})
    for n in sorted(sizes, key=int):
        for metric, key in (("delivered msgs/s", "saturation_msgs_s"),
                            ("server CPU us/msg @ sat", "cpu_us_per_msg"),
                            ("p50 ms @ half sat", "p50_ms"), ("p99 ms @ half sat", "p99_ms")):
            row(f"B1 {n} subs", metric, key, {t: _g(b1, t, n, key) for t in b1})
        if _g(b1, "raw", n, "at_rate", "p99_ms") is not None:  # the latency goal's pair
            row(f"B1 {n} subs", f"p99 ms @ {prod}'s half-sat rate", "",
                {prod: _g(b1, prod, n, "p99_ms"), "raw": _g(b1, "raw", n, "at_rate", "p99_ms")})
        errs = {t: _g(b1, t, n, "error") for t in b1 if _g(b1, t, n, "error")}
        for t, e in errs.items():
            rows.append([f"B1 {n} subs", f"{t}: error", e[:60], *[""] * 7])
    b1h = res.get("B1h") or {}
    for n in sorted(b1h, key=int):
        h = b1h[n]
        for metric, key in (("delivered msgs/s", "saturation_msgs_s"),
                            ("p50 ms @ half sat", "p50_ms"), ("p99 ms @ half sat", "p99_ms")):
            rows.append([f"B1h {n} subs", f"{metric} plain / history ({h.get('server', prod)})",
                         f"{_f(_g(h, 'plain', key))} / {_f(_g(h, 'history', key))}",
                         "", "", "", "", "", "", f"hist/plain {_x(h.get(key + '_ratio'))}"])
        for v in ("plain", "history"):
            if _g(h, v, "error"):
                rows.append([f"B1h {n} subs", f"{v}: error", h[v]["error"][:60], *[""] * 7])
    b2 = res.get("B2") or {}
    for n in sorted({k for t in b2.values() if isinstance(t, dict) for k in t}, key=int):
        for metric, key in (("triggers/s", "triggers_s"), ("p50 ms @ half", "p50_ms"),
                            ("p99 ms @ half", "p99_ms")):
            row(f"B2 {n} rooms", metric, key, {t: _g(b2, t, n, key) for t in b2})
    def limit(vals: dict, name: str) -> dict:
        """The scenario's Python limit (rawauth, rawtrigger) in the raw column."""
        vals = dict(vals)
        if name in vals:
            vals["raw"] = vals.pop(name)
        return vals

    b3 = res.get("B3") or {}
    if b3:
        row("B3 storm", "connections/s", "conns_s",
            limit({t: _g(b3, t, "conns_s") for t in b3}, "rawauth"))
        row("B3 storm", "auth max in flight", "",
            limit({t: _g(b3, t, "auth_max_in_flight") for t in b3}, "rawauth"))
    b4 = res.get("B4") or {}
    if b4:
        row("B4 idle", "KiB per connection", "", {t: _g(b4, t, "kib_per_conn") for t in b4})
    b5 = res.get("B5") or {}
    if "error" in b5:
        rows.append(["B5 STOMP gate", "status", b5["error"][:60], *[""] * 7])
    elif b5:
        for metric, key in (("delivered msgs/s", "saturation_msgs_s"), ("p50 ms", "p50_ms"),
                            ("p99 ms", "p99_ms")):
            row(f"B5 {b5.get('subscribers')} STOMP", metric, key, {prod: b5.get(key)})
    b6 = res.get("B6") or {}
    if b6:
        one, two = _g(b6, "procs1", "saturation_msgs_s"), _g(b6, "procs2", "saturation_msgs_s")
        rows.append(["B6 scale-out", f"msgs/s 1 proc / 2 procs ({prod})",
                     f"{_f(one)} / {_f(two)}", "", "", "", "", "", "",
                     f"2p/1p {_x(_r(two, one))}"])
    b7 = res.get("B7") or {}

    def batch(t: str) -> Any:
        b = _g(b7, t, "batch") or {}
        return "unsupported" if b.get("unsupported") else b.get("triggers_s")
    if b7:
        row("B7 ingestion", "/trigger req/s", "",
            limit({t: _g(b7, t, "trigger_req_s") for t in b7}, "rawtrigger"))
        row("B7 ingestion", "/trigger server CPU us/req", "",
            limit({t: _g(b7, t, "cpu_us_per_trigger") for t in b7}, "rawtrigger"))
        row("B7 ingestion", "batch of 100: triggers/s", "",
            limit({t: batch(t) for t in b7}, "rawtrigger"))
        row("B7 ingestion", "batch: server CPU us/trigger", "",
            limit({t: _g(b7, t, "batch", "cpu_us_per_trigger") for t in b7}, "rawtrigger"))
        row("B7 ingestion", "publish_sync() calls/s", "",
            {t: _g(b7, t, "publish_sync_calls_s") for t in b7})

    rows = [r + [""] * (len(rows[0]) - len(r)) for r in rows]  # short rows (B6, B1h, errors)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("raw: the Python limit of each scenario, same run: the raw websockets server "
                 "(B1, B4), rawauth (B3), rawtrigger (B7)")
    lines.append("")
    lines.append(goals_table(res))
    lines.extend(presence_cost(res))
    lines.append("")
    lines.append("Earlier goals (issue 6), ratios from this run:")
    for name, val, thr, met in goals(res):
        mark = "n/a " if met is None else ("MET " if met else "MISS")
        v = "-" if val is None else (f"{val:.2f}")
        lines.append(f"  [{mark}] {name}: {v} (goal {thr})")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(open(sys.argv[1]).read())))
