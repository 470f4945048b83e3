"""Per-process state of Spark's Python workers (sparkio.worker): built once, and frozen out of the
garbage collector's sweeps in a worker (which sweeps after every task), never in the driver."""

from __future__ import annotations

import gc
from collections.abc import Iterator

from sparkio.worker import per_process


def test_state_is_built_once_per_process():
    cache: dict[str, object] = {}
    built = per_process(cache, "model", object)
    assert per_process(cache, "model", lambda: 1 / 0) is built  # not built again
    assert per_process(cache, "other", object) is not built


def test_a_worker_freezes_what_it_built_and_the_driver_does_not(spark):
    frozen = gc.get_freeze_count()
    per_process({}, "model", lambda: [[i] for i in range(1000)])
    assert gc.get_freeze_count() == frozen  # the driver's heap comes and goes: left alone

    def task(_: Iterator[int]) -> Iterator[tuple[int, int, bool]]:
        import gc

        from sparkio.worker import per_process

        before = gc.get_freeze_count()
        state = per_process({}, "model", lambda: [[i] for i in range(1000)])
        yield before, gc.get_freeze_count(), gc.is_tracked(state)

    [(before, after, tracked)] = spark.sparkContext.parallelize([0], 1).mapPartitions(task).collect()
    # Everything alive after the build (its 1,001 lists included) is in the permanent generation.
    assert after >= before + 1001 and tracked
