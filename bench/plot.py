"""Plots for docs/performance.md from one bench/run result.

    .venv/bin/python bench/plot.py bench/results/full-....json [docs/img]

b1-ramp.png: B1 offered vs delivered messages/s per target (every step of every run): where
each server saturates. connect-memory.png: B3 connections/s and B4 KiB per connection.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"uvicorn": "tab:blue", "daphne": "tab:cyan", "prev": "tab:gray",
          "hightemplar": "tab:red", "raw": "tab:green", "rawauth": "tab:olive",
          "rawtrigger": "tab:olive", "classic": "tab:purple"}


def b1_ramp(res: dict, out: Path) -> None:
    b1 = res.get("B1") or {}
    sizes = sorted({k for t in b1.values() for k in t}, key=int)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        top = 0
        for target, per in b1.items():
            r = per.get(n) or {}
            xs, ys = [], []
            for run in r.get("runs", []):
                for s in run["steps"]:
                    xs.append(s["offered_msgs_s"])
                    ys.append(s["delivered_msgs_s"])
            if xs:
                top = max(top, max(xs))
                ax.scatter(xs, ys, s=18, color=COLORS.get(target), label=target, alpha=0.8)
                sat = r.get("saturation_msgs_s")
                if sat:
                    ax.axhline(sat, color=COLORS.get(target), lw=0.8, ls=":")
        ax.plot([0, top], [0, top], color="black", lw=0.6, ls="--", label="delivered = offered")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered messages/s (triggers/s x subscribers)")
        ax.set_ylabel("delivered messages/s")
        ax.set_title(f"B1 broadcast fan-out, {n} subscribers, 200-byte payloads")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{res.get('mode')} run {res.get('started')}, 2 shared cores, "
                 f"load {res.get('loadavg_start')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "b1-ramp.png", dpi=110)


def connect_memory(res: dict, out: Path) -> None:
    b3, b4 = res.get("B3") or {}, res.get("B4") or {}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = [t for t in b3 if b3[t].get("conns_s")]
    a.bar(names, [b3[t]["conns_s"] for t in names],
          color=[COLORS.get(t, "tab:gray") for t in names])
    a.set_title(f"B3 connect storm ({res['config'].get('b3_clients')} clients, auth API 5 ms)")
    a.set_ylabel("connections/s")
    names = [t for t in b4 if b4[t].get("kib_per_conn")]
    b.bar(names, [b4[t]["kib_per_conn"] for t in names],
          color=[COLORS.get(t, "tab:gray") for t in names])
    b.axhline(30, color="black", ls="--", lw=0.8, label="goal 30 KiB")
    b.set_title(f"B4 idle memory ({res['config'].get('b4_conns')} conns x 2 subscriptions)")
    b.set_ylabel("KiB of server RSS per connection")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "connect-memory.png", dpi=110)


if __name__ == "__main__":
    res = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent.parent / \
        "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    b1_ramp(res, out)
    connect_memory(res, out)
    print(f"wrote {out}/b1-ramp.png, {out}/connect-memory.png")
