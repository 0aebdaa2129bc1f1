"""One table of figures and ratios from a bench/run result (also: ``python bench/report.py F``),
and the issue's goals, each checked against ratios measured in the same run."""

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
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"


def _r(a: Any, b: Any) -> Any:
    if a is None or b is None or not b:
        return None
    return a / b


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def goals(res: dict) -> list[tuple[str, Any, str, bool | None]]:
    """(goal, measured, threshold, met) for each goal of issue 6."""
    out: list[tuple[str, Any, str, bool | None]] = []
    prod = res.get("production_server", "uvicorn")
    sizes = sorted(int(k) for k in (_g(res, "B1", prod) or {}).keys())
    for n in sizes:
        b = _g(res, "B1", prod, str(n), "saturation_msgs_s")
        r = _r(b, _g(res, "B1", "hightemplar", str(n), "saturation_msgs_s"))
        out.append((f"B1 n={n} delivered/s vs High-templar", r, ">= 3x",
                    None if r is None else r >= 3))
        r = _r(b, _g(res, "B1", "raw", str(n), "saturation_msgs_s"))
        out.append((f"B1 n={n} delivered/s vs raw", r, ">= 0.5x",
                    None if r is None else r >= 0.5))
    p99 = _g(res, "B1", prod, "1000", "p99_ms")
    out.append(("B1 n=1000 p99 at half saturation (ms)", p99, "<= 10 ms",
                None if p99 is None else p99 <= 10))
    b2 = _g(res, "B2", prod) or {}
    ks = sorted(int(k) for k in b2 if isinstance(b2[k], dict))
    if len(ks) >= 2:
        r = _r(_g(b2, str(ks[-1]), "triggers_s"), _g(b2, str(ks[0]), "triggers_s"))
        out.append((f"B2 triggers/s at {ks[-1]} vs {ks[0]}", r, ">= 0.7x",
                    None if r is None else r >= 0.7))
    r = _r(_g(res, "B3", prod, "conns_s"), _g(res, "B3", "hightemplar", "conns_s"))
    out.append(("B3 connections/s vs High-templar", r, ">= 2x", None if r is None else r >= 2))
    kib = _g(res, "B4", prod, "kib_per_conn")
    out.append((f"B4 KiB/conn under {prod}", kib, "<= 30 KiB",
                None if kib is None else kib <= 30))
    r = _r(_g(res, "B6", "procs2", "saturation_msgs_s"), _g(res, "B6", "procs1",
                                                            "saturation_msgs_s"))
    out.append(("B6 2 procs vs 1 proc", r, ">= 1.5x", None if r is None else r >= 1.5))
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
                            ("p50 ms @ half sat", "p50_ms"), ("p99 ms @ half sat", "p99_ms")):
            row(f"B1 {n} subs", metric, key, {t: _g(b1, t, n, key) for t in b1})
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
    b3 = res.get("B3") or {}
    row("B3 storm", "connections/s", "conns_s", {t: _g(b3, t, "conns_s") for t in b3})
    row("B3 storm", "auth max in flight", "", {t: _g(b3, t, "auth_max_in_flight") for t in b3})
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
    row("B7 ingestion", "/trigger req/s", "", {t: _g(b7, t, "trigger_req_s") for t in b7})
    row("B7 ingestion", "publish_sync() calls/s", "",
        {t: _g(b7, t, "publish_sync_calls_s") for t in b7})

    rows = [r + [""] * (len(rows[0]) - len(r)) for r in rows]  # short rows (B6, B1h, errors)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("Goals (ratios from this run):")
    for name, val, thr, met in goals(res):
        mark = "n/a " if met is None else ("MET " if met else "MISS")
        v = "-" if val is None else (f"{val:.2f}")
        lines.append(f"  [{mark}] {name}: {v} (goal {thr})")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(open(sys.argv[1]).read())))
