"""``stm-rl sweep``: many training runs (agents x frame skips x seeds), on this machine or on a Ray cluster.

Each run gets its whole config in ``<run_dir>/sweep-run.json`` and is trained by ``python -m stm_rl.sweep_run``
(:mod:`stm_rl.sweep_run`) with its output in ``<run_dir>/train.log``, so one crashing run cannot take the
sweep down. Where that process runs is the backend's business: ``local`` (default) keeps at most
``--max-parallel`` child processes alive on this machine, ``ray`` (:mod:`stm_rl.sweep_ray`) runs each as a
Ray task on the cluster's nodes. Both share everything else here: ``<out>/sweep.json`` records every run's
state (pending / running / done / failed / interrupted), exit code, attempts and log file; re-running the
same command skips completed runs and resumes the others from their checkpoints (after checking that the
flags still match the settings the runs were trained with); a failed run is retried from its latest
checkpoint up to ``--retries`` times; Ctrl-C stops the runs, which write their final checkpoints.

Exit status: 0 every run completed, 1 some run failed or was stopped from outside, 2 bad input (nothing
started), 130 interrupted by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from agents import AgentConfig
from envs import EnvConfig

from stm_rl import sweep_run
from stm_rl.a3c.config import PRESETS, A3CConfig, RunConfig, TrainConfig, build_train_config
from stm_rl.a3c.limits import validate_for_training
from stm_rl.config_cli import add_dataclass_flags, flag_name, given_settings, parse_count, with_flag_names
from stm_rl.conventions import ExitCode, stop_signals_raise_keyboard_interrupt
from stm_rl.evaluate import has_final_evaluation
from stm_rl.progress import clock
from stm_rl.run_dir import SWEEP_MANIFEST, Checkpoint, RunDir, StmRlError, check_can_write, read_json, write_json_atomic

SHUTDOWN_GRACE_S = 300.0
"""Seconds a run gets to write its final checkpoint after Ctrl-C before it is killed."""
STATUS_INTERVAL_S = (10.0, 300.0)
"""Seconds between two looks at the runs' progress: on a terminal (the bar's text), and otherwise (a plain line
in the sweep's log)."""
BACKENDS = ("local", "ray")
RUN_ORDERS = ("skip", "seed")
"""How :meth:`SweepOptions.runs` orders the grid: frame skip outermost, or seed outermost."""

# Settings the sweep sets itself for each run, so they are not flags of the sweep.
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
        return RunDir(self.spec.run_dir).train_log

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
    """Budget of each run in emulator frames; 0 = none (the runs' budget is ``agent_steps``)."""
    workers_per_run: int
    agent_steps: Mapping[int, int] = field(default_factory=dict)
    """Budget of each run in agent steps, by frame skip (``{32: 4_000_000, 0: 10_000_000}``); a skip not here has
    none. A run ends at the first of its budgets."""
    max_parallel: Optional[int] = None
    """Runs alive at the same time; None: 1 on the local backend, as many as the Ray cluster's CPUs hold."""
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Training settings given on the command line, by config class (``{"AgentConfig": {"encoder": "small"}}``)."""
    preset: Optional[str] = None
    """The preset every run starts from before ``settings`` (:data:`stm_rl.a3c.config.PRESETS`; None = cpu)."""
    retries: int = 2
    """Times a failed run is started again from its latest checkpoint before it is reported failed."""
    backend: str = "local"
    ray_address: Optional[str] = None
    """The Ray cluster to join (``auto`` or ``HOST:PORT``); None: Ray's own rule for ``ray.init()`` without an
    address (``RAY_ADDRESS``, else a cluster started on this machine with ``ray start``, else a local instance that
    lives as long as the sweep)."""
    adopt: Optional[Path] = None
    """A folder ``stm-rl publish`` wrote (``results/figure3``): a run it holds completed, with this sweep's budget,
    final evaluation and settings, is copied into ``out`` where ``out`` has no such run, and counts as done (a
    campaign goes on from its committed results on a machine that never trained them)."""
    order: str = "skip"
    """The order runs start in (:data:`RUN_ORDERS`): ``skip``, every seed of the first frame skip, then the next
    skip; ``seed``, every frame skip of the first seed, then the next seed. Agents of a (skip, seed) always start
    one after the other, so a sweep cut short leaves complete agent pairs."""
    poll_interval: float = 1.0
    progress: bool = True

    def runs(self) -> list[RunSpec]:
        """Every configuration, in the order they start (:attr:`order`)."""
        cells = ([(skip, seed) for seed in self.seeds for skip in self.frame_skips] if self.order == "seed"
                 else [(skip, seed) for skip in self.frame_skips for seed in self.seeds])
        return [RunSpec(agent, skip, seed, self.out / f"{agent}-skip{skip}-seed{seed}")
                for skip, seed in cells for agent in self.agents]

    def describe_budget(self) -> str:
        """``"4.0M agent steps at skip 32, 10.0M agent steps at skip 0 each"`` or ``"20.0M frames each"``."""
        steps = ", ".join(f"{readable_frames(self.agent_steps[skip])} agent steps at skip {skip}"
                          for skip in self.frame_skips if self.agent_steps.get(skip))
        frames = f"{readable_frames(self.frames)} frames" if self.frames else ""
        return " or ".join(part for part in (frames, steps) if part) + " each"

    def settings_as_flags(self) -> dict[str, Any]:
        return {flag_name(name): value for values in self.settings.values() for name, value in values.items()}


# ---------------------------------------------------------------- command line
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train many runs: agents x frame skips x seeds, here or on a Ray cluster",
        description="Train one run per (agent, frame skip, seed), each in its own process with its log in "
                    "<run_dir>/train.log, on this machine (--backend local, at most --max-parallel at a time) "
                    "or on a Ray cluster (--backend ray, see docs/cluster.md). Re-running the same command "
                    "skips completed runs and resumes interrupted ones. Other training flags apply to every "
                    "run. Exit status: 0 all runs completed, 1 some run failed, 2 bad input, 130 interrupted.")
    parser.add_argument("--agents", nargs="+", default=["lstm", "stm"], metavar="AGENT",
                        help="agents to train: lstm, stm (default: lstm stm)")
    parser.add_argument("--frame-skips", nargs="+", type=int, default=[0, 4, 16, 32], metavar="N",
                        help="frame skips (default: 0 4 16 32, the paper's Figure 3)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="SEED",
                        help="seeds, >= 0 (default: 0 1 2 3 4)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"),
                        help="directory of the sweep: one run directory per configuration and sweep.json; "
                             "with --backend ray a folder every node sees at the same path (default: runs/sweep)")
    parser.add_argument("--workers-per-run", type=int, default=2, help="worker processes of each run (default: 2)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="starting point of every run's settings, as in `stm-rl train --preset`; the training "
                             "flags given override it (default: cpu)")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="runs alive at the same time (default: 1 locally; with --backend ray as many as "
                             "the cluster's CPUs hold, each run taking workers-per-run + 1 CPUs)")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a failed run is restarted from its latest checkpoint (default: 2)")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="where runs train: local child processes or tasks on a Ray cluster (default: local)")
    parser.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                        help="the Ray cluster to join with --backend ray: the address `ray start --head` printed, "
                             "or auto for the cluster this machine belongs to (default: none, Ray's rule for "
                             "ray.init(): $RAY_ADDRESS, else a cluster started here with `ray start`, else a local "
                             "Ray instance for this sweep alone)")
    parser.add_argument("--agent-steps", nargs="+", metavar="[SKIP=]STEPS",
                        help="budget of each run in agent steps instead of frames (the unit in which frame skips "
                             "compare): one count for every run (4M), or one per frame skip (32=4M 16=4M 4=5M 0=10M); "
                             "with --frames too, a run ends at the first budget it reaches")
    parser.add_argument("--adopt", type=Path, default=None, metavar="PUBLISHED_DIR",
                        help="a folder `stm-rl publish` wrote (e.g. results/figure3): its runs that completed with "
                             "this sweep's budget and settings are copied into --out where --out lacks them, and "
                             "are not trained again (default: none)")
    parser.add_argument("--order", choices=RUN_ORDERS, default="skip",
                        help="the order runs start in, agent pairs together: skip = every seed of the first frame "
                             "skip, then the next skip (the skips most wanted first); seed = every skip of the first "
                             "seed, then the next seed (every skip gets a run early) (default: skip)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list every run with its state and frames done, and start nothing")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show the sweep's progress bar (default: on)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    for cls, owned in _SWEEP_OWNED.items():
        owned = (*owned, "agent_steps") if cls is RunConfig else owned  # the sweep's --agent-steps, by skip
        add_dataclass_flags(parser, cls, exclude=owned, title=f"training settings ({cls.__name__})")
    parser.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """Validate the command line into :class:`SweepOptions`; a bad value raises before anything starts."""
    for flag, value in (("--workers-per-run", args.workers_per_run), ("--max-parallel", args.max_parallel or 1)):
        if value < 1:
            raise StmRlError(f"{flag} must be >= 1, got {value}")
    if args.retries < 0:
        raise StmRlError(f"--retries must be >= 0, got {args.retries}")
    for flag, values in (("--seeds", args.seeds), ("--frame-skips", args.frame_skips)):
        negative = [value for value in values if value < 0]
        if negative:
            raise StmRlError(f"{flag} must be >= 0, got {negative[0]}")
    for agent in args.agents:
        AgentConfig(agent=agent)  # "unknown agent 'x'; choose 'lstm' or 'stm'"
    settings = {cls.__name__: given_settings(cls, args, exclude=(*owned, *(("frames", "agent_steps")
                                                                           if cls is RunConfig else ())))
                for cls, owned in _SWEEP_OWNED.items()}
    agent_steps = parse_agent_steps(args.agent_steps, tuple(dict.fromkeys(args.frame_skips)))
    frames = getattr(args, "RunConfig.frames")
    out = args.out.expanduser()
    adopt = args.adopt.expanduser() if args.adopt is not None else None
    if adopt is not None and not adopt.is_dir():
        raise StmRlError(f"--adopt {adopt}: no such folder (give the folder `stm-rl publish --to` wrote)")
    options = SweepOptions(
        agents=tuple(dict.fromkeys(args.agents)), frame_skips=tuple(dict.fromkeys(args.frame_skips)),
        seeds=tuple(dict.fromkeys(args.seeds)), out=out.absolute() if args.backend == "ray" else out,
        frames=frames if frames is not None else (0 if agent_steps else RunConfig.frames), agent_steps=agent_steps,
        workers_per_run=args.workers_per_run, max_parallel=args.max_parallel,
        settings={name: values for name, values in settings.items() if values}, preset=args.preset,
        retries=args.retries, adopt=adopt, order=args.order,
        backend=args.backend, ray_address=args.ray_address, poll_interval=args.poll_interval,
        progress=args.progress)
    fields = [f.name for cls in _SWEEP_OWNED for f in dataclasses.fields(cls)]
    for spec in options.runs():  # every configuration must be valid before anything starts
        try:
            validate_for_training(run_config(spec, options))
        except ValueError as error:  # a config's own check names the field: name the flag
            raise StmRlError(with_flag_names(str(error), fields)) from None
    return options


def parse_agent_steps(values: Optional[list[str]], frame_skips: tuple[int, ...]) -> dict[int, int]:
    """``--agent-steps 4M`` (every skip) or ``--agent-steps 32=4M 0=10M`` (one per skip, every skip named)."""
    if not values:
        return {}
    pairs = [value.split("=", 1) for value in values]
    if not (len(values) == 1 and len(pairs[0]) == 1) and any(len(pair) != 2 for pair in pairs):
        raise StmRlError("--agent-steps takes one count, or SKIP=COUNT for each frame skip "
                         f"(e.g. 32=4M 0=10M), got {' '.join(values)}")
    try:
        if len(pairs[0]) == 1:
            steps = {skip: parse_count(values[0]) for skip in frame_skips}
        else:
            steps = {int(skip): parse_count(count) for skip, count in pairs}
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise StmRlError(f"--agent-steps: {error}; give one count for every run, or SKIP=COUNT for each frame "
                         "skip (e.g. 32=4M 0=10M)") from None
    missing = [skip for skip in frame_skips if skip not in steps]
    extra = [skip for skip in steps if skip not in frame_skips]
    if missing or extra:
        raise StmRlError(f"--agent-steps must give one budget for each of --frame-skips {' '.join(map(str, frame_skips))}"
                         + (f"; none for {' '.join(map(str, missing))}" if missing else "")
                         + (f"; {' '.join(map(str, extra))} is not swept" if extra else ""))
    bad = [skip for skip, count in steps.items() if count <= 0]
    if bad:
        raise StmRlError(f"--agent-steps must be > 0, got {steps[bad[0]]} for skip {bad[0]}")
    return steps


def run_config(spec: RunSpec, options: SweepOptions) -> TrainConfig:
    """The complete config of one run: the sweep's settings and preset by the rule of ``stm-rl train``
    (:func:`~stm_rl.a3c.config.build_train_config`), with what the sweep owns fixed per run."""
    return build_train_config(options.settings, options.preset, fixed={
        "AgentConfig": {"agent": spec.agent}, "EnvConfig": {"frame_skip": spec.frame_skip},
        "RunConfig": {"run_dir": spec.run_dir, "frames": options.frames,
                      "agent_steps": options.agent_steps.get(spec.frame_skip, 0), "workers": options.workers_per_run,
                      "seed": spec.seed, "progress": False}})


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    sweep = Sweep(options)
    if args.dry_run:
        return sweep.dry_run()
    return sweep.run()


# ---------------------------------------------------------------- a run's state on disk
def trained(run_dir: Path) -> tuple[int, int]:
    """``(emulator frames, agent steps)`` a run has trained (:meth:`RunDir.trained`)."""
    frames, agent_steps, _ = RunDir(run_dir).trained()
    return frames, agent_steps


class RunTiming(NamedTuple):
    """What the sweep's status line and time estimate know of one run."""

    kind: tuple[str, int]
    """(agent, frame skip): runs of one kind train at one rate."""
    used: float
    """Fraction of the run's budget trained so far (0..1)."""
    wall_time: float
    """Seconds it took to train that fraction."""
    frames: int = 0
    """Emulator frames trained so far."""
    agent_steps: int = 0
    """Agent steps trained so far."""
    budget_steps: float = 0.0
    """Agent steps the whole budget comes to (a budget in frames: frames over the frame skip); 0: unknown."""


class Remaining(NamedTuple):
    """The sweep's time left (:func:`estimate_remaining`)."""

    seconds: float
    interpolated: list[tuple[str, int]]
    """Kinds with no run trained yet, timed from their agent's rates at other frame skips."""
    untimed: list[tuple[str, int]]
    """Kinds that could not be timed at all (left out of ``seconds``)."""


def seconds_per_step(timings: Sequence[RunTiming], agent: str, frame_skip: int) -> Optional[float]:
    """Training seconds per agent step that a kind with no run yet can expect, from the kinds of the same agent
    that have trained: each of those gives its seconds per agent step against its emulator frames per agent step,
    and a straight line through them (least squares; the network's cost per step plus the emulator's per frame)
    is read at this skip's frames per step. None with fewer than two such kinds, or a line that does not give a
    positive time."""
    points: dict[int, list[float]] = {}
    for timing in timings:
        if timing.kind[0] == agent and timing.agent_steps > 0 and timing.wall_time > 0 and timing.frames > 0:
            totals = points.setdefault(timing.kind[1], [0.0, 0.0, 0.0])
            totals[0] += timing.frames
            totals[1] += timing.agent_steps
            totals[2] += timing.wall_time
    if len(points) < 2:
        return None
    frames_per_step = [frames / steps for frames, steps, _ in points.values()]
    seconds = [wall / steps for _, steps, wall in points.values()]
    if max(frames_per_step) - min(frames_per_step) < 1e-9:
        return None
    slope, intercept = np.polyfit(frames_per_step, seconds, 1)
    estimate = float(intercept + slope * max(frame_skip, 1))
    return estimate if estimate > 0 else None


def estimate_remaining(timings: Sequence[RunTiming], parallel: int) -> Remaining:
    """Seconds the runs still need at the rate their kind has measured (the time a whole budget takes, from
    every run of the kind that has trained: sum of wall times over sum of budget fractions), spread over
    ``parallel`` runs at a time but never shorter than the longest run left. A kind with no run trained yet is
    timed from its agent's other skips (:func:`seconds_per_step`) where it can be, and named as untimed (left out
    of the seconds) where it cannot."""
    spent: dict[tuple[str, int], float] = {}
    fraction: dict[tuple[str, int], float] = {}
    for timing in timings:
        if timing.used > 0 and timing.wall_time > 0:
            spent[timing.kind] = spent.get(timing.kind, 0.0) + timing.wall_time
            fraction[timing.kind] = fraction.get(timing.kind, 0.0) + timing.used
    left, interpolated, untimed = [], set(), set()
    for timing in timings:
        if timing.used >= 1.0:
            continue
        if timing.kind in fraction:
            left.append((1.0 - timing.used) * spent[timing.kind] / fraction[timing.kind])
            continue
        per_step = seconds_per_step(timings, *timing.kind) if timing.budget_steps > 0 else None
        if per_step is None:
            untimed.add(timing.kind)
        else:
            left.append((1.0 - timing.used) * timing.budget_steps * per_step)
            interpolated.add(timing.kind)
    return Remaining(max(sum(left) / max(parallel, 1), max(left, default=0.0)), sorted(interpolated), sorted(untimed))


def describe_remaining(remaining: Remaining) -> str:
    """``ETA 101.2 h``, ``ETA 40.0 h (stm at skip 16 timed from the stm's other skips)`` or ``ETA >= 3.0 h (stm at
    skip 16 not timed yet)`` for the sweep's status line."""
    seconds = remaining.seconds
    text = f"ETA {seconds / 3600:.1f} h" if seconds >= 3600 else f"ETA {clock(seconds)}"
    notes = []
    for kinds, note in ((remaining.interpolated, "timed from the agent's other skips"),
                        (remaining.untimed, "not timed yet")):
        if kinds:
            notes.append(", ".join(f"{agent} at skip {skip}" for agent, skip in kinds) + " " + note)
    if remaining.untimed:
        text = text.replace("ETA", "ETA >=")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def trained_fields(run_dir: Path) -> dict[str, int]:
    """:func:`trained` as the fields of a run's line in sweep.json."""
    frames, agent_steps = trained(run_dir)
    return {"frames_done": frames, "agent_steps_done": agent_steps}


def is_finished(spec: RunSpec, options: SweepOptions) -> bool:
    """Completed with at least this sweep's budget (a larger --frames or --agent-steps makes a completed run
    resume)."""
    run = run_config(spec, options).run
    return (RunDir(spec.run_dir).status() == "completed" and run.budget_reached(*trained(spec.run_dir))
            and (run.final_eval_games == 0
                 or has_final_evaluation(spec.run_dir, spec.frame_skip, run.final_eval_games)))


def disk_state(spec: RunSpec, options: SweepOptions) -> str:
    """What a sweep would do with the run now: done, running (host pid), resume (last status) or start."""
    layout = RunDir(spec.run_dir)
    holder = layout.lock_holder()
    if holder:
        return f"running ({holder})"
    if is_finished(spec, options):
        return "done"
    if layout.checkpoint(Checkpoint.LATEST).exists():
        return f"resume ({layout.status() or 'killed'})"
    return "start"


def saved_config(run_dir: Path) -> TrainConfig:
    """The config a run was trained with (its config.json); StmRlError naming the file if it is unreadable."""
    config_file = RunDir(run_dir).config
    try:
        return TrainConfig.from_dict(read_json(config_file)["config"])
    except (StmRlError, KeyError, TypeError, ValueError) as error:
        raise StmRlError(f"{config_file} is unreadable ({error})") from None


def changed_settings(options: SweepOptions) -> dict[str, list[str]]:
    """Runs already trained with settings other than this sweep's, with the settings that differ."""
    changed = {}
    for spec in options.runs():
        layout = RunDir(spec.run_dir)
        config_file = layout.config
        if not (layout.checkpoint(Checkpoint.LATEST).exists() and config_file.exists()):
            continue  # nothing trained yet that a change could mix with
        try:
            saved = saved_config(spec.run_dir)
        except StmRlError as error:
            raise StmRlError(f"cannot check the settings of {spec.run_dir}: {error}") from None
        differences = sweep_run.settings_differ(saved, run_config(spec, options))
        if differences:
            changed[spec.name] = differences
    return changed


def check_settings_unchanged(options: SweepOptions) -> None:
    """Refuse to continue runs with flags other than those they were trained with (the results would mix)."""
    changed = changed_settings(options)
    if changed:
        first, differences = next(iter(changed.items()))
        more = f" (and {len(changed) - 1} more run(s))" if len(changed) > 1 else ""
        raise StmRlError(f"{first}{more} in {options.out} was trained with other settings: "
                         f"{'; '.join(differences)}; repeat the original flags, or choose another --out")


def adoption(spec: RunSpec, options: SweepOptions) -> tuple[Optional[Path], str]:
    """``(published run, "")`` if ``--adopt`` would copy this run into ``--out``; ``(None, why not)`` where the
    published folder has the run but it does not qualify; ``(None, "")`` where there is nothing to adopt."""
    if options.adopt is None or spec.run_dir.exists():
        return None, ""
    published = dataclasses.replace(spec, run_dir=options.adopt / spec.name)
    if not RunDir(published.run_dir).summary.exists():
        return None, ""
    if not is_finished(published, options):
        return None, "not completed with this sweep's budget and final evaluation"
    try:
        saved = saved_config(published.run_dir)
    except StmRlError as error:
        return None, str(error)
    differences = sweep_run.settings_differ(saved, run_config(spec, options))
    if differences:
        return None, f"trained with other settings: {'; '.join(differences)}"
    return published.run_dir, ""


def adopt_published_runs(options: SweepOptions) -> list[str]:
    """Copy the runs :func:`adoption` accepts into ``--out`` (each whole, through a temporary folder, so a
    copy cut short leaves nothing half there); one line per run adopted or passed over."""
    lines = []
    for spec in options.runs():
        source, why_not = adoption(spec, options)
        if why_not:
            lines.append(f"not adopted: {spec.name} in {options.adopt} ({why_not}); it trains here")
        if source is None:
            continue
        temporary = spec.run_dir.with_name(f".{spec.name}.adopting")
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.copytree(source, temporary)
        os.replace(temporary, spec.run_dir)
        lines.append(f"adopted {spec.name} from {options.adopt} (completed there)")
    return lines


# ---------------------------------------------------------------- backends
class Backend(Protocol):
    """Where the runs' processes live: :class:`LocalBackend` or :class:`stm_rl.sweep_ray.RayBackend`."""

    def capacity(self, runs: int) -> int:
        """How many runs may be started at once."""

    def start(self, entry: RunEntry) -> None:
        """Start training the run (its run file is written)."""

    def wait(self, timeout: float) -> list[tuple[str, Optional[int], str]]:
        """Wait up to ``timeout`` seconds; the runs that ended: (name, exit code or None, error message)."""

    def running(self) -> list[str]:
        """Names of the runs started and not yet ended."""

    def stop(self, grace: float) -> dict[str, Optional[int]]:
        """Ask every running run to stop (final checkpoint), wait up to ``grace`` s, kill the rest."""

    def close(self) -> None:
        """Release what the backend holds (a cluster connection)."""


@dataclass
class LocalBackend:
    """Runs as child processes of this one, each in a session of its own: a terminal's Ctrl-C reaches only
    the sweep, which forwards it once; if the sweep is killed, its children get SIGTERM (see sweep_run)."""

    options: SweepOptions
    processes: dict[str, sweep_run.RunProcess] = field(default_factory=dict)

    def capacity(self, runs: int) -> int:
        return self.options.max_parallel or 1

    def start(self, entry: RunEntry) -> None:
        self.processes[entry.spec.name] = sweep_run.RunProcess.start(entry.spec.run_dir)

    def wait(self, timeout: float) -> list[tuple[str, Optional[int], str]]:
        deadline = time.monotonic() + timeout
        while True:
            ended = [(name, code, "") for name, p in self.processes.items() if (code := p.poll()) is not None]
            if ended or time.monotonic() >= deadline:
                for name, _, _ in ended:
                    self.processes.pop(name).kill()  # workers a killed trainer left behind
                return ended
            time.sleep(min(0.2, timeout))

    def running(self) -> list[str]:
        return list(self.processes)

    def stop(self, grace: float) -> dict[str, Optional[int]]:
        for process in self.processes.values():
            process.interrupt()
        deadline = time.monotonic() + grace
        codes = {name: process.stop(max(0.0, deadline - time.monotonic())) for name, process in self.processes.items()}
        self.processes.clear()
        return codes

    def close(self) -> None:
        pass


def make_backend(options: SweepOptions) -> Backend:
    if options.backend == "ray":
        try:
            from stm_rl.sweep_ray import RayBackend  # Ray is an optional dependency
        except ModuleNotFoundError as error:
            if error.name != "ray":
                raise
            raise StmRlError("--backend ray needs Ray: pip install 'stm-rl[ray]' (on every machine of the "
                             "cluster)") from None
        return RayBackend.connect(options)
    return LocalBackend(options)


# ---------------------------------------------------------------- the queue
@dataclass
class Sweep:
    """Runs the configurations of ``options`` through a backend, keeping sweep.json up to date."""

    options: SweepOptions
    entries: list[RunEntry] = field(init=False)

    def __post_init__(self) -> None:
        self.entries = [RunEntry(spec) for spec in self.options.runs()]
        self.by_name = {entry.spec.name: entry for entry in self.entries}
        self.manifest_path = self.options.out / SWEEP_MANIFEST

    def dry_run(self) -> int:
        """Print every run with what a sweep would do with it; start nothing, write nothing."""
        states = {entry.spec.name: disk_state(entry.spec, self.options) for entry in self.entries}
        adoptions = {entry.spec.name: adoption(entry.spec, self.options) for entry in self.entries}
        for name, (source, _) in adoptions.items():
            if source is not None:
                states[name] = f"adopt ({self.options.adopt})"
        changed = changed_settings(self.options) if self.options.out.is_dir() else {}
        print(f"sweep {self.options.out} ({self.options.backend} backend): {len(self.entries)} runs, "
              f"{self.options.describe_budget()}; nothing started (--dry-run)")
        print(results_table(self.entries, states))
        parallel = self.options.max_parallel or (1 if self.options.backend == "local" else len(self.entries))
        sources = {name: source for name, (source, _) in adoptions.items() if source is not None}
        print(f"time left, {parallel} at a time at the rates its runs have measured: "
              f"{describe_remaining(estimate_remaining(self._timings(sources), parallel)).removeprefix('ETA ')}")
        for name, differences in changed.items():
            print(f"  {name} was trained with other settings: {'; '.join(differences)}")
        for name, (_, why_not) in adoptions.items():
            if why_not:
                print(f"  {name} in {self.options.adopt} would not be adopted: {why_not}")
        return 0

    def run(self) -> int:
        check_settings_unchanged(self.options)
        check_can_write(self.options.out, "--out", directory=True)
        for line in adopt_published_runs(self.options):
            print(line, flush=True)
        backend = make_backend(self.options)  # with Ray: connects and checks --out from every node
        try:
            return self._run(backend)
        finally:
            backend.close()

    def _run(self, backend: Backend) -> int:
        for entry in self.entries:
            if is_finished(entry.spec, self.options):
                entry.state, entry.message = "done", "completed earlier"
        skipped = sum(entry.state == "done" for entry in self.entries)
        capacity = backend.capacity(len(self.entries))
        print(f"sweep {self.options.out}: {len(self.entries)} runs ({skipped} already completed), "
              f"{self.options.describe_budget()}, {self.options.backend} backend, at most {capacity} at a time",
              flush=True)
        self._write_manifest()
        bar = tqdm(total=len(self.entries), initial=skipped, unit="run", desc="sweep", dynamic_ncols=True,
                   disable=not self.options.progress, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        # Ctrl-C and SIGTERM stop the runs. The command line's run_command already has them raise
        # KeyboardInterrupt; a sweep started from Python gets the same here.
        try:
            with stop_signals_raise_keyboard_interrupt():
                self._loop(backend, capacity, bar)
        except KeyboardInterrupt:
            tqdm.write("sweep: interrupted; stopping the running trainings (they write final checkpoints)...",
                       file=sys.stderr)
            for name, code in backend.stop(SHUTDOWN_GRACE_S).items():
                entry = self.by_name[name]
                entry.state, entry.exit_code = "interrupted", code
                entry.message = "stopped by Ctrl-C; re-run the sweep to resume"
            self._write_manifest()
            bar.close()
            print(results_table(self.entries))
            return ExitCode.INTERRUPTED
        bar.close()
        return self._report()

    def _loop(self, backend: Backend, capacity: int, bar: tqdm) -> None:
        live = sys.stderr.isatty()
        interval, last_status = STATUS_INTERVAL_S[0 if live else 1], time.monotonic()
        while True:
            free = capacity - len(backend.running())
            for entry in [e for e in self.entries if e.state == "pending"][: max(0, free)]:
                self._start(backend, entry)
            if not backend.running():
                return
            for name, exit_code, error in backend.wait(self.options.poll_interval):
                entry = self.by_name[name]
                self._finish(entry, exit_code, error)
                if entry.state in ("done", "failed"):
                    bar.update(1)
                tqdm.write(f"{entry.state} {name} (exit code {entry.exit_code})"
                           + (f": {entry.message}" if entry.message else ""))
                self._write_manifest()
            if time.monotonic() - last_status < interval:
                continue
            last_status, status = time.monotonic(), self._status_line(backend)
            if live:
                bar.set_postfix_str(status, refresh=True)
            elif self.options.progress:
                tqdm.write(f"sweep: {int(bar.n)}/{len(self.entries)} runs done | {status}")

    def _start(self, backend: Backend, entry: RunEntry) -> None:
        spec = entry.spec
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        sweep_run.write_run_file(run_config(spec, self.options))
        resume = RunDir(spec.run_dir).checkpoint(Checkpoint.LATEST).exists()
        backend.start(entry)
        entry.state, entry.exit_code, entry.message = "running", None, ""
        entry.attempts += 1
        tqdm.write(f"start {spec.name}" + (" (resume)" if resume else "")
                   + (f", attempt {entry.attempts}" if entry.attempts > 1 else ""))
        self._write_manifest()

    def _finish(self, entry: RunEntry, exit_code: Optional[int], error: str) -> None:
        """Set the run's state from how its process ended and its summary.json; retry a failure."""
        entry.exit_code = exit_code
        status = RunDir(entry.spec.run_dir).status()
        if exit_code == 0 and status == "completed":
            entry.state, entry.message = "done", ""
            return
        if exit_code in (ExitCode.COMPLETED, ExitCode.INTERRUPTED) and status == "interrupted":
            entry.state, entry.message = "interrupted", "stopped from outside; re-run the sweep to resume"
            return
        reason = error or f"see {entry.log_path}" + (f" (summary status {status})" if status else "")
        if entry.attempts <= self.options.retries and exit_code != ExitCode.BAD_INPUT:  # a retry cannot help
            entry.state = "pending"
            entry.message = f"attempt {entry.attempts} failed ({reason}); retrying from the latest checkpoint"
        else:
            entry.state, entry.message = "failed", reason

    def _status_line(self, backend: Backend) -> str:
        """Runs going, frames and agent steps trained, share of the budget used, time left."""
        timings = self._timings()
        used = sum(timing.used for timing in timings)
        # at the parallelism of now: the runs started (with Ray some of them may still wait in its queue)
        parallel = min(backend.capacity(len(self.entries)), len(backend.running()))
        eta = describe_remaining(estimate_remaining(timings, parallel))
        return (f"running {', '.join(backend.running())} | frames {readable_frames(sum(t.frames for t in timings))} | "
                f"agent steps {readable_frames(sum(t.agent_steps for t in timings))} | budget {100 * used / len(self.entries):.1f}% "
                f"| {eta}")

    def _timings(self, run_dirs: Optional[Mapping[str, Path]] = None) -> list[RunTiming]:
        """What each run has trained and in how long, from its run directory (or the one ``run_dirs`` names)."""
        timings = []
        for entry in self.entries:
            run_dir = (run_dirs or {}).get(entry.spec.name, entry.spec.run_dir)
            frames, agent_steps, wall_time = RunDir(run_dir).trained()
            budget = run_config(entry.spec, self.options).run
            budget_steps = min([float(budget.agent_steps)] * bool(budget.agent_steps)
                               + [budget.frames / max(entry.spec.frame_skip, 1)] * bool(budget.frames), default=0.0)
            timings.append(RunTiming((entry.spec.agent, entry.spec.frame_skip),
                                     min(budget.budget_used(frames, agent_steps), 1.0), wall_time, frames, agent_steps,
                                     budget_steps))
        return timings

    def _write_manifest(self) -> None:
        """sweep.json: this sweep's settings and one line per run. Several sweeps may share an ``--out`` (a subset
        of a grid run out of order, more seeds added later): the runs another sweep recorded there keep their
        lines, in their order, with what their run directories say now; the budgets per skip are merged too."""
        earlier = earlier_manifest(self.options.out)
        mine = {name: {**entry.to_json(),
                       **trained_fields(entry.spec.run_dir)}
                for name, entry in self.by_name.items()}
        runs = [mine.pop(run["name"]) if run["name"] in mine else run for run in earlier.get("runs", [])]
        write_json_atomic(self.manifest_path, {
            "out": str(self.options.out), "frames": self.options.frames,
            "agent_steps": {**earlier.get("agent_steps", {}),
                            **{str(skip): steps for skip, steps in self.options.agent_steps.items()}},
            "backend": self.options.backend,
            "workers_per_run": self.options.workers_per_run, "max_parallel": self.options.max_parallel,
            "retries": self.options.retries, "order": self.options.order,
            "settings": self.options.settings_as_flags(),
            "preset": self.options.preset or "cpu", "argv": sys.argv,
            "runs": runs + list(mine.values())})

    def _report(self) -> int:
        failed = [entry for entry in self.entries if entry.state == "failed"]
        held = [entry for entry in self.entries if entry.state == "interrupted"]
        done = sum(entry.state == "done" for entry in self.entries)
        print(f"sweep {self.options.out}: {done}/{len(self.entries)} runs completed"
              + (f", {len(held)} interrupted" if held else "") + (f", {len(failed)} failed" if failed else ""))
        print(results_table(self.entries))
        for entry in failed:
            print(f"  failed: {entry.spec.name} (exit code {entry.exit_code}), log {entry.log_path}")
        return ExitCode.FAILED if failed or held else ExitCode.COMPLETED


def earlier_manifest(out: Path) -> dict[str, Any]:
    """What an earlier sweep wrote to ``out``'s sweep.json: its budgets per skip, and its runs' lines whose run
    directory ``out/<name>`` is still there, with the state and counters that directory holds now (``{}`` for no
    manifest or one that cannot be read: it is rewritten anyway)."""
    path = out / SWEEP_MANIFEST
    try:
        manifest = read_json(path) if path.is_file() else {}
    except StmRlError:
        return {}
    if not isinstance(manifest, dict):
        return {}
    states = {"running": "running", "completed": "done", "interrupted": "interrupted", "failed": "failed"}
    runs = []
    for run in manifest.get("runs") or []:
        if not (isinstance(run, dict) and isinstance(run.get("name"), str) and (out / run["name"]).is_dir()):
            continue
        run_dir = out / run["name"]
        layout = RunDir(run_dir)
        state = states.get(layout.status())
        runs.append({**run, "run_dir": str(run_dir), "log": str(layout.train_log),
                     "state": state or run.get("state"),
                     **trained_fields(run_dir)})
    steps = manifest.get("agent_steps")
    return {"runs": runs, "agent_steps": steps if isinstance(steps, dict) else {}}


def results_table(entries: list[RunEntry], states: Optional[Mapping[str, str]] = None) -> str:
    """One line per run: state, frames done, games, final and best moving average of the score (from
    summary.json; the window is the runs' --moving-average-window, 100 games by default)."""
    rows = [("run", "state", "frames", "agent steps", "games", "final avg", "best avg")]
    for entry in entries:
        summary = RunDir(entry.spec.run_dir).read_summary()
        games = (summary.get("counters") or {}).get("games")
        rows.append((entry.spec.name, (states or {}).get(entry.spec.name, entry.state),
                     *map(readable_frames, trained(entry.spec.run_dir)), "-" if games is None else str(games),
                     _average(summary.get("moving_average")), _average(summary.get("best_moving_average"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                                      for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def _average(value: Any) -> str:
    return f"{value:+.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def readable_frames(frames: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if frames >= size:
            return f"{frames / size:.1f}{unit}"
    return str(frames)
