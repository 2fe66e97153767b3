"""A run's directory on disk: resolved config, JSONL logs and atomic checkpoints.

Shared by the A3C trainer and the supervised benchmarks, so both write the same layout::

    runs/<name>/config.json        every setting, the seed, package versions
    runs/<name>/*.jsonl            one JSON object per line (games, evaluations)
    runs/<name>/checkpoints/*.pt   latest / best / final: model, optimizer, counters, config
    runs/<name>/tb/                tensorboard events

Checkpoints are written to a temporary file in the same directory, flushed to disk and renamed over
the old one, so a crash or a kill at any moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

CHECKPOINT_FORMAT = "stm-rl-checkpoint"
CHECKPOINT_VERSION = 1


class StmRlError(Exception):
    """An error the user can fix (bad flag, missing file...): the command line prints it without a traceback."""


class CheckpointError(StmRlError):
    """A checkpoint is missing, corrupt, or belongs to something else."""


def package_versions() -> dict[str, str]:
    """Versions of the interpreter and the packages that decide a run's behaviour."""
    versions = {"python": platform.python_version()}
    for name in ("stm-rl", "torch", "numpy", "gymnasium", "ale-py"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def to_jsonable(obj: Any) -> Any:
    """Dataclasses (nested) and paths as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    path = Path(path)
    _atomic_write(path, lambda f: f.write(json.dumps(to_jsonable(data), indent=2, sort_keys=True).encode()))


def write_config(run_dir: Path, config: Any, **extra: Any) -> Path:
    """Record the resolved configuration of a run with the command line and package versions."""
    path = Path(run_dir) / "config.json"
    write_json_atomic(path, {"config": config, "versions": package_versions(), "argv": sys.argv, **extra})
    return path


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StmRlError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StmRlError(f"{path} is not valid JSON: {error}") from None


class JsonlWriter:
    """Appends one JSON object per line and flushes it, so a killed run keeps every finished line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(to_jsonable(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: Path) -> Iterator[dict]:
    """The records of a JSONL file; a torn last line (a run killed mid-write) is skipped."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise StmRlError(f"{path}, line {number}: not valid JSON") from None


def truncate_jsonl(path: Path, keep: int) -> int:
    """Keep only the first ``keep`` records of a JSONL file (atomically); returns how many were dropped.

    A run resumed from a checkpoint drops the lines written after that checkpoint, so that its log
    describes exactly the history of the weights it continues from.
    """
    path = Path(path)
    if not path.exists():
        return 0
    records = list(read_jsonl(path))
    if len(records) <= keep:
        return 0
    lines = "".join(json.dumps(r) + "\n" for r in records[:keep]).encode()
    _atomic_write(path, lambda f: f.write(lines))
    return len(records) - keep


def save_checkpoint(path: Path, kind: str, payload: Mapping[str, Any]) -> Path:
    """Atomically save a checkpoint of the given kind (e.g. "a3c", "supervised").

    ``payload`` holds at least model and optimizer state dicts, counters and the config.
    """
    path = Path(path)
    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind, **payload}
    _atomic_write(path, lambda f: torch.save(record, f))
    return path


def load_checkpoint(path: Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error for any bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        record = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is corrupt or not a checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an stm-rl checkpoint")
    if record.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {record.get('version')}, "
                              f"this stm-rl reads version {CHECKPOINT_VERSION}")
    if record.get("kind") != kind:
        raise CheckpointError(f"{path} is a {record.get('kind')!r} checkpoint, expected a {kind!r} one")
    return record


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
