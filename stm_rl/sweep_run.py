"""One run of a sweep in its own process: ``python -m stm_rl.sweep_run RUN_DIR/sweep-run.json``.

The sweep hands each run its whole :class:`TrainConfig` in a file (``sweep-run.json`` in the run directory)
instead of rebuilding a ``train`` command line from parsed flags. This process, started by either backend
(a local child process, or a Ray task on some node), then:

- dies with its parent: if the sweep (or the Ray task) that started it is killed, it receives SIGTERM and
  stops like a Ctrl-C'd training, with a final checkpoint, instead of training on unseen;
- waits (up to :data:`LOCK_WAIT_S`) for a previous trainer of the same run to stop (one orphaned by a killed
  sweep, or a retry landing while the old attempt still writes its final checkpoint), instead of failing on
  the run directory's lock, which the trainer then takes itself (:meth:`stm_rl.run_dir.RunDir.lock`);
- resumes from ``checkpoints/latest.pt`` when there is one (its architecture and learning settings must be
  those of the file; only the budget, the workers and the checkpoint interval may change), else starts the
  run, setting aside the game log of an attempt that died before its first checkpoint.

Exit status: 0 completed, 1 failed, 2 bad input (a one-line error), 130 interrupted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from stm_rl.a3c.checkpoint import RESUMABLE_RUN_FLAGS, load_resume_checkpoint
from stm_rl.a3c.config import RL_RESUME, TrainConfig
from stm_rl.a3c.trainer import Trainer
from stm_rl.config_cli import describe_changes
from stm_rl.conventions import EXIT_CODES, RunStatus, run_command
from stm_rl.evaluate import evaluate_final_agent
from stm_rl.run_dir import Checkpoint, RunDir, StmRlError, read_json, to_jsonable, write_json_atomic

PARENT_ENV = "STM_RL_SWEEP_PARENT"
"""Environment variable holding the pid of the process that started the run (the sweep or a Ray task)."""
LOCK_WAIT_S = 600.0
"""Seconds to wait for a previous trainer of the same run (e.g. one orphaned by a killed sweep) to stop."""
_PR_SET_PDEATHSIG = 1


def run_file(run_dir: Path) -> Path:
    return RunDir(run_dir).sweep_run


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


@dataclass
class RunProcess:
    """A run's training process as both sweep backends start and stop it (the local one on this machine, the Ray
    one inside a task on a node): ``python -m stm_rl.sweep_run RUN_FILE`` (:func:`command`) with its output
    appended to the run's train.log after a line naming the host and the command, in a session of its own (a
    terminal's Ctrl-C reaches only the sweep, which passes it on once), with :func:`child_environment`.

    The trainer leads its own process group, so :meth:`kill` takes its A3C workers down with it; after the
    trainer ended, :meth:`kill` removes what is left of the group (the workers of a trainer killed outright).
    """

    process: subprocess.Popen
    interrupted: bool = False
    """Whether SIGINT was sent: it is sent once, since the trainer takes a second one for "abort now" (no final
    checkpoint, no summary)."""

    @classmethod
    def start(cls, run_dir: Path) -> "RunProcess":
        line = command(run_file(run_dir))
        with open(RunDir(run_dir).train_log, "a", encoding="utf-8") as log:
            log.write(f"\n$ [{socket.gethostname()}] {' '.join(line)}\n")
            log.flush()
            return cls(subprocess.Popen(line, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=child_environment(), start_new_session=True))

    def poll(self) -> Optional[int]:
        return self.process.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        """The exit code, waiting in one-second slices (so that an exception raised between Python instructions,
        as Ray's cancellation is, is not held up by a blocking system call); TimeoutExpired after ``timeout``."""
        waited = 0.0
        while True:
            try:
                return self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                waited += 1.0
                if timeout is not None and waited >= timeout:
                    raise

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C, once: the trainer stops after its current update and writes its final checkpoint."""
        if not self.interrupted and self.process.poll() is None:
            self.interrupted = True
            try:
                self.process.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the trainer and every process of its group."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self, grace: float) -> int:
        """Interrupt (unless :meth:`interrupt` already did), wait up to ``grace`` seconds for the final checkpoint,
        then kill; the exit code. A second Ctrl-C while waiting kills at once."""
        self.interrupt()
        try:
            return self.wait(grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self.kill()
            return self.process.wait()
        finally:
            self.kill()  # workers a killed trainer left behind


def settings_differ(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The settings in which ``wanted`` differs from the config a run was trained with and may not (the resume
    rule, :data:`~stm_rl.a3c.config.RL_RESUME`), as ``--flag old -> new``."""
    return describe_changes(RL_RESUME.differences(to_jsonable(saved), to_jsonable(wanted)))


def start_or_resume(config: TrainConfig) -> Trainer:
    """A trainer for ``config``: resumed from the run's latest checkpoint if it has one, else a new run."""
    run_dir = Path(config.run.run_dir)
    if not RunDir(run_dir).checkpoint(Checkpoint.LATEST).exists():
        set_aside_orphan_log(run_dir)
        return Trainer(config)
    record = load_resume_checkpoint(run_dir)
    saved: TrainConfig = record["config"]
    changed = settings_differ(saved, config)
    if changed:
        raise StmRlError(f"{run_dir} was trained with other settings ({'; '.join(changed)}); "
                         "a sweep cannot change them: use another --out")
    run = dataclasses.replace(saved.run, run_dir=run_dir, **{name: getattr(config.run, name)
                                                             for name in RESUMABLE_RUN_FLAGS})
    return Trainer(dataclasses.replace(saved, run=run), resume_from=record)


def set_aside_orphan_log(run_dir: Path) -> Optional[Path]:
    """A run that died before its first checkpoint starts over: keep its old game log under another name."""
    layout = RunDir(run_dir)
    return None if layout.checkpoint(Checkpoint.LATEST).exists() else layout.set_aside_game_log()


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


def wait_for_previous_trainer(run_dir: Path, wait_s: float = LOCK_WAIT_S) -> None:
    """Return once no process holds the run directory's lock; raise after ``wait_s`` seconds."""
    layout, told = RunDir(run_dir), False
    deadline = time.monotonic() + wait_s
    while (holder := layout.lock_holder()) is not None:
        if time.monotonic() >= deadline:
            raise StmRlError(f"{run_dir} is still being trained by {holder} after {wait_s:.0f} s; "
                             "stop that process first")
        if not told:
            print(f"waiting for the trainer already running in {run_dir} ({holder}) to stop", flush=True)
            told = True
        time.sleep(1.0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command("stm-rl sweep run", lambda: train_from_run_file(argv))


def train_from_run_file(argv: Sequence[str]) -> int:
    """Train (start, resume or finish) the run of the run file ``argv[0]``; its exit code."""
    if len(argv) != 1:
        raise StmRlError(f"usage: python -m stm_rl.sweep_run RUN_DIR/{RunDir.SWEEP_RUN}")
    die_with_parent()
    config = read_run_file(Path(argv[0]))
    wait_for_previous_trainer(config.run.run_dir)
    trainer = start_or_resume(config)
    config = trainer.config
    print(f"run {config.run.run_dir} on {socket.gethostname()} (pid {os.getpid()}): {config.agent.agent} "
          f"agent, frame skip {config.env.frame_skip}, seed {config.run.seed}, {config.run.workers} "
          f"worker(s), budget {config.run.describe_budget()}"
          + (f", resuming at {trainer.counters.frames:,} frames, {trainer.counters.agent_steps:,} agent steps"
             if trainer.counters.frames else ""), flush=True)
    # A run killed after its last update but before its summary has nothing left to train.
    spent = config.run.budget_reached(trainer.counters.frames, trainer.counters.agent_steps)
    result = trainer.finish_spent_run() if spent else trainer.run()
    if result.status == RunStatus.COMPLETED:
        evaluate_final_agent(config.run.run_dir, config.env.frame_skip, config.run.final_eval_games)
    average = "n/a" if math.isnan(result.moving_average) else f"{result.moving_average:+.2f}"
    print(f"{result.status.value}: {result.counters.games} games, {result.counters.agent_steps:,} agent steps, "
          f"{result.counters.frames:,} frames; "
          f"moving average score {average}" + (f"; {result.message}" if result.message else ""), flush=True)
    return EXIT_CODES[result.status]


if __name__ == "__main__":
    sys.exit(main())
