"""``stm-rl plot``: the paper's Figure 3 from the runs' game logs, and a table per configuration.

Runs are found under the given directories (any folder holding a ``config.json`` and a ``games.jsonl``)
and grouped by (agent, frame skip) as read from their config.json. For each run the moving average of the
raw score over the last ``--window`` games (the first games average what there is, as in training) is
taken against games (the paper's axis), agent steps, frames or wall time (``--x``, one row of panels per axis);
each group shows the mean over its runs and a band of one standard deviation (``--band std``, default) or one
standard error of the mean (``--band sem``). Runs of a group are compared over the range all of them reached
(the shortest run sets the end of the curve). ``--metrics`` adds a row of panels per training metric of the runs'
``metrics.jsonl`` (the policy's entropy, the gradient norm, the memories' norms...): each run's curve and each
agent's mean, against the first ``--x`` axis.

The table gives per (agent, frame skip): the runs' length, the final and best (full-window) average, for each
``--thresholds`` score the games, agent steps and frames until the full-window average first reached it, and
the greedy play of the final agents where the runs have it (``eval-final-skip<N>.json``, written by
``--final-eval-games`` or ``stm-rl evaluate RUN --checkpoint final``); as text, CSV (``--table-csv``) and
Markdown (``--table-md``).

A group must hold repetitions of one configuration: runs that differ in any other setting (encoder,
learning rate, workers...) or repeat a seed are refused, naming the settings and the runs, unless
``--force`` (then it is a warning).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Optional, Sequence

import numpy as np

from stm_rl.a3c.config import TrainConfig
from stm_rl.config_cli import differing_settings, format_count, parse_count
from stm_rl.conventions import RunStatus
from stm_rl.evaluate import final_greedy_scores
from stm_rl.run_dir import (RunDir, StmRlError, check_can_write, find_run_dirs, read_json, read_jsonl,
                            to_jsonable)

XAxis = Literal["games", "steps", "frames", "time"]
Band = Literal["std", "sem"]
X_LABELS = {"games": "training games", "steps": "agent steps", "frames": "emulator frames", "time": "wall time (hours)"}
DEFAULT_THRESHOLDS = (-15.0, 0.0, 18.0)
AGENT_COLORS = {"lstm": "tab:blue", "stm": "tab:red"}
GRID_POINTS = 400
"""Points of the common x grid on which runs are averaged for --x frames|time (and for --metrics rows)."""
METRIC_SMOOTHING = 20
"""Records in the trailing mean of a --metrics curve (the trainer logs the losses and memory norms about every
10 s: 20 records are about 3 minutes of training)."""
FIGURE_FORMATS = (".png", ".svg", ".pdf")
MAY_DIFFER_IN_A_GROUP = {("env", "seed"), ("env", "obs_size"), ("env", "clip_reward"), *(("run", name) for name in (
    "seed", "run_dir", "frames", "agent_steps", "progress", "progress_interval", "checkpoint_interval", "eval_every_updates",
    "eval_games", "moving_average_window"))}
"""Settings that runs averaged into one curve may differ in: the seed, what does not change learning, and what
is derived from other settings (the env's observation size follows the encoder)."""


class NoGamesError(StmRlError):
    """A run has not finished any training game yet."""


@dataclass(frozen=True)
class RunLog:
    """The game log of one training run, with what identifies its configuration."""

    run_dir: Path
    agent: str
    encoder: str
    frame_skip: int
    seed: int
    frames: np.ndarray
    """Emulator frames of the run when each game ended."""
    wall_time: np.ndarray
    """Seconds of training when each game ended."""
    scores: np.ndarray
    settings: dict = dataclasses.field(default_factory=dict, compare=False)
    """The run's whole config in its JSON form (``{"agent": {...}, "env": {...}, ...}``)."""
    agent_steps: Optional[np.ndarray] = dataclasses.field(default=None, compare=False)
    """Agent steps of the run when each game ended (None: a log that did not record them)."""
    greedy_scores: Optional[tuple[float, ...]] = None
    """Scores of the greedy games played with the run's final weights (its final evaluation), if it has one."""
    metrics: dict[str, "MetricSeries"] = dataclasses.field(default_factory=dict, compare=False)
    """The training metrics asked for (``--metrics``) that the run logged."""
    trained_steps: Optional[int] = None
    """Agent steps the run has trained (:meth:`RunDir.trained`: its summary's counter, or its last game's where
    newer); a run goes on past its last finished game. None: its records do not count agent steps."""
    completed: bool = True
    """The run has completed its budget (summary.json says ``completed`` and no process trains it now); False for
    a campaign's run in progress, whose curve ends where its training has got to."""

    @property
    def games(self) -> int:
        return len(self.scores)

    def x(self, axis: XAxis) -> np.ndarray:
        """Position of each game on the x axis."""
        if axis == "games":
            return np.arange(1, self.games + 1, dtype=float)
        if axis == "steps":
            if self.agent_steps is None:
                raise StmRlError(f"{self.run_dir}: its game log has no agent steps; plot it against games or frames")
            return self.agent_steps.astype(float)
        return self.frames.astype(float) if axis == "frames" else self.wall_time / 3600.0

    def x_at_frames(self, axis: XAxis, frames: np.ndarray) -> np.ndarray:
        """Position on the x axis of moments given in emulator frames (a metric's step), through the game log."""
        return frames.astype(float) if axis == "frames" else np.interp(frames, self.frames, self.x(axis))


class MetricSeries(NamedTuple):
    """One training metric of a run (``metrics.jsonl``): its values and the frame counts they were logged at."""

    frames: np.ndarray
    values: np.ndarray


class Standing(NamedTuple):
    """Where a run stood at a given number of agent steps (``--at-steps``): a budget-matched comparison."""

    average: float
    """The moving average of the score at the last game that ended by then."""
    games: int
    """Games finished by then."""


class Reached(NamedTuple):
    """Where a run's full-window moving average first reached a score."""

    games: int
    agent_steps: Optional[int]
    frames: int


@dataclass(frozen=True)
class Curve:
    """Mean over runs of the moving average, with its band, on a common x grid."""

    x: np.ndarray
    mean: np.ndarray
    band: np.ndarray
    runs: int


@dataclass(frozen=True)
class ConfigSummary:
    """A row of the table: one (agent, frame skip) over its runs."""

    agent: str
    frame_skip: int
    seeds: tuple[int, ...]
    games: tuple[int, ...]
    frames: tuple[int, ...]
    final_average: tuple[float, ...]
    best_average: tuple[float, ...]
    """Per run: the highest full-window moving average (a run shorter than a window: the highest so far)."""
    reached: dict[float, tuple[Optional[Reached], ...]]
    """Per threshold, per run: where the full-window moving average first reached it (None: never)."""
    agent_steps: tuple[Optional[int], ...] = ()
    greedy: tuple[Optional[tuple[float, ...]], ...] = ()
    """Per run: the scores of its final agent's greedy games (None: not evaluated)."""
    in_training: int = 0
    """How many of the runs have not completed their budget (:attr:`RunLog.completed`)."""
    at_steps: dict[int, tuple[Optional["Standing"], ...]] = dataclasses.field(default_factory=dict)
    """Per agent-step count asked for (``--at-steps``), per run: where it stood there (None: not trained so far)."""

    @property
    def frames_to_threshold(self) -> dict[float, tuple[Optional[int], ...]]:
        return {t: tuple(None if r is None else r.frames for r in runs) for t, runs in self.reached.items()}


@dataclass(frozen=True)
class PlotOptions:
    paths: tuple[Path, ...]
    output: Path
    x_axes: tuple[XAxis, ...] = ("games",)
    """One row of panels per axis."""
    band: Band = "std"
    window: int = 100
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    table_csv: Optional[Path] = None
    table_md: Optional[Path] = None
    skip_empty: bool = False
    """Leave out runs that have no finished game yet instead of failing."""
    completed_only: bool = False
    """Leave out runs that have not completed their budget (summary.json status other than ``completed``, or a
    process training them now, as a completed run being extended): a campaign commits the logs of the run in
    progress, and its partial curve would pull a cell's mean down."""
    force: bool = False
    """Average runs into one curve even if they differ in more than the seed (a warning instead of an error)."""
    metrics: tuple[str, ...] = ()
    """Training metrics (names in the runs' metrics.jsonl: ``losses/entropy``, ``losses/grad_norm``,
    ``memory/stm_item_norm``...) drawn below the score rows, one row each, against the first x axis."""
    at_steps: tuple[int, ...] = ()
    """Agent-step counts at which a second table compares the runs (each one's moving average and games there),
    over the runs that have trained that far: runs in progress against completed ones at the same budget."""


# ---------------------------------------------------------------- finding and reading runs
def read_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig recorded in a run's config.json (StmRlError if missing or unreadable)."""
    data = read_json(RunDir(run_dir).config)
    try:
        return TrainConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise StmRlError(f"{run_dir}/config.json is not a training config ({type(error).__name__}: {error})") from None


def load_metrics(run_dir: Path, names: Sequence[str]) -> dict[str, MetricSeries]:
    """The named training metrics a run logged (``metrics.jsonl`` or ``.gz``), each with the frame counts it was
    logged at; a name the run never logged is absent."""
    path = RunDir(run_dir).metric_log
    if not names or not path.exists():
        return {}
    points: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for record in read_jsonl(path):
        for name in names:
            value = record.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value) and isinstance(record.get("step"), (int, float)):
                points[name].append((float(record["step"]), float(value)))
    return {name: MetricSeries(*map(np.array, zip(*pairs))) for name, pairs in points.items() if pairs}


def load_run(run_dir: Path, metrics: Sequence[str] = ()) -> RunLog:
    """A run's configuration and game log (StmRlError if it has no finished game), and the training metrics
    named in ``metrics`` that it logged."""
    config = read_run_config(run_dir)
    games_path = RunDir(run_dir).game_log
    records = list(read_jsonl(games_path)) if games_path.exists() else []
    if not records:
        raise NoGamesError(f"{run_dir} has no finished training game yet ({games_path} is missing or empty)")
    try:
        columns = {key: np.array([record[key] for record in records], dtype=float)
                   for key in ("frames", "wall_time", "score")}
    except KeyError as error:
        raise StmRlError(f"{games_path}: a record lacks {error}") from None
    steps = (np.array([record["agent_steps"] for record in records], dtype=float)
             if all("agent_steps" in record for record in records) else None)
    return RunLog(Path(run_dir), config.agent.agent, config.agent.encoder, config.env.frame_skip,
                  config.run.seed, columns["frames"], columns["wall_time"], columns["score"], to_jsonable(config),
                  agent_steps=steps, greedy_scores=final_greedy_scores(Path(run_dir), config.env.frame_skip),
                  metrics=load_metrics(Path(run_dir), metrics),
                  trained_steps=(RunDir(run_dir).trained().agent_steps or None) if steps is not None else None,
                  completed=RunDir(run_dir).status() == RunStatus.COMPLETED)


def load_runs(paths: Sequence[Path], skip_empty: bool = False, completed_only: bool = False,
              metrics: Sequence[str] = ()) -> list[RunLog]:
    runs = []
    for run_dir in find_run_dirs(paths):
        if completed_only and (status := RunDir(run_dir).status()) != RunStatus.COMPLETED:
            print(f"leaving out {run_dir}: {status or 'no summary'}, not completed")
            continue
        try:
            runs.append(load_run(run_dir, metrics))
        except NoGamesError:
            if not skip_empty:
                raise
            print(f"skipping {run_dir}: no games yet")
    if not runs:
        raise StmRlError("none of the runs has " + ("completed" if completed_only else "a finished game yet"))
    return runs


def group_runs(runs: Sequence[RunLog]) -> dict[tuple[str, int], list[RunLog]]:
    """Runs by (agent, frame skip), sorted by skip then agent, each group sorted by seed."""
    groups: dict[tuple[str, int], list[RunLog]] = {}
    for run in runs:
        groups.setdefault((run.agent, run.frame_skip), []).append(run)
    return {key: sorted(groups[key], key=lambda r: (r.seed, str(r.run_dir)))
            for key in sorted(groups, key=lambda k: (k[1], k[0]))}


def group_problems(runs: Sequence[RunLog]) -> list[str]:
    """Why the runs of a group are not repetitions of one configuration (empty if they are)."""
    problems = []
    for flag, values in differing_settings([run.settings for run in runs], ignore=MAY_DIFFER_IN_A_GROUP).items():
        by_value: dict[str, list[str]] = {}
        for run, value in zip(runs, values):
            by_value.setdefault(str(value), []).append(run.run_dir.name)
        problems.append(f"{flag}: " + ", ".join(f"{value} ({' '.join(names)})" for value, names in by_value.items()))
    seeds = [run.seed for run in runs]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        names = [run.run_dir.name for run in runs if run.seed in repeated]
        problems.append(f"seed {', '.join(map(str, repeated))} repeated ({' '.join(names)})")
    return problems


def check_groups(groups: dict[tuple[str, int], list[RunLog]], force: bool) -> None:
    """Refuse (or with ``force`` warn about) groups whose runs differ in more than the seed."""
    messages = [f"{agent} frame skip {skip}: {'; '.join(problems)}" for (agent, skip), runs in groups.items()
                for problems in [group_problems(runs)] if problems]
    if not messages:
        return
    text = "runs averaged into one curve differ in more than the seed: " + " | ".join(messages)
    if not force:
        raise StmRlError(text + "; plot them separately, or pass --force to average them anyway")
    print(f"warning: {text}", file=sys.stderr)


def figure_path(output: Path) -> Path:
    """The file the figure is written to: ``.png`` is added to a name without a suffix; other suffixes
    must be a format of :data:`FIGURE_FORMATS`."""
    output = Path(output)
    if not output.suffix:
        return output.with_name(output.name + ".png")
    if output.suffix.lower() not in FIGURE_FORMATS:
        raise StmRlError(f"--output {output}: unknown figure format {output.suffix!r} "
                         f"(use {', '.join(FIGURE_FORMATS)})")
    return output


# ---------------------------------------------------------------- numbers
def moving_average(scores: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` scores (fewer at the start), as the trainer logs it."""
    sums = np.cumsum(np.concatenate([[0.0], np.asarray(scores, dtype=float)]))
    ends = np.arange(1, len(scores) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def aggregate(runs: Sequence[RunLog], axis: XAxis, window: int, band: Band) -> Curve:
    """Mean and band of the runs' moving averages over the x range every run covers."""
    averages = [moving_average(run.scores, window) for run in runs]
    if axis != "games":
        return mean_curve([run.x(axis) for run in runs], averages, band)
    length = min(run.games for run in runs)
    return _curve(np.arange(1, length + 1, dtype=float), np.stack([average[:length] for average in averages]), band)


def mean_curve(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], band: Band) -> Curve:
    """Mean and band of curves ``(xs[k], ys[k])`` on a common grid over the x range every one of them covers."""
    start, end = max(x[0] for x in xs), min(x[-1] for x in xs)
    x = np.linspace(start, end, GRID_POINTS) if end > start else np.array([end])
    return _curve(x, np.stack([np.interp(x, run_x, y) for run_x, y in zip(xs, ys)]), band)


def _curve(x: np.ndarray, values: np.ndarray, band: Band) -> Curve:
    """``values``: one row per run, on the points ``x``."""
    runs = values.shape[0]
    std = values.std(axis=0, ddof=1) if runs > 1 else np.zeros(values.shape[1])
    return Curve(x=x, mean=values.mean(axis=0), band=std / math.sqrt(runs) if band == "sem" else std, runs=runs)


def metric_lines(runs: Sequence[RunLog], name: str, axis: XAxis) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each run's training metric ``name`` on the x axis, as a trailing mean over :data:`METRIC_SMOOTHING`
    records, from the run's first game to its last (the x axis is read through the game log); runs without it are
    left out."""
    lines = []
    for run in runs:
        series = run.metrics.get(name)
        if series is None:
            continue
        kept = (series.frames >= run.frames[0]) & (series.frames <= run.frames[-1])
        if kept.sum() >= 2:
            lines.append((run.x_at_frames(axis, series.frames[kept]),
                          moving_average(series.values[kept], METRIC_SMOOTHING)))
    return lines


def first_reached(run: RunLog, threshold: float, window: int) -> Optional[Reached]:
    """The first game whose moving average over a full window (``window`` games) is >= threshold."""
    average = moving_average(run.scores, window)[window - 1:]
    hits = np.nonzero(average >= threshold)[0]
    if not len(hits):
        return None
    game = int(hits[0]) + window - 1  # index into the run's games
    steps = None if run.agent_steps is None else int(run.agent_steps[game])
    return Reached(games=game + 1, agent_steps=steps, frames=int(run.frames[game]))


def standing_at(run: RunLog, agent_steps: int, window: int) -> Optional[Standing]:
    """The run's moving average and games at its last game that ended by ``agent_steps`` agent steps; None where
    the run has not trained that far (:attr:`RunLog.trained_steps`), no game of it had ended by then, or its log
    has no agent steps."""
    if run.agent_steps is None or max(run.trained_steps or 0, int(run.agent_steps[-1])) < agent_steps:
        return None
    last = int(np.searchsorted(run.agent_steps, agent_steps, side="right")) - 1
    if last < 0:
        return None
    return Standing(float(moving_average(run.scores, window)[last]), last + 1)


def frames_to_reach(run: RunLog, threshold: float, window: int) -> Optional[int]:
    """Frames at the first game whose full-window moving average is >= threshold, None if it never is."""
    reached = first_reached(run, threshold, window)
    return None if reached is None else reached.frames


def summarize(key: tuple[str, int], runs: Sequence[RunLog], window: int,
              thresholds: Sequence[float], at_steps: Sequence[int] = ()) -> ConfigSummary:
    averages = [moving_average(run.scores, window) for run in runs]
    return ConfigSummary(
        agent=key[0], frame_skip=key[1], seeds=tuple(run.seed for run in runs),
        games=tuple(run.games for run in runs), frames=tuple(int(run.frames[-1]) for run in runs),
        final_average=tuple(float(a[-1]) for a in averages),
        best_average=tuple(float(a[min(window, len(a)) - 1:].max()) for a in averages),  # full windows
        reached={t: tuple(first_reached(run, t, window) for run in runs) for t in thresholds},
        agent_steps=tuple(None if run.agent_steps is None else int(run.agent_steps[-1]) for run in runs),
        greedy=tuple(run.greedy_scores for run in runs), in_training=sum(not run.completed for run in runs),
        at_steps={steps: tuple(standing_at(run, steps, window) for run in runs) for steps in at_steps})


def curve_label(agent: str, runs: Sequence[RunLog]) -> str:
    """The legend of an agent's curve: ``STM (3 runs)``, and how many of them are still training where any is
    (``STM (1 run, in training)``, ``LSTM (3 runs, 1 in training)``): a curve that ends early for that reason
    must not read as an agent that stopped learning."""
    count = f"{len(runs)} run" + ("s" if len(runs) != 1 else "")
    training = sum(not run.completed for run in runs)
    if training:
        count += ", in training" if training == len(runs) == 1 else f", {training} in training"
    return f"{agent.upper()} ({count})"


# ---------------------------------------------------------------- output
def plot_figure(groups: dict[tuple[str, int], list[RunLog]], options: PlotOptions) -> Path:
    """The paper's layout: one panel per frame skip, one curve per agent; one row of panels per x axis, then one
    per training metric (``--metrics``, against the first x axis). Saved in the format of the output's extension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    skips = sorted({skip for _, skip in groups})
    rows = len(options.x_axes) + len(options.metrics)
    fig, axes = plt.subplots(rows, len(skips), figsize=(4.2 * len(skips), 3.4 * rows + 0.4), sharey="row",
                             squeeze=False)
    for row, name in enumerate(options.metrics, start=len(options.x_axes)):
        plot_metric_row(axes[row], skips, groups, name, options.x_axes[0], options.band)
    for row, axis in enumerate(options.x_axes):
        for ax, skip in zip(axes[row], skips):
            for (agent, group_skip), runs in groups.items():
                if group_skip != skip:
                    continue
                curve = aggregate(runs, axis, options.window, options.band)
                color = AGENT_COLORS.get(agent)
                ax.plot(curve.x, curve.mean, color=color, label=curve_label(agent, runs))
                ax.fill_between(curve.x, curve.mean - curve.band, curve.mean + curve.band, color=color, alpha=0.25,
                                linewidth=0)
            ax.set_title(f"frame skip {skip}")
            ax.set_xlabel(X_LABELS[axis])
            if axis != "time":  # 40k games, 120M frames rather than an offset such as 1e8
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.set_ylim(-21.5, 21.5)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", fontsize="small")
        axes[row][0].set_ylabel(f"score, average of {options.window} games")
    band = "1 std" if options.band == "std" else "1 s.e."
    fig.suptitle(f"Pong: mean over runs, band {band}", fontsize="medium")
    fig.tight_layout()
    options.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(options.output, dpi=120)
    plt.close(fig)
    return options.output


def check_metrics(runs: Sequence[RunLog], names: Sequence[str], axis: XAxis) -> None:
    """Refuse a metric that no run can draw (never logged, or not twice between its first and its last game)."""
    for name in names:
        if not metric_lines(runs, name, axis):
            raise StmRlError(f"--metrics {name}: no run logged it twice between its first and its last game "
                             "(names as in metrics.jsonl: losses/entropy, losses/grad_norm, memory/stm_item_norm...)")


def plot_metric_row(axes, skips: Sequence[int], groups: dict[tuple[str, int], list[RunLog]], name: str, axis: XAxis,
                    band: Band) -> None:
    """One row of panels for a training metric: each run a thin line, each agent's mean over its runs a thick one
    with its band. Where the values are positive and span more than three decades (gradient norms, a collapsing
    entropy) the row has a log scale, and the mean and band are taken of the logarithms (a geometric mean, a band
    of a factor)."""
    from matplotlib.ticker import EngFormatter

    panels = {(skip, agent): metric_lines(runs, name, axis) for (agent, skip), runs in groups.items()}
    drawn = {(skip, agent): [run for run in runs if name in run.metrics] for (agent, skip), runs in groups.items()}
    values = np.concatenate([y for lines in panels.values() for _, y in lines])
    log_scale = bool(values.min() > 0 and values.max() / values.min() > 1e3)
    for ax, skip in zip(axes, skips):
        for (group_skip, agent), lines in panels.items():
            if group_skip != skip or not lines:
                continue
            color = AGENT_COLORS.get(agent)
            for x, y in lines:
                ax.plot(x, y, color=color, linewidth=0.6, alpha=0.35)
            curve = mean_curve([x for x, _ in lines], [np.log10(y) if log_scale else y for _, y in lines], band)
            low, mean, high = curve.mean - curve.band, curve.mean, curve.mean + curve.band
            if log_scale:
                low, mean, high = 10.0 ** low, 10.0 ** mean, 10.0 ** high
            ax.plot(curve.x, mean, color=color, label=curve_label(agent, drawn[group_skip, agent]))
            ax.fill_between(curve.x, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(f"frame skip {skip}")
        ax.set_xlabel(X_LABELS[axis])
        if axis != "time":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")  # where it hides the least
        else:  # no run of this skip logged the metric (runs older than it): say so, not an empty frame
            ax.text(0.5, 0.5, f"no run at skip {skip} logged\n{name}", transform=ax.transAxes, ha="center",
                    va="center", color="0.4", fontsize="small")
            ax.set_xticks([])
    if log_scale:
        axes[0].set_yscale("log")  # the row shares its y axis
    axes[0].set_ylabel(name + (" (geometric mean)" if log_scale else ""))


def table_rows(summaries: Sequence[ConfigSummary], band: Band) -> list[dict[str, object]]:
    """Flat rows (one per configuration) for the terminal table, the CSV and the Markdown table."""
    rows = []
    for s in summaries:
        steps = [value for value in s.agent_steps if value is not None]
        row: dict[str, object] = {
            "agent": s.agent, "frame_skip": s.frame_skip, "runs": len(s.seeds),
            "seeds": " ".join(map(str, s.seeds)), "in_training": s.in_training, "games_mean": _mean(s.games),
            "agent_steps_mean": _mean(steps) if steps else None, "frames_mean": _mean(s.frames),
            "final_average_mean": _mean(s.final_average), f"final_average_{band}": _spread(s.final_average, band),
            "best_average_mean": _mean(s.best_average), f"best_average_{band}": _spread(s.best_average, band)}
        for threshold, runs in s.reached.items():
            reached = [r for r in runs if r is not None]
            row[f"reached_{threshold:g}"] = f"{len(reached)}/{len(runs)}"
            row[f"games_to_{threshold:g}_mean"] = _mean([r.games for r in reached]) if reached else None
            steps_to = [r.agent_steps for r in reached if r.agent_steps is not None]
            row[f"agent_steps_to_{threshold:g}_mean"] = _mean(steps_to) if steps_to else None
            row[f"frames_to_{threshold:g}_mean"] = _mean([r.frames for r in reached]) if reached else None
        evaluated = [scores for scores in s.greedy if scores]
        run_means = [float(np.mean(scores)) for scores in evaluated]
        row["greedy_runs"] = len(evaluated)
        row["greedy_games"] = sum(len(scores) for scores in evaluated)
        row["greedy_mean"] = _mean(run_means) if run_means else None
        row[f"greedy_{band}"] = _spread(run_means, band) if run_means else None
        for steps, standings in s.at_steps.items():
            there = [standing for standing in standings if standing is not None]
            row[f"runs_at_{steps}"] = f"{len(there)}/{len(standings)}"
            row[f"average_at_{steps}_mean"] = _mean([t.average for t in there]) if there else None
            row[f"average_at_{steps}_{band}"] = _spread([t.average for t in there], band) if there else None
            row[f"games_at_{steps}_mean"] = _mean([t.games for t in there]) if there else None
        rows.append(row)
    return rows


def table_cells(row: dict[str, object], band: Band, thresholds: Sequence[float]) -> list[str]:
    """The cells of one row as the terminal and Markdown tables show them."""
    training = f"; {row['in_training']} in training" if row.get("in_training") else ""
    cells = [str(row["agent"]), str(row["frame_skip"]), f"{row['runs']} ({row['seeds']}{training})",
             f"{row['games_mean']:,.0f}", _count(row["agent_steps_mean"]),
             f"{row['final_average_mean']:+.2f} +- {row[f'final_average_{band}']:.2f}",
             f"{row['best_average_mean']:+.2f} +- {row[f'best_average_{band}']:.2f}"]
    for t in thresholds:
        games = row[f"games_to_{t:g}_mean"]
        cells.append("-" if games is None else
                     f"{games:,.0f} g, {_count(row[f'agent_steps_to_{t:g}_mean'])} st ({row[f'reached_{t:g}']})")
    greedy = row["greedy_mean"]
    cells.append("-" if greedy is None else
                 f"{greedy:+.2f} +- {row[f'greedy_{band}']:.2f} ({row['greedy_runs']} x "
                 f"{int(row['greedy_games']) // max(int(row['greedy_runs']), 1)} g)")
    return cells


def table_header(band: Band, thresholds: Sequence[float]) -> list[str]:
    return (["agent", "skip", "runs (seeds)", "games/run", "steps/run", f"final avg (+-{band})",
             f"best avg (+-{band})"] + [f"to {t:+g}: games, steps (runs)" for t in thresholds]
            + [f"greedy final (+-{band}, runs x games)"])


def aligned(lines: Sequence[Sequence[str]]) -> str:
    """A header and its rows as columns for the terminal."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def format_table(rows: Sequence[dict[str, object]], band: Band, thresholds: Sequence[float]) -> str:
    return aligned([table_header(band, thresholds)] + [table_cells(row, band, thresholds) for row in rows])


def at_steps_header(at_steps: Sequence[int]) -> list[str]:
    return ["agent", "skip"] + [f"at {format_count(steps)} steps: avg (games, runs)" for steps in at_steps]


def at_steps_cells(row: dict[str, object], band: Band, at_steps: Sequence[int]) -> list[str]:
    """One row of the budget-matched table: per count, the runs' mean average (+- their spread where more than
    one got there), mean games, and how many runs trained that far."""
    cells = [str(row["agent"]), str(row["frame_skip"])]
    for steps in at_steps:
        average, runs = row[f"average_at_{steps}_mean"], str(row[f"runs_at_{steps}"])
        if average is None:
            cells.append(f"- ({runs})")
            continue
        spread = f" +- {row[f'average_at_{steps}_{band}']:.2f}" if not runs.startswith("1/") else ""
        cells.append(f"{average:+.2f}{spread} ({row[f'games_at_{steps}_mean']:,.0f} g, {runs})")
    return cells


def format_at_steps(rows: Sequence[dict[str, object]], band: Band, at_steps: Sequence[int]) -> str:
    return aligned([at_steps_header(at_steps)] + [at_steps_cells(row, band, at_steps) for row in rows])


def format_markdown(rows: Sequence[dict[str, object]], band: Band, thresholds: Sequence[float],
                    window: int, at_steps: Sequence[int] = ()) -> str:
    table = markdown_table(table_header(band, thresholds), [table_cells(row, band, thresholds) for row in rows])
    notes = (f"Averages over {window} games (mean +- {'standard deviation' if band == 'std' else 'standard error'} "
             "over runs; best: the highest full-window average); 'to S': games (g) and agent steps (st) until the full-window average first reached S, "
             "mean over the runs that did (k/n); greedy final: the final weights' greedy games, mean of the runs' "
             "means.")
    text = table + "\n\n" + notes + "\n"
    if at_steps:
        budget_matched = markdown_table(at_steps_header(at_steps), [at_steps_cells(row, band, at_steps) for row in rows])
        text += ("\n" + budget_matched + f"\n\nAt N steps: the {window}-game average at each run's last game "
                 f"that ended by N agent steps (mean over the runs that trained that far, k/n; +- the "
                 f"{'standard deviation' if band == 'std' else 'standard error'} where k > 1) and the games "
                 "played by then.\n")
    return text


def write_table_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def _spread(values: Sequence[float], band: Band) -> float:
    if len(values) < 2:
        return 0.0
    std = float(np.std(values, ddof=1))
    return std / math.sqrt(len(values)) if band == "sem" else std


def _count(value: object) -> str:
    return "-" if value is None else format_count(float(value))  # type: ignore[arg-type]


# ---------------------------------------------------------------- command line
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="Figure 3: moving-average score of LSTM vs STM, one panel per frame skip",
        description="Plot the paper's Figure 3 from the runs' game logs (games.jsonl or games.jsonl.gz) and print "
                    "a table per (agent, frame skip). Runs are grouped by their config.json; the band is 1 std (or "
                    "standard error) over runs.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="SWEEP_DIR_OR_RUN",
                        help="run directories, or directories searched for runs (e.g. a sweep's --out)")
    parser.add_argument("--output", type=Path,
                        help="figure file; .png, .svg or .pdf, .png added to a name without a suffix "
                             "(default: figure3.png in the first directory given)")
    parser.add_argument("--x", dest="x_axes", nargs="+", choices=list(X_LABELS), default=["games"], metavar="AXIS",
                        help="x axis of each row of panels: games (the paper's), steps (agent steps), frames, time "
                             "(hours of training); e.g. --x games frames (default: games)")
    parser.add_argument("--band", choices=["std", "sem"], default="std",
                        help="error band: standard deviation over runs or standard error of the mean (default: std)")
    parser.add_argument("--window", type=int, default=100, help="games in the moving average (default: 100)")
    parser.add_argument("--thresholds", nargs="*", type=float, default=list(DEFAULT_THRESHOLDS), metavar="SCORE",
                        help="report games, agent steps and frames until the full-window average reaches these "
                             "scores (default: -15 0 18)")
    parser.add_argument("--table-csv", type=Path, metavar="PATH", help="also write the table as CSV")
    parser.add_argument("--table-md", type=Path, metavar="PATH", help="also write the table as Markdown")
    parser.add_argument("--skip-empty", action="store_true", help="leave out runs without a finished game")
    parser.add_argument("--completed-only", action="store_true",
                        help="leave out runs that have not completed their budget (a campaign's run in progress)")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="NAME",
                        help="also draw these training metrics (names in the runs' metrics.jsonl, e.g. losses/entropy "
                             "losses/grad_norm memory/stm_item_norm), one row of panels each against the first --x "
                             "axis: every run, and the mean and band of each agent's runs")
    parser.add_argument("--at-steps", nargs="+", type=parse_count, default=[], metavar="N",
                        help="also compare the runs at these agent-step counts (e.g. 1M 5M 10M): a second table of "
                             "each (agent, frame skip)'s moving average and games there, over the runs that trained "
                             "that far (a run in progress against completed ones at the same budget)")
    parser.add_argument("--force", action="store_true",
                        help="average runs of one (agent, frame skip) even if they differ in more than the seed "
                             "(default: refuse, naming the settings that differ)")
    parser.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> PlotOptions:
    if args.window < 1:
        raise StmRlError(f"--window must be >= 1, got {args.window}")
    if not all(math.isfinite(t) for t in args.thresholds):
        raise StmRlError(f"--thresholds must be finite scores, got {args.thresholds}")
    if any(steps < 1 for steps in args.at_steps):
        raise StmRlError(f"--at-steps must be agent-step counts >= 1, got {' '.join(map(str, args.at_steps))}")
    output = check_can_write(figure_path(args.output or Path(args.paths[0]) / "figure3.png"), "--output")
    for flag, path in (("--table-csv", args.table_csv), ("--table-md", args.table_md)):
        if path is not None:
            check_can_write(path, flag)
    return PlotOptions(paths=tuple(args.paths), output=output, x_axes=tuple(dict.fromkeys(args.x_axes)),
                       band=args.band, window=args.window, thresholds=tuple(args.thresholds),
                       table_csv=args.table_csv, table_md=args.table_md, skip_empty=args.skip_empty,
                       completed_only=args.completed_only, force=args.force, metrics=tuple(dict.fromkeys(args.metrics)),
                       at_steps=tuple(sorted(set(args.at_steps))))


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    groups = group_runs(load_runs(options.paths, options.skip_empty, options.completed_only, options.metrics))
    check_groups(groups, options.force)
    check_metrics([run for runs in groups.values() for run in runs], options.metrics, options.x_axes[0])
    summaries = [summarize(key, runs, options.window, options.thresholds, options.at_steps)
                 for key, runs in groups.items()]
    rows = table_rows(summaries, options.band)
    print(format_table(rows, options.band, options.thresholds))
    if options.at_steps:
        print("\n" + format_at_steps(rows, options.band, options.at_steps))
    if options.table_csv:
        write_table_csv(options.table_csv, rows)
        print(f"table written to {options.table_csv}")
    if options.table_md:
        options.table_md.parent.mkdir(parents=True, exist_ok=True)
        options.table_md.write_text(format_markdown(rows, options.band, options.thresholds, options.window,
                                                    options.at_steps), encoding="utf-8")
        print(f"table written to {options.table_md}")
    print(f"figure written to {plot_figure(groups, options)}")
    return 0
