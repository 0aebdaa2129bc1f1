"""Loaded by bench/memprofile.py into the broker process (PYTHONPATH): SIGUSR1 writes a
tracemalloc snapshot (tracemalloc itself is started by PYTHONTRACEMALLOC) to
``$BENCH_SNAPSHOT_DIR/<n>.snap``, after a full collection."""

import itertools
import os
import signal
import tracemalloc

_count = itertools.count()


def _snapshot(signum, frame):  # noqa: ANN001, ARG001 - a signal handler
    import gc

    gc.collect()
    dest = os.path.join(os.environ["BENCH_SNAPSHOT_DIR"], f"{next(_count)}.snap")
    tracemalloc.take_snapshot().dump(dest + ".part")
    os.rename(dest + ".part", dest)


if os.environ.get("BENCH_SNAPSHOT_DIR"):
    signal.signal(signal.SIGUSR1, _snapshot)
