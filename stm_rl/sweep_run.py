"""One run of a sweep in its own process: ``python -m stm_rl.sweep_run RUN_DIR/sweep-run.json``.

The sweep hands each run its whole :class:`TrainConfig` in a file (``sweep-run.json`` in the run directory)
instead of rebuilding a ``train`` command line from parsed flags. This process, started by either backend
(a local child process, or a Ray task on some node), then:

- dies with its parent: if the sweep (or the Ray task) that started it is killed, it receives SIGTERM and
  stops like a Ctrl-C'd training, with a final checkpoint, instead of training on unseen;
- holds a lock on the run directory (``.sweep-run.lock``, naming host and pid) while it trains, so that a
  re-run of the sweep, or a retry on another node, waits for a previous trainer of the same run to stop
  instead of training a second copy of it;
- resumes from ``checkpoints/latest.pt`` when there is one (its architecture and learning settings must be
  those of the file; only the budget, the workers and the checkpoint interval may change), else starts the
  run, setting aside the game log of an attempt that died before its first checkpoint.

Exit status: 0 completed, 1 failed, 2 bad input (a one-line error), 130 interrupted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import fcntl
import math
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from stm_rl.a3c.config import TrainConfig
from stm_rl.a3c.train_command import ENV_FLAGS_HIDDEN, RESUMABLE_RUN_FLAGS
from stm_rl.a3c.trainer import GAME_LOG, Trainer, checkpoint_paths, load_training_checkpoint
from stm_rl.config_cli import flag_name
from stm_rl.run_dir import StmRlError, read_json, to_jsonable, write_json_atomic

RUN_FILE = "sweep-run.json"
LOCK_FILE = ".sweep-run.lock"
PARENT_ENV = "STM_RL_SWEEP_PARENT"
"""Environment variable holding the pid of the process that started the run (the sweep or a Ray task)."""
LOCK_WAIT_S = 600.0
"""Seconds to wait for a previous trainer of the same run (e.g. one orphaned by a killed sweep) to stop."""
EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 130}
_PR_SET_PDEATHSIG = 1


def run_file(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_FILE


def write_run_file(config: TrainConfig) -> Path:
    """Write the config a run is to train with into its directory (atomically); returns the file."""
    path = run_file(config.run.run_dir)
    write_json_atomic(path, {"config": config})
    return path


def read_run_file(path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(read_json(path)["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise StmRlError(f"{path} is not a sweep run file: {error}") from None


def command(path: Path) -> list[str]:
    """The command line that trains the run described by the run file ``path``."""
    return [sys.executable, "-m", "stm_rl.sweep_run", str(path)]


def child_environment() -> dict[str, str]:
    """Environment of a run's process: its parent's pid (see :func:`die_with_parent`) and one thread for the
    trainer's own torch (its A3C workers set one thread each; Ray would set OMP_NUM_THREADS to the task's CPUs)."""
    return {**os.environ, PARENT_ENV: str(os.getpid()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def settings_differ(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The settings in which ``wanted`` differs from the config a run was trained with, as ``--flag old -> new``.

    The budget, the workers, the checkpoint interval and the progress display may change between segments
    of a run (as for ``stm-rl train --resume``); the run directory is where the run is found; the environment
    settings that are not flags follow from others (the observation size from the encoder).
    """
    may_change = {("run", name) for name in (*RESUMABLE_RUN_FLAGS, "run_dir")}
    may_change |= {("env", name) for name in ENV_FLAGS_HIDDEN}
    old, new = to_jsonable(saved), to_jsonable(wanted)
    return [f"{flag_name(name)} {old[group][name]} -> {new[group][name]}"
            for group in old for name in old[group]
            if (group, name) not in may_change and old[group][name] != new[group].get(name)]


def start_or_resume(config: TrainConfig) -> Trainer:
    """A trainer for ``config``: resumed from the run's latest checkpoint if it has one, else a new run."""
    run_dir = Path(config.run.run_dir)
    latest = checkpoint_paths(run_dir)["latest"]
    if not latest.exists():
        set_aside_orphan_log(run_dir)
        return Trainer(config)
    record = load_training_checkpoint(latest)
    saved: TrainConfig = record["config"]
    changed = settings_differ(saved, config)
    if changed:
        raise StmRlError(f"{run_dir} was trained with other settings ({'; '.join(changed)}); "
                         "a sweep cannot change them: use another --out")
    run = dataclasses.replace(saved.run, run_dir=run_dir, frames=config.run.frames, workers=config.run.workers,
                              checkpoint_interval=config.run.checkpoint_interval, progress=config.run.progress)
    return Trainer(dataclasses.replace(saved, run=run), resume_from=record)


def set_aside_orphan_log(run_dir: Path) -> Optional[Path]:
    """A run that died before its first checkpoint starts over: keep its old game log under another name."""
    games = Path(run_dir) / GAME_LOG
    if not games.exists() or checkpoint_paths(run_dir)["latest"].exists():
        return None
    target = games.with_name(f"games.orphan-{int(time.time())}.jsonl")
    games.rename(target)
    return target


# ---------------------------------------------------------------- process hygiene
def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when the process that started it dies (no-op elsewhere).

    The trainer treats SIGTERM like Ctrl-C: it stops its workers and writes a final checkpoint.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before the request was made
        raise StmRlError(f"the process that started this run (pid {parent}) is gone")


def lock_holder(run_dir: Path) -> Optional[str]:
    """``"host pid"`` of the process training this run now, None when none is (or the run has no lock file)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        with open(path, "r+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "another process"
            fcntl.flock(f, fcntl.LOCK_UN)
            return None
    except FileNotFoundError:
        return None


@contextmanager
def run_lock(run_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the run's lock while training; wait (up to ``wait_s``) for a previous holder to let go."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    raise StmRlError(f"{run_dir} is still being trained by {f.read().strip() or 'another process'} "
                                     f"after {wait_s:.0f} s; stop that process first") from None
                if not told:
                    f.seek(0)
                    print(f"waiting for the trainer already running in {run_dir} ({f.read().strip()}) to stop",
                          flush=True)
                    told = True
                time.sleep(1.0)
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print(f"usage: python -m stm_rl.sweep_run RUN_DIR/{RUN_FILE}", file=sys.stderr)
        return 2
    try:
        die_with_parent()
        config = read_run_file(Path(argv[0]))
        with run_lock(config.run.run_dir):
            trainer = start_or_resume(config)
            config = trainer.config
            print(f"run {config.run.run_dir} on {socket.gethostname()} (pid {os.getpid()}): {config.agent.agent} "
                  f"agent, frame skip {config.env.frame_skip}, seed {config.run.seed}, {config.run.workers} "
                  f"worker(s), budget {config.run.frames:,} frames"
                  + (f", resuming at {trainer.counters.frames:,}" if trainer.counters.frames else ""), flush=True)
            result = trainer.run()
    except StmRlError as error:
        print(f"stm-rl sweep run: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stm-rl sweep run: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    status = str(getattr(result.status, "value", result.status))  # a str or a str-valued enum
    average = "n/a" if math.isnan(result.moving_average) else f"{result.moving_average:+.2f}"
    print(f"{status}: {result.counters.games} games, {result.counters.frames:,} frames; "
          f"moving average score {average}" + (f"; {result.message}" if result.message else ""), flush=True)
    return EXIT_CODES.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
