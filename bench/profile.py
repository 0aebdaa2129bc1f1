"""Profile the broker under a B1-style load with py-spy: where do the server's cycles go?

    .venv/bin/python bench/profile.py [--subs 1000] [--rate 5] [--seconds 10]
        [--server daphne|uvicorn] [--scenario fanout|targeted|storm] [--history]

--history: the B1 room keeps history and every trigger asks for it (runner.B1H_VARIANTS);
--tag: a suffix of the output file names.

Writes bench/results/profile-<scenario>-<server>.txt: the top functions by own time and by
inclusive time (from py-spy's collapsed stacks), and the .collapsed file itself (feed it to
speedscope or flamegraph.pl for a picture).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402

import lib  # noqa: E402
from runner import B1H_VARIANTS, AuthServer, closed_loop, paced  # noqa: E402

PYSPY = str(lib.ROOT / ".venv" / "bin" / "py-spy")


def summarize(collapsed: Path, top: int = 40) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        k = int(n)
        total += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    out = [f"samples: {total}", "", "own time:"]
    out += [f"  {100 * v / total:5.1f}%  {f}" for f, v in own.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {100 * v / total:5.1f}%  {f}" for f, v in incl.most_common(top)]
    return "\n".join(out)


async def main(a: argparse.Namespace) -> None:
    auth = AuthServer(5.0)
    t = lib.BrokerTarget("prof", auth.url, server=a.server,
                         **B1H_VARIANTS["history" if a.history else "plain"])
    t.start()
    try:
        subs = {"fanout": "same", "targeted": "own", "storm": "none"}[a.scenario]
        clients = lib.Clients(t.ws_urls, a.subs, subs=subs, concurrency=200,
                              wait_go=a.scenario == "storm")
        await clients.start()
        pid = t.procs[0].pid
        tag = a.tag if a.tag is not None else ("-history" if a.history else "")
        out = lib.BENCH / "results" / f"profile-{a.scenario}-{a.server}{tag}.collapsed"
        spy = subprocess.Popen([PYSPY, "record", "--pid", str(pid), "--duration",
                                str(a.seconds), "--rate", "200", "--format", "raw",
                                "--output", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
        if a.scenario == "storm":
            await clients.go()
            await clients.wait_ready()
        else:
            trig = t.trigger(conns=16)
            await trig.start()
            if a.scenario == "fanout":
                await paced(trig, a.rate, int(a.rate * (a.seconds - 2)))
            else:
                await closed_loop(trig, 16, a.seconds - 2,
                                  lambda: f'[{{"user":{random.randrange(a.subs)}}}]')
            await trig.close()
        spy.wait(a.seconds + 30)
        await clients.close()
        text = summarize(out)
        dest = out.with_suffix(".txt")
        dest.write_text(text)
        print(text[:6000])
        print(f"\n{dest}")
    finally:
        t.stop()
        auth.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--server", default="daphne")
    ap.add_argument("--scenario", default="fanout")
    ap.add_argument("--history", action="store_true")
    ap.add_argument("--tag", help="suffix of the output names (default: -history or none)")
    uvloop.run(main(ap.parse_args()))
