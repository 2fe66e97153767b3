"""Time to score on Pong: when each run's 100-game average first reached -15, 0 and +18.

From one or more training run directories (``config.json`` + ``games.jsonl``), reports for each run and
each threshold the wall time, emulator frames, agent steps and games at which the moving average over
the last ``--window`` games (a full window: the first ``window - 1`` games never count) first reached
it, and the best average with where it was reached. Alongside: the machine (cores, CPU model), the
torch version the run recorded, and the training command that reproduces the run. A figure shows the
curves against wall time and against frames, with the thresholds.

    python benchmarks/time_to_score.py results/pong/*                   # table + figure of saved runs
    python benchmarks/time_to_score.py runs/a runs/b --markdown tts.md --figure tts.png
    python benchmarks/time_to_score.py --launch 45 --run-dir runs/tts-lstm -- --agent lstm --encoder small

``--launch MINUTES`` first trains a new run (``stm-rl train`` with the flags after ``--``) for that many
minutes of wall time, stops it cleanly (SIGINT: final checkpoint, resumable with ``stm-rl train
--resume``), then reports on it. Wall time is the run's own training time as its game log records it
(the sum over resumed segments), not the time this script ran.
"""

from __future__ import annotations

import argparse
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stm_rl.a3c.scores import Milestone, Milestones
from stm_rl.a3c.config import training_command
from stm_rl.plotting import moving_average, read_run_config
from stm_rl.conventions import ExitCode, run_command
from stm_rl.run_dir import RunDir, StmRlError, find_run_dirs, machine_description, read_json, read_jsonl

THRESHOLDS = (-15.0, 0.0, 18.0)
REBUILT = "(rebuilt)"
"""Marks a command rebuilt from a run's settings against today's defaults: the run recorded none."""


@dataclass(frozen=True)
class RunScore:
    """A run's curve and its milestones."""

    run_dir: Path
    label: str
    command: str
    machine: str
    torch: str
    wall_time: np.ndarray
    frames: np.ndarray
    average: np.ndarray
    """Moving average at each game (NaN before the window is full)."""
    milestones: dict[float, Optional[Milestone]]
    best: Optional[Milestone]
    """Where the best full-window average was first reached (threshold and average hold its value)."""


def score_run(run_dir: Path, window: int, thresholds: Sequence[float]) -> RunScore:
    """Milestones of one run (StmRlError if it has no game log)."""
    config = read_run_config(run_dir)
    record = read_json(RunDir(run_dir).config)
    game_log = RunDir(run_dir).game_log
    games = list(read_jsonl(game_log)) if game_log.exists() else []
    if not games:
        raise StmRlError(f"{run_dir} has no finished training game yet")
    column = {key: np.array([g[key] for g in games], dtype=float)
              for key in ("wall_time", "frames", "agent_steps", "score")}
    average = moving_average(column["score"], window)
    average[: window - 1] = np.nan  # a 100-game average needs 100 games

    # The rule the trainer announces milestones by, so that both agree to the game.
    reached = Milestones.from_game_log(games, window, tuple(thresholds)).reached
    milestones = {threshold: reached.get(threshold) for threshold in thresholds}
    best = None
    if np.isfinite(average).any():
        i = int(np.nanargmax(average))
        best = Milestone(float(average[i]), float(average[i]), float(column["wall_time"][i]),
                         int(column["frames"][i]), int(column["agent_steps"][i]), i + 1)
    a3c = config.a3c
    label = (f"{config.agent.agent}-{config.agent.encoder} skip {config.env.frame_skip}, {config.run.workers} "
             f"workers x {a3c.envs_per_worker} games, lr {a3c.lr:g}, eps {a3c.adam_eps:g}, "
             f"{a3c.rollout_steps}-step rollouts, {config.agent.precision}, seed {config.run.seed}")
    # the command recorded when the run started (the defaults of the code that ran it); older runs: rebuilt
    command = record.get("command") or f"{training_command(config)} {REBUILT}"
    return RunScore(Path(run_dir), label, command,
                    record.get("machine", f"{machine_description()} (this machine; the run did not record one)"),
                    record.get("versions", {}).get("torch", "?"), column["wall_time"], column["frames"], average,
                    milestones, best)


def format_markdown(scores: Sequence[RunScore], thresholds: Sequence[float], window: int) -> str:
    """A Markdown report: one row per run (each threshold: wall minutes, frames, agent steps, games),
    then each run's machine, torch version and training command."""
    def cell(m: Optional[Milestone]) -> str:
        return "-" if m is None else (f"{m.wall_time / 60:.1f} min, {m.frames / 1e6:.2f}M fr, "
                                      f"{m.agent_steps / 1e6:.2f}M st, {m.games} g")

    head = " | ".join(f"avg >= {t:+g}" for t in thresholds)
    lines = [f"Moving average over {window} games (a full window); wall time is the run's own training time; "
             "fr = emulator frames, st = agent steps, g = games; - = not reached.", "",
             f"| run | agent | so far | {head} | best average |",
             "|---|---|---|" + "---|" * len(thresholds) + "---|"]
    for score in scores:
        so_far = f"{score.wall_time[-1] / 60:.1f} min, {score.frames[-1] / 1e6:.2f}M fr, {len(score.frames)} g"
        best = "-" if score.best is None else f"{score.best.threshold:+.2f} at {cell(score.best)}"
        lines.append(f"| {score.run_dir.name} | {score.label} | {so_far} | "
                     + " | ".join(cell(score.milestones[t]) for t in thresholds) + f" | {best} |")
    rebuilt = any(score.command.endswith(REBUILT) for score in scores)
    lines += ["", "Runs" + (f" (a command marked {REBUILT} was rebuilt from the run's settings against today's "
                            "defaults: the run recorded none):" if rebuilt else ":")]
    for score in scores:
        command = score.command.removesuffix(f" {REBUILT}")
        mark = f" {REBUILT}" if command != score.command else ""
        lines.append(f"- `{score.run_dir.name}` ({score.machine}; torch {score.torch}): `{command}`{mark}")
    return "\n".join(lines) + "\n"


def plot(scores: Sequence[RunScore], thresholds: Sequence[float], path: Path) -> Path:
    """Two panels: the moving average against wall time (minutes) and against emulator frames (M)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5 + 0.2 * len(scores)), sharey=True, layout="constrained")
    colours = plt.get_cmap("tab10" if len(scores) <= 10 else "tab20").colors  # one colour per run
    for score, colour in zip(scores, colours * (len(scores) // len(colours) + 1)):
        axes[0].plot(score.wall_time / 60, score.average, label=f"{score.run_dir.name}: {score.label}",
                     color=colour, linewidth=1.2)
        axes[1].plot(score.frames / 1e6, score.average, color=colour, linewidth=1.2)
    for axis, xlabel in zip(axes, ("wall time (minutes)", "emulator frames (millions)")):
        for threshold in thresholds:
            axis.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("100-game average score")
    figure.suptitle(f"Time to score on Pong ({scores[0].machine.split(' (')[0]})", fontsize=10)
    figure.legend(loc="outside lower center", fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def launch(minutes: float, run_dir: Path, train_args: Sequence[str]) -> Path:
    """Train a new run (or continue one that exists) for ``minutes`` of wall time, then stop it cleanly."""
    resume = RunDir(run_dir).config.exists()
    command = [sys.executable, "-m", "stm_rl.cli", "train"]
    command += ["--resume", str(run_dir)] if resume else [*train_args, "--run-dir", str(run_dir)]
    command += ["--no-progress"]
    print(("continuing " if resume else "launching ") + " ".join(command[2:]), f"for {minutes:g} minutes", flush=True)
    process = subprocess.Popen(command)
    deadline = time.monotonic() + minutes * 60
    try:
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # the trainer stops its workers and writes a final checkpoint
            process.wait()
    if process.returncode not in (ExitCode.COMPLETED, ExitCode.INTERRUPTED):
        raise StmRlError(f"training exited with status {process.returncode}")
    return run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run directories (or folders holding them)")
    parser.add_argument("--window", type=int, default=100, help="games in the moving average (default: 100)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS),
                        help="scores to time (default: -15 0 18)")
    parser.add_argument("--markdown", type=Path, help="also write the report to this Markdown file")
    parser.add_argument("--figure", type=Path, default=Path("time_to_score.png"),
                        help="figure of the curves (default: time_to_score.png)")
    parser.add_argument("--launch", type=float, metavar="MINUTES",
                        help="first train a run for this many minutes (flags for stm-rl train after --)")
    parser.add_argument("--run-dir", type=Path, help="with --launch: the run directory to train in")
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, train_args = argv[:split], argv[split + 1:]
    args = parser.parse_args(argv)
    return run_command("time_to_score.py", lambda: score_runs(args, train_args))


def score_runs(args: argparse.Namespace, train_args: list[str]) -> int:
    """Score the runs (after training one with --launch) and write the table and the figure."""
    if args.window < 1:
        raise StmRlError(f"--window must be >= 1, got {args.window}")
    if args.launch is not None:
        if not args.launch > 0 or not math.isfinite(args.launch):
            raise StmRlError(f"--launch must be a positive number of minutes, got {args.launch}")
        if args.run_dir is None:
            raise StmRlError("--launch needs --run-dir (where the new run trains)")
        args.runs.append(launch(args.launch, args.run_dir, train_args))
    if not args.runs:
        raise StmRlError("give at least one run directory (or --launch MINUTES --run-dir DIR)")
    scores = [score_run(run_dir, args.window, args.thresholds) for run_dir in find_run_dirs(args.runs)]
    markdown = format_markdown(scores, args.thresholds, args.window)
    print(markdown, end="")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown)
    print(f"figure: {plot(scores, args.thresholds, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
