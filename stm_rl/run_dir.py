"""A run's directory on disk: resolved config, JSONL logs and atomic checkpoints.

Shared by the A3C trainer and the supervised benchmarks, so both write the same layout
(:class:`RunDir` spells every name once)::

    runs/<name>/config.json        every setting, the seed, package versions
    runs/<name>/games.jsonl        one JSON object per line (also evaluations.jsonl); games.jsonl.gz when
                                   published compressed (results/), read the same way
    runs/<name>/summary.json       how the last segment ended: status, counters, milestones
    runs/<name>/checkpoints/*.pt   latest / best / final: model, optimizer, counters, config
    runs/<name>/tb/                tensorboard events
    runs/<name>/.lock              held (flock) by the process training the run; names its host and pid

Checkpoints are written to a temporary file in the same directory, flushed to disk and renamed over
the old one, so a crash or a kill at any moment leaves either the old or the new file, never half of one;
temporary files left by a process killed mid-write are removed by the next trainer of the run
(:meth:`RunDir.remove_stale_temp_files`, under the lock).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import gzip
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from enum import Enum
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import torch

CHECKPOINT_FORMAT = "stm-rl-checkpoint"
CHECKPOINT_VERSION = 1


class Trained(NamedTuple):
    """How far a run has trained, over all its segments (:meth:`RunDir.trained`)."""

    frames: int
    """Emulator frames."""
    agent_steps: int
    """Decisions of the agent (a frame at skip 32 is a 32nd of one)."""
    wall_time: float
    """Seconds of training."""


class RunStatus(str, Enum):
    """How a training run (segment) stands; the value is what summary.json records."""

    RUNNING = "running"
    COMPLETED = "completed"
    """The budget (frames, iterations) is spent."""
    INTERRUPTED = "interrupted"
    """Ctrl-C or SIGTERM: stopped cleanly with a final checkpoint."""
    FAILED = "failed"
    """A worker died, the loss or the weights became NaN, a checkpoint could not be written..."""

    __str__ = str.__str__
    __format__ = str.__format__


class StmRlError(Exception):
    """An error the user can fix (bad flag, missing file...): the command line prints it without a traceback."""


class RunFailed(Exception):
    """Work that started went wrong (e.g. the loss became NaN): the command line prints it in one line and exits 1."""


class CheckpointError(StmRlError):
    """A checkpoint is missing, corrupt, or belongs to something else."""


class RunDirBusyError(StmRlError):
    """Another process is training in this run directory."""


TEMP_SUFFIX = ".tmp"
SWEEP_MANIFEST = "sweep.json"
"""A sweep folder's manifest (beside its run directories): every run's state, attempts and log."""


class Checkpoint(str, Enum):
    """A run's checkpoints by role; the value is the file's stem (``checkpoints/<value>.pt``)."""

    LATEST = "latest"
    """Written when a run starts, every checkpoint interval and when it stops: what a resume continues from."""
    BEST = "best"
    """The weights with the best moving average (RL) or validation score (supervised) so far."""
    FINAL = "final"
    """The weights when the last segment of an RL run ended."""

    __str__ = str.__str__
    __format__ = str.__format__


@dataclass(frozen=True)
class RunDir:
    """The layout of one run's directory: every file name of a run is spelled here, once."""

    path: Path

    CONFIG = "config.json"
    GAMES = "games.jsonl"
    GAMES_COMPRESSED = "games.jsonl.gz"
    """The game log as published (gzip): readers take it where a run has no plain ``games.jsonl``."""
    EVALUATIONS = "evaluations.jsonl"
    METRICS = "metrics.jsonl"
    METRICS_COMPRESSED = "metrics.jsonl.gz"
    """The metrics as published (gzip): the per-update and periodic rows (losses, rates, evaluations, milestones);
    the per-game rows are left out, the game log has them."""
    SUMMARY = "summary.json"
    TENSORBOARD = "tb"
    CHECKPOINTS = "checkpoints"
    LOCK = ".lock"
    SWEEP_RUN = "sweep-run.json"
    """The whole config a sweep hands to the run (``python -m stm_rl.sweep_run <run>/sweep-run.json``)."""
    TRAIN_LOG = "train.log"
    """The output of a sweep's run process."""
    CHECKPOINT_NAMES = tuple(Checkpoint)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def games(self) -> Path:
        return self.path / self.GAMES

    @property
    def game_log(self) -> Path:
        """The game log to read: ``games.jsonl``, else ``games.jsonl.gz`` if only that exists (a published run)."""
        compressed = self.path / self.GAMES_COMPRESSED
        return compressed if compressed.exists() and not self.games.exists() else self.games

    @property
    def evaluations(self) -> Path:
        return self.path / self.EVALUATIONS

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def metric_log(self) -> Path:
        """The metrics to read: ``metrics.jsonl``, else ``metrics.jsonl.gz`` if only that exists (a published run)."""
        compressed = self.path / self.METRICS_COMPRESSED
        return compressed if compressed.exists() and not self.metrics.exists() else self.metrics

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    def read_summary(self) -> dict[str, Any]:
        """The run's summary.json, ``{}`` when it has none yet or it cannot be read (summaries are written
        atomically, so an unreadable one was not written by a run: nothing in it to trust)."""
        try:
            summary = read_json(self.summary) if self.summary.is_file() else {}
        except StmRlError:
            return {}
        return summary if isinstance(summary, dict) else {}

    def status(self) -> Optional[str]:
        """:attr:`RunStatus.RUNNING` while a process trains the run (holds its lock: a completed run being extended
        still has its earlier segment's summary); else how its last segment ended (a :class:`RunStatus` value as
        summary.json records it), None where it has no summary."""
        if self.lock_holder() is not None:
            return RunStatus.RUNNING
        status = self.read_summary().get("status")
        return None if status is None else str(status)

    def trained(self) -> "Trained":
        """What the run has trained over all its segments (:class:`Trained`): its summary's counters, or the last
        line of its game log where that is newer (a run training now, or one killed before its summary)."""
        counters = self.read_summary().get("counters") or {}
        last = last_jsonl_record(self.game_log) or {}

        def newest(key: str, kind: type) -> Any:
            values = [value for value in (counters.get(key), last.get(key))
                      if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]
            return kind(max(values, default=0))

        return Trained(newest("frames", int), newest("agent_steps", int), newest("wall_time", float))

    def trained_frames(self) -> Optional[int]:
        """Emulator frames the run's summary counts, None where it has no summary or no such counter."""
        frames = (self.read_summary().get("counters") or {}).get("frames")
        return frames if isinstance(frames, int) else None

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def sweep_run(self) -> Path:
        return self.path / self.SWEEP_RUN

    @property
    def train_log(self) -> Path:
        return self.path / self.TRAIN_LOG

    def evaluation_report(self, checkpoint: Checkpoint | str, frame_skip: int) -> Path:
        """``eval-<checkpoint>-skip<N>.json``: ``stm-rl evaluate``'s report of a checkpoint's games at skip N."""
        return self.path / f"eval-{Checkpoint(checkpoint)}-skip{frame_skip}.json"

    def evaluation_reports(self) -> list[Path]:
        """Every ``stm-rl evaluate`` report in the run directory (:meth:`evaluation_report`), sorted."""
        return sorted(self.path.glob("eval-*.json"))

    def set_aside_game_log(self) -> Optional[Path]:
        """Rename the game log of an attempt that left no checkpoint to ``games.orphan-<time>.jsonl`` (so a
        restarted run begins a fresh log without losing the old one); the new path, None if there was none."""
        return self.set_aside(self.games)

    def set_aside(self, log: Path) -> Optional[Path]:
        """Rename a log of an attempt that left no checkpoint, ``NAME.jsonl`` -> ``NAME.orphan-<time>.jsonl``;
        the new path, None if there was no such file."""
        if not log.exists():
            return None
        target = log.with_name(f"{log.name.split('.')[0]}.orphan-{int(time.time())}{log.suffix}")
        log.rename(target)
        return target

    def checkpoint(self, name: Checkpoint | str) -> Path:
        """``checkpoints/<name>.pt`` (name: a :class:`Checkpoint`, or its value)."""
        name = Checkpoint(name)
        return self.checkpoints / f"{name}.pt"

    # ---------------------------------------------------------------- lock
    def lock_holder(self) -> Optional[str]:
        """``"host pid"`` of the process holding the run's lock now; None when nobody does.

        The lock is an ``flock`` on ``.lock``: the kernel releases it when its holder dies, however it dies,
        so a lock file left by a killed process never blocks anyone.
        """
        try:
            with open(self.path / self.LOCK, "r") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return f.read().strip() or "another process"
                fcntl.flock(f, fcntl.LOCK_UN)
                return None
        except (FileNotFoundError, NotADirectoryError):
            return None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock (creating the directory), or raise :class:`RunDirBusyError` at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / self.LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise RunDirBusyError(busy_message(self.path, holder)) from None
            f.seek(0)
            f.truncate()
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
            f.flush()
            try:
                yield
            finally:
                f.seek(0)
                f.truncate()
                f.flush()
                fcntl.flock(f, fcntl.LOCK_UN)

    def refuse_if_busy(self) -> None:
        """Raise :class:`RunDirBusyError` if a process is training in this directory now."""
        holder = self.lock_holder()
        if holder is not None:
            raise RunDirBusyError(busy_message(self.path, holder))

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temporary files of atomic writes that a killed process left behind (call under the lock)."""
        removed = []
        for folder in (self.path, self.checkpoints):
            if folder.is_dir():
                for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
        return removed


def busy_message(run_dir: Path, holder: str) -> str:
    host, _, pid = holder.partition(" ")
    who = f"process {pid} on {host}" if pid else holder
    return f"{run_dir} is in use: {who} is training in it; stop that process first or choose another directory"


def check_can_write(path: Path, what: str, directory: bool = False) -> Path:
    """Raise a one-line :class:`StmRlError` naming ``what`` (e.g. ``--output``) unless ``path`` can be written.

    Nothing is created: the path must be writable if it exists, otherwise the nearest existing folder above
    it must be a writable directory. Returns ``path``.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise StmRlError(f"{what} {path}: exists and is not a directory")
        if not directory and path.is_dir():
            raise StmRlError(f"{what} {path}: is a directory; give a file name")
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            raise StmRlError(f"{what} {path}: not writable (permission denied)")
        return path
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StmRlError(f"{what} {path}: cannot be created, {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StmRlError(f"{what} {path}: cannot be created in {parent} (permission denied)")
    return path


def describe_os_error(error: OSError) -> str:
    """``No space left on device`` / ``Permission denied: 'x'``: the cause of an OSError in one line."""
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    reason = error.strerror or str(error)
    return f"{reason}: {error.filename}" if error.filename else reason


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


def write_jsonl_atomic(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` as JSONL through a temporary file and a rename."""
    text = "".join(json.dumps(record) + "\n" for record in records).encode("utf-8")
    _atomic_write(Path(path), lambda f: f.write(text))


def machine_description() -> str:
    """Cores and CPU model of this machine, e.g. ``2 cores, AMD EPYC 9R45`` (what timings were measured on)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def write_config(run_dir: Path, config: Any, **extra: Any) -> Path:
    """Record the resolved configuration of a run with the command line, package versions and machine."""
    path = RunDir(run_dir).config
    write_json_atomic(path, {"config": config, "versions": package_versions(), "argv": sys.argv,
                             "machine": machine_description(), **extra})
    return path


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Run directories (holding config.json) given directly or found below the given directories."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise StmRlError(f"no such directory: {path}")
        if RunDir(path).config.is_file():
            found.append(path)
        else:
            found += sorted(config.parent for config in path.rglob(RunDir.CONFIG))
    if not found:
        raise StmRlError(f"no runs found under {', '.join(map(str, paths))} (a run directory holds config.json)")
    return list(dict.fromkeys(found))


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


def last_jsonl_record(path: Path, tail_bytes: int = 4096) -> Optional[dict]:
    """The last complete record of a JSONL file, reading only its end (all of a gzip-compressed one, which
    cannot be read from its end); None where the file is missing or has no complete record."""
    try:
        if Path(path).suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail_bytes))
                data = f.read()
    except (FileNotFoundError, OSError, EOFError):
        return None
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            return record
    return None


def read_jsonl(path: Path) -> Iterator[dict]:
    """The records of a JSONL file (gzip-compressed if its name ends in ``.gz``); a torn last line (a run killed
    mid-write) is skipped."""
    with (gzip.open if Path(path).suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise StmRlError(f"{path}, line {number}: not valid JSON (a line torn by a killed process? "
                             "`stm-rl train --resume` repairs a run's own log; otherwise delete the line)") from None


def repair_jsonl(path: Path) -> bool:
    """Cut a torn last line (a process killed mid-write) off a JSONL file, so appends start on a fresh line.

    Returns True if the file was changed. A last line that is complete JSON but lacks its newline keeps its
    content and gets the newline.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    head, _, tail = data.rpartition(b"\n")
    try:
        json.loads(tail)
        repaired = data + b"\n"
    except (json.JSONDecodeError, UnicodeDecodeError):
        repaired = head + b"\n" if head else b""
    _atomic_write(path, lambda f: f.write(repaired))
    return True


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


def drop_records_after(path: Path, key: str, last: int,
                       also_drop: Callable[[dict[str, Any]], bool] = lambda record: False) -> list[dict[str, Any]]:
    """Cut a JSONL log (whose ``key`` only grows, e.g. ``iteration``) before its first record with ``key`` above
    ``last`` or for which ``also_drop`` is true (a torn last line is repaired first); returns the records kept.

    A run resumed from the checkpoint of step ``last`` drops what a killed process logged after it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    repair_jsonl(path)
    records = list(read_jsonl(path))
    keep = next((index for index, record in enumerate(records) if record.get(key, 0) > last or also_drop(record)),
                len(records))
    truncate_jsonl(path, keep)
    return records[:keep]


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
