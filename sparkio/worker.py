"""What a Spark Python worker keeps between tasks: models, tokenizers and rules built once per
process and reused by every task the worker runs.

A reused worker (`spark.python.worker.reuse`, the default) runs a full garbage collection after
every task. Once torch, transformers and a model are loaded that sweep walks some 530k objects:
0.23 s a task on 2 cores, whatever the task's size, and a stage's tasks pay it one after another.
Everything built here lives as long as the worker, so after building it the worker collects once
and freezes its heap (`gc.freeze`): later sweeps skip those objects and take ~0 s. Objects made
afterwards are collected as before. The driver is left alone: its heap holds data that comes and
goes between Spark jobs. A worker freezes a handful of times (once per thing it builds), so what the
running task holds then and later drops inside a reference cycle stays until the worker ends: a
bounded cost, against a sweep after every task.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Hashable, MutableMapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def in_task() -> bool:
    """Whether this code runs inside a Spark task (a Python worker), not in the driver."""
    from pyspark import TaskContext

    return TaskContext.get() is not None


def settle_heap() -> None:
    """In a Python worker: collect once, then take every live object out of later collections."""
    if in_task():
        gc.collect()
        gc.freeze()


_settled = False


def settle_once() -> None:
    """`settle_heap` the first time this process calls it: for workers that build nothing of
    their own and only carry their imports (the Delta source's readers and writers)."""
    global _settled
    if not _settled:
        _settled = True
        settle_heap()


def per_process(cache: MutableMapping[K, V], key: K, build: Callable[[], V]) -> V:
    """`cache[key]`, built by `build()` the first time this process asks for it."""
    if key not in cache:
        cache[key] = build()
        settle_heap()
    return cache[key]
