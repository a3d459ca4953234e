"""Read what an offline W&B run wrote: the records of its ``run-<id>.wandb`` transaction log.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records, each with a
7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf payload.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    """All protobuf records of one ``.wandb`` file, in order."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    records, parts, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            parts = [chunk]
        elif kind in (FIRST, MIDDLE):
            parts = [chunk] if kind == FIRST else [*parts, chunk]
            continue
        elif kind == LAST:
            parts.append(chunk)
        record = pb.Record()
        record.ParseFromString(b"".join(parts))
        records.append(record)
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """The content of one offline run directory."""

    run_id: str
    display_name: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    exit_code: int | None = None

    def series(self, key: str, axis: str) -> list[tuple[Any, Any]]:
        """``[(axis value, key value)]`` of the history rows holding ``key``."""
        return [(row.get(axis), row[key]) for row in self.history if key in row]


def _parse_run(log_file: Path) -> OfflineRun | None:
    """The run in ``log_file`` as far as it is written (None before its run record)."""
    run: OfflineRun | None = None
    for record in read_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run" and run is None:
            run = OfflineRun(record.run.run_id, record.run.display_name)
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif run is None:
            continue
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            run.artifacts.append((record.artifact.name, record.artifact.type))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def load_run(run_dir: Path, timeout: float = 60.0) -> OfflineRun:
    """Parse ``run_dir/run-<id>.wandb`` into config, history, artifacts and exit code.

    W&B's service process writes the file after ``finish()`` has returned to the caller, so on
    a busy machine the file can still be missing, partly written or without its exit record.
    This reads it again until the exit record is there (the last thing written), for up to
    ``timeout`` seconds, and then says what was missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        files = list(run_dir.glob("run-*.wandb"))
        problem = f"{run_dir}: no run-*.wandb file"
        if len(files) == 1:
            try:
                run = _parse_run(files[0])
            except Exception as exc:  # a record cut off while being written
                run, problem = None, f"{files[0]}: unreadable ({exc})"
            else:
                if run is not None and run.exit_code is not None:
                    return run
                problem = f"{files[0]}: " + ("no exit record" if run else "no run record")
        elif files:
            raise ValueError(f"{run_dir}: {len(files)} run-*.wandb files")
        if time.monotonic() > deadline:
            raise ValueError(f"{problem} after {timeout:.0f}s")
        time.sleep(0.05)


def offline_runs(wandb_dir: Path, run_id: str | None = None) -> list[OfflineRun]:
    """The finished offline runs under ``wandb_dir/wandb`` (only ``run_id`` if given), oldest
    first; each is read once its exit record is written (see :func:`load_run`)."""
    dirs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    if run_id is not None:
        dirs = [d for d in dirs if d.name.endswith(f"-{run_id}")]
    runs = [load_run(d) for d in dirs]
    return [r for r in runs if run_id is None or r.run_id == run_id]
