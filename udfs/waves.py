"""A long LLM stage in waves: the rows still to do are split by a hash of their key into waves of
about `wave_rows`, and each wave's outcome rows are staged before the next starts. A killed run
resumed with `resume=true` redoes only its unfinished wave; without `resume` everything restarts."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recgpt.errors import RecGPTError
from sparkio.staging import Staging


class Waves:
    """The staged waves of one run of a stage, opened for a fresh run or a resume."""

    def __init__(
        self, spark: SparkSession, staging: Staging, settings: Mapping[str, Any], resume: bool, label: str
    ) -> None:
        self.spark, self.staging, self.label = spark, staging, label
        finished, unfinished = staging.waves()
        if resume and finished:
            self._refuse_other_settings(dict(settings))
        if not resume:
            finished, unfinished = [], []
        if not finished:
            staging.start(settings)
        for wave in unfinished:  # a killed run's half-written wave
            staging.drop(wave)
        self.next_wave = (max(finished) + 1) if finished else 0

    def _refuse_other_settings(self, settings: dict[str, Any]) -> None:
        """A resume finishes the same run: waves made with other settings (model, prompts,
        adaptor, user list) would end up mixed with the new rows' outcomes."""
        before = self.staging.settings() or {}
        if before != settings:
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise RecGPTError(
                f"resume=true, but the staged waves under {self.staging.uri} were made with other "
                f"settings ({', '.join(changed)}): rerun without resume to recompute the date"
            )

    def staged(self) -> DataFrame | None:
        """The outcome rows of every finished wave (None before the first)."""
        done = self.staging.waves()[0]
        return self.spark.read.parquet(*[self.staging.wave_uri(w) for w in done]) if done else None

    def count(self, n_rows: int, wave_rows: int) -> int:
        return max(1, math.ceil(n_rows / wave_rows)) if n_rows else 0

    def run(
        self, todo: DataFrame, n_rows: int, wave_rows: int, key: str, step: Callable[[DataFrame], DataFrame]
    ) -> None:
        """`step` (rows -> outcome rows) over `todo` one wave at a time, each staged when done."""
        waves = self.count(n_rows, wave_rows)
        started = time.monotonic()
        for i in range(waves):
            part = todo.where(F.pmod(F.xxhash64(key), F.lit(waves)) == i)
            step(part).write.mode("overwrite").parquet(self.staging.wave_uri(self.next_wave + i))
            print(
                f"[{self.label}] wave {i + 1}/{waves} staged · {time.monotonic() - started:,.0f}s",
                file=sys.stderr,
                flush=True,
            )
        self.next_wave += waves

    def drop(self) -> None:
        """Remove the staging once the stage's tables hold its outcomes."""
        self.staging.drop()
