"""``stm-rl sweep``: many training runs (agents x frame skips x seeds), each in its own child process.

A queue keeps at most ``--max-parallel`` runs alive. Each run is ``python -m stm_rl.cli train ...`` (or
``train --resume``) with its output in ``<run_dir>/train.log``, so one crashing run cannot take the sweep
down. ``<out>/sweep.json`` records every run's state (pending / running / done / failed / interrupted),
exit code and log file. Re-running the same command picks up where the sweep stopped: completed runs are
skipped, runs with a checkpoint resume from it, the others start. Ctrl-C is forwarded to the children,
which write their final checkpoints; the sweep waits for them and marks them interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from agents import AgentConfig
from envs import EnvConfig
from stm_rl.a3c.config import A3CConfig, RunConfig, TrainConfig
from stm_rl.a3c.trainer import checkpoint_paths
from stm_rl.config_cli import add_dataclass_flags, dataclass_from_flags, flag_name
from stm_rl.run_dir import StmRlError, read_json, write_json_atomic

MANIFEST_NAME = "sweep.json"
LOG_NAME = "train.log"
SHUTDOWN_GRACE_S = 300.0
"""Seconds a child gets to write its final checkpoint after Ctrl-C before it is killed."""

# Flags the sweep sets itself for each run, so they are not passed through from the command line.
_SWEEP_OWNED = {AgentConfig: ("agent",), EnvConfig: ("frame_skip", "seed", "obs_size", "clip_reward"),
                A3CConfig: (), RunConfig: ("run_dir", "workers", "seed", "progress")}


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the sweep."""

    agent: str
    frame_skip: int
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass
class RunEntry:
    """A run's line in the manifest."""

    spec: RunSpec
    state: str = "pending"
    """pending, running, done, failed or interrupted."""
    exit_code: Optional[int] = None
    attempts: int = 0
    message: str = ""

    @property
    def log_path(self) -> Path:
        return self.spec.run_dir / LOG_NAME

    def to_json(self) -> dict[str, Any]:
        return {"name": self.spec.name, "agent": self.spec.agent, "frame_skip": self.spec.frame_skip,
                "seed": self.spec.seed, "run_dir": str(self.spec.run_dir), "state": self.state,
                "exit_code": self.exit_code, "attempts": self.attempts, "log": str(self.log_path),
                "message": self.message}


@dataclass(frozen=True)
class SweepOptions:
    """What the sweep runs and how."""

    agents: tuple[str, ...]
    frame_skips: tuple[int, ...]
    seeds: tuple[int, ...]
    out: Path
    frames: int
    workers_per_run: int
    max_parallel: int
    train_flags: tuple[str, ...] = ()
    """Training flags passed unchanged to every new run (encoder, lr, ...)."""
    poll_interval: float = 1.0
    progress: bool = True

    def runs(self) -> list[RunSpec]:
        return [RunSpec(agent, skip, seed, self.out / f"{agent}-skip{skip}-seed{seed}")
                for agent in self.agents for skip in self.frame_skips for seed in self.seeds]


# ---------------------------------------------------------------- command line
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train many runs: agents x frame skips x seeds",
        description="Train one run per (agent, frame skip, seed), at most --max-parallel at a time, each in "
                    "its own process with its log in <run_dir>/train.log. Re-running the same command skips "
                    "completed runs and resumes interrupted ones. Other training flags apply to every run.")
    parser.add_argument("--agents", nargs="+", default=["lstm", "stm"], metavar="AGENT",
                        help="agents to train: lstm, stm (default: lstm stm)")
    parser.add_argument("--frame-skips", nargs="+", type=int, default=[0, 4, 16, 32], metavar="N",
                        help="frame skips (default: 0 4 16 32, the paper's Figure 3)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="SEED",
                        help="seeds (default: 0 1 2 3 4)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"),
                        help="directory of the sweep: one run directory per configuration and sweep.json")
    parser.add_argument("--workers-per-run", type=int, default=2, help="worker processes of each run (default: 2)")
    parser.add_argument("--max-parallel", type=int, default=1, help="runs alive at the same time (default: 1)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show the sweep's progress bar (default: on)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    for cls, owned in _SWEEP_OWNED.items():
        add_dataclass_flags(parser, cls, exclude=owned, title=f"training settings ({cls.__name__})")
    parser.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """Validate the command line into :class:`SweepOptions` (a bad agent or setting raises ValueError)."""
    if args.workers_per_run < 1 or args.max_parallel < 1:
        raise StmRlError("--workers-per-run and --max-parallel must be >= 1")
    for agent in args.agents:
        AgentConfig(agent=agent)  # "unknown agent 'x'; choose 'lstm' or 'stm'"
    options = SweepOptions(
        agents=tuple(dict.fromkeys(args.agents)), frame_skips=tuple(dict.fromkeys(args.frame_skips)),
        seeds=tuple(dict.fromkeys(args.seeds)), out=args.out,
        frames=getattr(args, "RunConfig.frames") or RunConfig.frames,
        workers_per_run=args.workers_per_run, max_parallel=args.max_parallel,
        train_flags=tuple(passthrough_flags(args)), poll_interval=args.poll_interval,
        progress=args.progress)
    for spec in options.runs():  # every configuration must be valid before anything starts
        train_config(spec, options, args)
    return options


def passthrough_flags(args: argparse.Namespace) -> list[str]:
    """The training flags given on the sweep's command line, as ``train`` arguments."""
    argv: list[str] = []
    for cls, owned in _SWEEP_OWNED.items():
        for f in dataclasses.fields(cls):
            value = getattr(args, f"{cls.__name__}.{f.name}", None)
            if f.name in owned or value is None or (cls is RunConfig and f.name == "frames"):  # frames: per run
                continue
            if isinstance(value, bool):
                argv.append(flag_name(f.name) if value else "--no-" + flag_name(f.name)[2:])
            else:
                argv += [flag_name(f.name), str(value)]
    return argv


def train_config(spec: RunSpec, options: SweepOptions, args: argparse.Namespace) -> TrainConfig:
    """The config ``train`` will build for ``spec`` (used to reject bad settings before starting)."""
    agent = dataclass_from_flags(AgentConfig, args, agent=spec.agent)
    env = dataclass_from_flags(EnvConfig, args, frame_skip=spec.frame_skip, obs_size=agent.obs_size)
    run_config = dataclass_from_flags(RunConfig, args, run_dir=spec.run_dir, workers=options.workers_per_run,
                                      seed=spec.seed)
    return TrainConfig(env=env, agent=agent, a3c=dataclass_from_flags(A3CConfig, args), run=run_config)


def run(args: argparse.Namespace) -> int:
    return Sweep(options_from_args(args)).run()


# ---------------------------------------------------------------- a run's state on disk
def run_status(run_dir: Path) -> Optional[str]:
    """The status in the run's summary.json (completed / interrupted / failed), None if it has none."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        return read_json(path).get("status")
    except StmRlError:
        return None


def frames_done(run_dir: Path) -> int:
    """Emulator frames a run has trained: from its summary, or the last line of its game log if newer."""
    run_dir = Path(run_dir)
    frames = 0
    if (run_dir / "summary.json").exists():
        try:
            frames = int(read_json(run_dir / "summary.json")["counters"]["frames"])
        except (StmRlError, KeyError, TypeError, ValueError):
            pass
    last = _last_jsonl_record(run_dir / "games.jsonl")
    return max(frames, int(last.get("frames", 0))) if last else frames


def _last_jsonl_record(path: Path, tail_bytes: int = 4096) -> Optional[dict]:
    """The last complete record of a JSONL file, reading only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def train_command(spec: RunSpec, options: SweepOptions) -> list[str]:
    """The child command line: resume from the latest checkpoint if there is one, else a new run."""
    base = [sys.executable, "-m", "stm_rl.cli", "train"]
    common = ["--frames", str(options.frames), "--workers", str(options.workers_per_run), "--no-progress"]
    if checkpoint_paths(spec.run_dir)["latest"].exists():
        return base + ["--resume", str(spec.run_dir), *common]
    return base + ["--agent", spec.agent, "--frame-skip", str(spec.frame_skip), "--seed", str(spec.seed),
                   "--run-dir", str(spec.run_dir), *options.train_flags, *common]


def is_finished(spec: RunSpec, frames_budget: int) -> bool:
    """Completed with at least this sweep's budget (a larger --frames makes a completed run resume)."""
    return run_status(spec.run_dir) == "completed" and frames_done(spec.run_dir) >= frames_budget


# ---------------------------------------------------------------- the queue
@dataclass
class Sweep:
    """Runs the configurations of ``options`` through a bounded queue of child processes."""

    options: SweepOptions
    entries: list[RunEntry] = field(init=False)
    running: dict[str, subprocess.Popen] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.entries = [RunEntry(spec) for spec in self.options.runs()]
        self.manifest_path = self.options.out / MANIFEST_NAME

    def run(self) -> int:
        self.options.out.mkdir(parents=True, exist_ok=True)
        for entry in self.entries:
            if is_finished(entry.spec, self.options.frames):
                entry.state, entry.message = "done", "completed earlier"
        skipped = sum(entry.state == "done" for entry in self.entries)
        print(f"sweep {self.options.out}: {len(self.entries)} runs ({skipped} already completed), "
              f"{self.options.frames:,} frames each, at most {self.options.max_parallel} at a time")
        self._write_manifest()
        bar = tqdm(total=len(self.entries), initial=skipped, unit="run", desc="sweep", dynamic_ncols=True,
                   disable=not self.options.progress, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        previous_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self._loop(bar)
        except KeyboardInterrupt:
            tqdm.write("sweep: interrupted; stopping the running trainings (they write final checkpoints)...",
                       file=sys.stderr)
            self._stop_children()
            self._write_manifest()
            bar.close()
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous_term)
        bar.close()
        return self._report()

    def _loop(self, bar: tqdm) -> None:
        while True:
            self._reap(bar)
            for entry in self._pending()[: self.options.max_parallel - len(self.running)]:
                self._start(entry)
            if not self.running:
                return
            bar.set_postfix_str(self._frames_postfix(), refresh=False)
            bar.refresh() if sys.stderr.isatty() else None
            time.sleep(self.options.poll_interval)

    def _pending(self) -> list[RunEntry]:
        return [entry for entry in self.entries if entry.state == "pending"]

    def _start(self, entry: RunEntry) -> None:
        spec = entry.spec
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        _set_aside_orphan_logs(spec.run_dir)
        command = train_command(spec, self.options)
        with open(entry.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            # A session of its own: a terminal's Ctrl-C reaches only the sweep, which forwards it once.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.running[spec.name] = process
        entry.state, entry.exit_code, entry.message = "running", None, ""
        entry.attempts += 1
        tqdm.write(f"start {spec.name}" + (" (resume)" if "--resume" in command else ""))
        self._write_manifest()

    def _reap(self, bar: tqdm) -> None:
        for entry in self.entries:
            process = self.running.get(entry.spec.name)
            if process is None or process.poll() is None:
                continue
            del self.running[entry.spec.name]
            self._finish(entry, process.returncode)
            if entry.state in ("done", "failed"):
                bar.update(1)
            tqdm.write(f"{entry.state} {entry.spec.name} (exit code {entry.exit_code})"
                       + (f": {entry.message}" if entry.message else ""))
            self._write_manifest()

    def _finish(self, entry: RunEntry, exit_code: int) -> None:
        entry.exit_code = exit_code
        status = run_status(entry.spec.run_dir)
        if exit_code == 0 and status == "completed":
            entry.state = "done"
        elif exit_code == 0 and status == "interrupted":
            entry.state, entry.message = "interrupted", "stopped from outside; re-run the sweep to resume"
        else:
            entry.state = "failed"
            entry.message = f"see {entry.log_path}" + (f" (summary status {status})" if status else "")

    def _stop_children(self) -> None:
        for process in self.running.values():
            _signal(process, signal.SIGINT)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for name, process in self.running.items():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # second Ctrl-C or too slow
                _kill_process_group(process)
                process.wait()
            entry = next(e for e in self.entries if e.spec.name == name)
            entry.state, entry.exit_code = "interrupted", process.returncode
            entry.message = "stopped by Ctrl-C; re-run the sweep to resume"
        self.running.clear()

    def _frames_postfix(self) -> str:
        done = sum(frames_done(entry.spec.run_dir) for entry in self.entries)
        total = self.options.frames * len(self.entries)
        return f"running {', '.join(self.running)} | frames {_readable(done)}/{_readable(total)}"

    def _write_manifest(self) -> None:
        write_json_atomic(self.manifest_path, {
            "out": str(self.options.out), "frames": self.options.frames,
            "workers_per_run": self.options.workers_per_run, "max_parallel": self.options.max_parallel,
            "train_flags": list(self.options.train_flags), "argv": sys.argv,
            "runs": [{**entry.to_json(), "frames_done": frames_done(entry.spec.run_dir)}
                     for entry in self.entries]})

    def _report(self) -> int:
        failed = [entry for entry in self.entries if entry.state == "failed"]
        held = [entry for entry in self.entries if entry.state == "interrupted"]
        done = sum(entry.state == "done" for entry in self.entries)
        print(f"sweep {self.options.out}: {done}/{len(self.entries)} runs completed"
              + (f", {len(held)} interrupted" if held else "") + (f", {len(failed)} failed" if failed else ""))
        for entry in failed:
            print(f"  failed: {entry.spec.name} (exit code {entry.exit_code}), log {entry.log_path}")
        return 1 if failed else 0


def _set_aside_orphan_logs(run_dir: Path) -> None:
    """A run that died before its first checkpoint starts over: keep its old game log under another name."""
    games = run_dir / "games.jsonl"
    if games.exists() and not checkpoint_paths(run_dir)["latest"].exists():
        games.rename(run_dir / f"games.orphan-{int(time.time())}.jsonl")


def _signal(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is None:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


def _kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL a child and its worker processes (the child leads its own session and process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _raise_keyboard_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _readable(frames: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if frames >= size:
            return f"{frames / size:.1f}{unit}"
    return str(frames)
