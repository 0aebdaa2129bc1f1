"""The garbage collector's policy in a process that serves clients.

CPython collects its youngest objects often and all of them (generation 2, a walk of every
object of the process) once every 10 collections of generation 1, when the heap has grown by a
quarter since the last full one. A connect storm grows the heap fast, with a hundred or more
objects per connection: full collections then cost about as much as everything else a connect
does (docs/performance.md, B3), and each is a pause of every connection's deliveries (the tail
of B1's latency). ``serve_policy`` makes them rarer (BROKER_GC_FULL_EVERY) and shorter: what
the process holds when it starts serving (its modules, Django, the settings: most of its
objects) is frozen out of every later collection (``gc.freeze``); young objects are collected
as often as before, so short-lived cycles go as soon as they did.
"""

from __future__ import annotations

import gc


def serve_policy(full_every: int) -> None:
    """A full collection at most once every ``full_every`` generation-1 collections, of what
    was made since this call (0: leave the interpreter's setting)."""
    if full_every > 0:
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, full_every)
        gc.freeze()  # what exists now lives as long as the process: never walked again
