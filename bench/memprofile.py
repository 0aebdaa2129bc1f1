"""What one idle connection holds in the broker: a tracemalloc diff of N vs 2N connections.

    .venv/bin/python bench/memprofile.py [--conns 1000] [--server uvicorn] [--ws IMPL] [--top 30]

The broker (this tree, under the bench's uvicorn flags, private Redis, the bench auth API)
runs with ``PYTHONTRACEMALLOC`` and ``bench/memhook/sitecustomize.py``, which writes a snapshot
on SIGUSR1. The load generator opens N connections with two subscriptions each (``{"user": i}``
and one room they share, as B4), a snapshot is taken, N more, a second snapshot. The difference
divided by N is what one more idle connection costs, by file and by line, ours and the
server's. (Python allocations only: RSS adds the kernel's socket buffers and the allocator's
slack; B4 measures that.) Writes bench/results/memprofile-<server>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402

import lib  # noqa: E402
from runner import AuthServer  # noqa: E402

SITE = lib.BENCH / "memhook"


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.relpath(path, lib.ROOT)


def report(before: Path, after: Path, n: int, top: int) -> str:
    a, b = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    out = []
    for key in ("filename", "lineno"):
        stats = b.compare_to(a, key)
        total = sum(s.size_diff for s in stats)
        if key == "filename":
            out.append(f"per idle connection: {total / n:.0f} B of Python allocations "
                       f"({total / n / 1024:.1f} KiB), {sum(s.count_diff for s in stats) / n:.0f}"
                       " objects")
        out.append(f"\nby {key}:")
        for s in stats[:top]:
            frame = s.traceback[0]
            where = _short(frame.filename) + (f":{frame.lineno}" if key == "lineno" else "")
            out.append(f"  {s.size_diff / n:7.0f} B {s.count_diff / n:6.2f} obj  {where}")
    return "\n".join(out)


async def main(a: argparse.Namespace) -> None:
    lib.ensure_node_ws(print)
    auth = AuthServer(0.0)
    snaps = Path(tempfile.mkdtemp(prefix="memprof-"))
    os.environ["BENCH_EXTRA_PYTHONPATH"] = str(SITE)  # lib.broker_env adds it
    t = lib.BrokerTarget("mem", auth.url, server=a.server, ws=a.ws, env={
        "PYTHONTRACEMALLOC": str(a.depth), "BENCH_SNAPSHOT_DIR": str(snaps)})
    t.start()
    try:
        pid = t.procs[0].pid

        async def snapshot(k: int) -> Path:
            await asyncio.sleep(2)  # the last welcomes and subscriptions settle
            os.kill(pid, signal.SIGUSR1)
            dest = snaps / f"{k}.snap"
            while not dest.exists():
                await asyncio.sleep(0.2)
            return dest

        first = lib.Clients(t.ws_urls, a.conns, subs="two", concurrency=64, offset=1000)
        await first.start()
        before = await snapshot(0)
        second = lib.Clients(t.ws_urls, a.conns, subs="two", concurrency=64,
                             offset=1000 + a.conns)
        await second.start()
        after = await snapshot(1)
        server = a.server + (f" --ws {a.ws}" if a.ws else "")
        text = f"{server}, {a.conns} -> {2 * a.conns} idle connections\n" + report(
            before, after, a.conns, a.top)
        await second.close()
        await first.close()
        dest = lib.BENCH / "results" / f"memprofile-{a.server}{'-' + a.ws if a.ws else ''}.txt"
        dest.parent.mkdir(exist_ok=True)
        dest.write_text(text + "\n")
        print(text)
        print(f"\n{dest}")
    finally:
        t.stop()
        auth.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--server", default="uvicorn")
    ap.add_argument("--ws", help="uvicorn's --ws (default: the production one, the edge)")
    ap.add_argument("--depth", type=int, default=1, help="frames kept per allocation")
    ap.add_argument("--top", type=int, default=30)
    uvloop.run(main(ap.parse_args()))
