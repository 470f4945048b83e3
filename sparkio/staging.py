"""Staged waves of a long stage under the warehouse's `_staging/`: each finished wave is a Parquet
folder committed with a `_SUCCESS` marker, plus a record of the settings every wave was made with,
so a killed run can resume without mixing outcomes of other settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pyarrow import fs as pafs

from recgpt.delta import filesystem
from recgpt.rundate import RunDate

DONE = "_SUCCESS"
SETTINGS = "_settings.json"


class Staging:
    """The finished and unfinished waves of one stage for one run date and variant."""

    def __init__(self, warehouse_root: str, stage: str, dt: RunDate, variant: Mapping[str, str]) -> None:
        parts = "/".join(f"{k}={v}" for k, v in variant.items())
        self.uri = f"{warehouse_root.rstrip('/')}/_staging/{stage}/dt={dt}" + (f"/{parts}" if parts else "")
        self.fs, self.path = filesystem(self.uri)

    def settings(self) -> dict[str, Any] | None:
        """What the staged waves were made with (None before the first wave)."""
        path = f"{self.path}/{SETTINGS}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as fh:
            return dict(json.loads(fh.read().decode()))

    def start(self, settings: Mapping[str, Any]) -> None:
        """Empty staging that records what its waves will be made with."""
        self.drop()
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{SETTINGS}") as fh:
            fh.write(json.dumps(dict(settings), sort_keys=True).encode())

    def wave_uri(self, wave: int) -> str:
        return f"{self.uri}/wave={wave:05d}"

    def waves(self) -> tuple[list[int], list[int]]:
        """(finished, unfinished) wave numbers."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        finished, unfinished = [], []
        for entry in info:
            name = entry.path.rstrip("/").rsplit("/", 1)[-1]
            if entry.type != pafs.FileType.Directory or not name.startswith("wave="):
                continue
            done = self.fs.get_file_info(f"{entry.path}/{DONE}").type == pafs.FileType.File
            (finished if done else unfinished).append(int(name.split("=", 1)[1]))
        return sorted(finished), sorted(unfinished)

    def drop(self, wave: int | None = None) -> None:
        """Delete one wave, or the whole staging (after the tables are written)."""
        path = self.path if wave is None else f"{self.path}/wave={wave:05d}"
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)
