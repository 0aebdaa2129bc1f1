"""broker.collector: a serving process runs full garbage collections rarely
(BROKER_GC_FULL_EVERY), young ones as often as the interpreter does."""

import gc

from broker.collector import serve_policy
from broker.conf import Settings


def test_full_collections_every_n_younger_ones_and_young_ones_untouched() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        serve_policy(Settings().BROKER_GC_FULL_EVERY)
        assert gc.get_threshold() == (before[0], before[1], 100)
        assert gc.get_freeze_count() > 1000  # the process's objects, out of every collection
        serve_policy(0)  # 0: left as it is
        assert gc.get_threshold() == (before[0], before[1], 100)
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
