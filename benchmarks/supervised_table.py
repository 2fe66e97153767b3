"""The SAM paper's supervised tables side by side with models trained here, at a stated budget.

    nice -n 19 .venv/bin/python benchmarks/supervised_table.py --tasks copy nth-farthest \
        --models stm lstm ntm dnc rmc --seeds 0 1 --iterations 500 --out runs/supervised_table

Every (task, model, seed) is one ordinary run of ``stm_rl.supervised`` (the task's ``--preset``, validation
every ``--eval-every`` iterations, the final test on the best validation weights) in
``OUT/TASK-MODEL-seedS``. The budget is the same number of iterations for every model (``--iterations``),
or a wall-time limit per run (``--minutes``; a resumed run gets the limit again for its new session, so
prefer iterations for comparisons). ``--optimizer authors`` trains with the authors' optimiser for each task (the
``paper`` preset's, :data:`~stm_rl.supervised.config.PAPER_OPTIMIZERS`) at the sizes of ``--preset``: the way to
compare optimisers at one budget (give each its own ``--out``). Re-running the command skips finished runs and resumes
interrupted ones from their latest checkpoint, so the whole table can be built over several sessions.
``--report-only`` rebuilds the outputs from the run directories without training; ``--babi-run RUN`` adds the
per-task report of a bAbI run (``OUT/babi.md``, ``OUT/babi.png``), and with a bare ``--tasks`` it is the only output.

Writes ``OUT/table.md`` and ``OUT/table.csv`` (per task and model: the paper's value with the setting it was
measured in, where the paper has one, and, for bit errors, the same share of this table's answer bits; the task's
shortcut plateaus (``Task.plateaus``: e.g. Nth-farthest's label-only 0.25, associative retrieval's key-blind
most-frequent digit, RAR's query-only and bit-vote rules, chance for the bit tasks); the test value of the main
metric, mean +- std over the finished seeds; whether it left each plateau, i.e. is past it by more than 3
standard errors of the mean over seeds (one seed: the test set's binomial error for accuracies, else n/a);
iterations and wall time) and ``OUT/curves.png`` (validation main metric against iterations, one panel per task,
mean over seeds). A run counts as finished when its ``summary.json`` says it completed its budget. Exit status
(:mod:`stm_rl.conventions`): 0 done, 1 a run failed (e.g. a non-finite loss), 2 bad input, 130 interrupted
(Ctrl-C / SIGTERM; rerun to resume).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from stm_rl.conventions import ExitCode, RunStatus, run_command
from stm_rl.run_dir import Checkpoint, RunDir, StmRlError, read_json, read_jsonl
from stm_rl.supervised.config import (PAPER_OPTIMIZERS, PRESETS, OptimizerConfig, SupervisedConfig, preset_config,
                                     resolve_config)
from stm_rl.supervised.models import MODELS
from stm_rl.supervised.tasks import TASKS, Task, make_task
from stm_rl.supervised.tasks.base import BitOutputTask, Plateau
from stm_rl.supervised.train import TrainingInterrupted, resume, train

@dataclass(frozen=True)
class PaperValue:
    """One number of the paper, with the setting it was measured in."""

    value: str
    """The number as the paper states it, e.g. ``"~30"``."""
    setting: str
    """Item width, sequence length and model size of that number."""
    answer_bits: Optional[float] = None
    """Bit tasks: the answer bits of the paper's setting, so that the number can be given as a fraction of them and
    scaled to a run's own answer bits."""
    bits: Optional[float] = None
    """Bit tasks: the number in bits (``~30`` -> 30)."""


_AR = "100k training samples, validated per epoch (batch 128); STM N = 2, d = 96"
_NTH = "8 vectors in R^16"
_RAR = "K = 2..5 items of 3 steps x 32 bits (96 answer bits)"
PAPER_VALUES: dict[tuple[str, str], PaperValue] = {
    ("associative-retrieval-30", "stm"): PaperValue("1.00", f"14 pairs (length 30), converged in 10 epochs; {_AR}"),
    ("associative-retrieval-50", "stm"): PaperValue("1.00", f"24 pairs (length 50), converged in 20 epochs; {_AR}"),
    ("nth-farthest", "stm"): PaperValue("0.98", f"{_NTH}; STM N = 8, d = 128"),
    ("nth-farthest", "rmc"): PaperValue("0.91", _NTH),
    ("nth-farthest", "dnc"): PaperValue("0.25", _NTH),
    ("nth-farthest", "tpr"): PaperValue("0.13", _NTH),
    ("copy", "stm"): PaperValue("~0", "L = 1..20 items of 32 bits (336 answer bits on average); STM N = 8, d = 96",
                                336, 0.0),
    ("priority-sort", "stm"): PaperValue("~0", "20 -> 16 items of 32 bits (512 answer bits); STM N = 8, d = 96",
                                         512, 0.0),
    ("rar", "stm"): PaperValue("~1 (87% items perfect)", f"{_RAR}; STM N = 16, d = 72", 96, 1.0),
    **{("rar", model): PaperValue("~30", f"{_RAR}; the paper's baselines (it ran no DNC here)", 96, 30.0)
       for model in ("lstm", "attn-lstm", "ntm", "rmc")},
}
"""The paper's values (``../shared/spec/SUPERVISED.md``; Nth-farthest's DNC from the paper's table), each with its
setting; (task, model) pairs the paper did not run have none."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=["associative-retrieval-30", "nth-farthest", "rar", "copy"],
                        help="tasks (python -m stm_rl.supervised --list); none (a bare --tasks) with --report-only "
                        "--babi-run: only the bAbI report")
    parser.add_argument("--models", nargs="+", default=["stm", "lstm", "ntm", "dnc", "rmc"], help="models")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (>= 0)")
    parser.add_argument("--preset", default="small", help="preset of every run: " + ", ".join(PRESETS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, default=None, help="iterations per run (default 500)")
    budget.add_argument("--minutes", type=float, default=None, help="wall-time limit per run instead of iterations")
    parser.add_argument("--eval-every", type=int, default=100, help="validate every this many iterations")
    parser.add_argument("--optimizer", choices=["preset", "authors"], default="preset",
                        help="the preset's optimiser, or the authors' for each task (the paper preset's) at the "
                        "preset's sizes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="runs/supervised_table", help="folder of the runs and the outputs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild table and figure from OUT")
    parser.add_argument("--babi-run", default=None, help="also report the per-task error of this bAbI run directory "
                        "(its latest evaluation; test if it has one, else validation) in OUT/babi.md")
    args = parser.parse_args(argv)
    if not args.tasks and not (args.report_only and args.babi_run):
        parser.error("--tasks: name at least one task (none only with --report-only --babi-run)")
    for name in args.tasks:
        if name not in TASKS:
            parser.error(f"--tasks: unknown task {name!r}; choose from {', '.join(TASKS)}")
    for name in args.models:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; choose from {', '.join(MODELS)}")
    if args.preset not in PRESETS:
        parser.error(f"--preset: choose one of {', '.join(PRESETS)}")
    if any(seed < 0 for seed in args.seeds):
        parser.error("--seeds must be >= 0")
    if args.iterations is not None and args.iterations <= 0:
        parser.error("--iterations must be > 0")
    if args.minutes is not None and not args.minutes > 0:
        parser.error("--minutes must be > 0")
    if args.eval_every <= 0 or args.threads <= 0:
        parser.error("--eval-every and --threads must be > 0")
    if args.optimizer == "authors":
        for name in args.tasks:
            if name not in PAPER_OPTIMIZERS:
                parser.error(f"--optimizer authors: the authors' code trains no {name!r} (it has no optimiser to "
                             f"copy); choose from {', '.join(PAPER_OPTIMIZERS)}")
    if args.iterations is None and args.minutes is None:
        args.iterations = 500
    return args


def run_dir_of(out: Path, task: str, model: str, seed: int) -> Path:
    return out / f"{task}-{model}-seed{seed}"


def finished(run_dir: Path, iterations: Optional[int]) -> bool:
    """Whether the run's summary.json says it completed (with at least ``iterations``, unless None). Summaries
    that this script wrote before runs recorded their own status count as completed."""
    path = RunDir(run_dir).summary
    if not path.exists():
        return False
    summary = read_json(path)
    return (summary.get("status", RunStatus.COMPLETED) == RunStatus.COMPLETED
            and (iterations is None or summary["iterations"] >= iterations))


def run_one(args: argparse.Namespace, task: str, model: str, seed: int) -> None:
    """Train (or resume) one run to its budget; the run leaves its ``summary.json``. A run that OUT already
    holds with another optimiser (``--optimizer``) is refused, finished or not: one table, one optimiser."""
    run_dir = run_dir_of(Path(args.out), task, model, seed)
    iterations = args.iterations if args.iterations is not None else 10_000_000
    minutes = args.minutes or 0.0
    config = resolve_config(task, model, args.preset, iterations=iterations, eval_every=args.eval_every, seed=seed,
                            run_dir=str(run_dir), time_limit_minutes=minutes, threads=args.threads)
    if args.optimizer == "authors":
        config = dataclasses.replace(config, optimization=PAPER_OPTIMIZERS[task])
    layout = RunDir(run_dir)
    if layout.config.exists():
        saved = SupervisedConfig.from_dict(read_json(layout.config)["config"]).optimization
        if saved != config.optimization:
            raise StmRlError(f"--optimizer {args.optimizer}: {run_dir} was trained with another optimiser "
                             f"({describe_optimizer(saved)}); give this one its own --out")
    if finished(run_dir, args.iterations):
        return
    print(f"== {task} / {model} / seed {seed}", flush=True)
    if layout.checkpoint(Checkpoint.LATEST).exists():
        resume(str(run_dir), iterations=iterations, time_limit_minutes=minutes)
    else:
        train(config)


def describe_optimizer(optimization: OptimizerConfig) -> str:
    """``rmsprop lr 0.0001 momentum 0.9 alpha 0.95, values +-10``: what the table's "other" column says."""
    text = f"{optimization.optimizer} lr {optimization.lr:g}"
    if optimization.optimizer == "rmsprop":
        text += f" momentum {optimization.momentum:g} alpha {optimization.rmsprop_alpha:g}"
    clips = ([f"values +-{optimization.clip_value:g}"] if optimization.clip_value is not None else []) + (
        [f"norm {optimization.clip_norm:g}"] if optimization.clip_norm is not None else [])
    return text + (", " + " and ".join(clips) if clips else ", no clipping")


def load_runs(out: Path, tasks: Sequence[str], models: Sequence[str], seeds: Sequence[int]) -> dict:
    """``{(task, model): [run record, ...]}`` of the finished runs: summary, config and validation curve."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for task in tasks:
        for model in models:
            for seed in seeds:
                run_dir = run_dir_of(out, task, model, seed)
                if not finished(run_dir, None):
                    continue
                summary = read_json(RunDir(run_dir).summary)
                config = SupervisedConfig.from_dict(read_json(RunDir(run_dir).config)["config"])
                metric = summary["main_metric"]
                curve = [(r["iteration"], r[metric]) for r in read_jsonl(RunDir(run_dir).evaluations)
                         if r["split"] == "valid"]
                runs.setdefault((task, model), []).append({**summary, "seed": seed, "curve": curve,
                                                           "config": config})
    return runs


def in_progress(out: Path, tasks: Sequence[str], models: Sequence[str], seeds: Sequence[int]) -> dict:
    """``{(task, model): text}`` for the runs begun but not finished (a long run spread over sittings): the best
    validation value so far, with the iteration it was reached at and the last one validated."""
    found: dict[tuple[str, str], list[str]] = {}
    for task in tasks:
        for model in models:
            for seed in seeds:
                layout = RunDir(run_dir_of(out, task, model, seed))
                if finished(layout.path, None) or not layout.evaluations.exists():
                    continue
                metric = TASKS[task].main_metric
                valid = [r for r in read_jsonl(layout.evaluations) if r["split"] == "valid" and metric in r]
                if not valid:
                    continue
                pick = max if TASKS[task].higher_is_better else min
                best = pick(valid, key=lambda r: r[metric])
                found.setdefault((task, model), []).append(
                    f"seed {seed}: valid {best[metric]:.3g} at iteration {best['iteration']} "
                    f"(validated to {valid[-1]['iteration']})")
    return {key: "in progress, " + "; ".join(texts) for key, texts in found.items()}


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} +- {statistics.stdev(values):.2g}"


def task_of(task: str, records: Sequence[dict], preset: str) -> Optional[Task]:
    """The task as the runs trained it (their task options; without runs, the preset's), or None where it cannot
    be built here (bAbI without its files)."""
    options = records[0]["config"].task_options if records else preset_config(task, "lstm", preset).task_options
    try:
        return make_task(task, **options)
    except (StmRlError, ValueError):
        return None


def standard_error(records: Sequence[dict], metric: str) -> Optional[float]:
    """The standard error of the mean test value: over seeds (std / sqrt(n)) with two or more; with one seed, the
    binomial one of its test set where the metric is a share of answers (accuracy; one answer per test sample
    assumed, which overstates the error for answers of several steps), else None."""
    values = [r["test"][metric] for r in records]
    if len(values) >= 2:
        return statistics.stdev(values) / math.sqrt(len(values))
    if metric == "accuracy" and records:
        answers = records[0]["config"].training.test_size
        return math.sqrt(values[0] * (1 - values[0]) / answers) if answers > 0 else None
    return None


def left_plateau(records: Sequence[dict], metric: str, plateau: Plateau, higher_is_better: bool) -> str:
    """``yes`` where the mean test value is past the plateau by more than 3 standard errors, with the distance in
    standard errors; ``n/a`` where one seed gives no standard error."""
    mean = statistics.mean(r["test"][metric] for r in records)
    gain = (mean - plateau.value) if higher_is_better else (plateau.value - mean)
    error = standard_error(records, metric)
    if error is None:
        return f"{plateau.name}: n/a (1 seed)"
    if error == 0:
        return f"{plateau.name}: {'yes' if gain > 0 else 'no'} (SE 0)"
    seeds = "" if len(records) >= 2 else ", test-set SE"
    distance = gain / error
    shown = f"{distance:+.1f}" if abs(distance) < 10 else f"{distance:+.0f}" if abs(distance) < 1000 else \
        (">+999" if distance > 0 else "<-999")
    return f"{plateau.name}: {'yes' if gain > 3 * error else 'no'} ({shown} SE{seeds})"


def paper_text(paper: Optional[PaperValue], metric: str) -> str:
    """The paper's value with its setting (and the share of the answer bits for bit errors)."""
    if paper is None:
        return "-"
    share = f" = {paper.bits / paper.answer_bits:.0%} of the answer bits" if paper.answer_bits and paper.bits else ""
    return f"{metric} {paper.value}{share} ({paper.setting})"


def paper_here(paper: Optional[PaperValue], task: Optional[Task]) -> str:
    """The paper's bit error scaled to this table's answer bits (the same share of them); other metrics do not
    scale with the item width."""
    if paper is None:
        return "-"
    if paper.answer_bits is None or not isinstance(task, BitOutputTask):
        return "not scaled"
    return f"{paper.bits / paper.answer_bits * task.answer_bits():.2g} of {task.answer_bits():.3g} bits"


def plateau_text(plateaus: Sequence[Plateau]) -> str:
    return "; ".join(f"{p.name} {p.value:.3g}" + (f" (loss {p.loss:.3g})" if p.loss is not None else "")
                     for p in plateaus) or "-"


def table_rows(runs: dict, tasks: Sequence[str], models: Sequence[str], preset: str = "small",
               unfinished: Optional[dict] = None) -> list[dict[str, str]]:
    """One row per (task, model) over its finished runs; where none has finished, ``unfinished`` (from
    :func:`in_progress`) says how far the begun ones are."""
    unfinished = unfinished or {}
    rows = []
    for task in tasks:
        task_records = [r for model in models for r in runs.get((task, model), [])]
        built = task_of(task, task_records, preset)
        plateaus = built.plateaus() if built is not None else []
        for model in models:
            records = runs.get((task, model), [])
            metric = records[0]["main_metric"] if records else TASKS[task].main_metric
            tests = [r["test"][metric] for r in records]
            extra = "; ".join(sorted({describe_optimizer(r["config"].optimization) for r in records}))
            if records and "items_perfect" in records[0]["test"]:
                extra += f"; items_perfect {mean_std([r['test']['items_perfect'] for r in records])}"
            paper = PAPER_VALUES.get((task, model))
            left = "; ".join(left_plateau(records, metric, p, TASKS[task].higher_is_better)
                             for p in plateaus) if records else ""
            rows.append({
                "task": task, "model": model, "metric": metric,
                "paper (its setting)": paper_text(paper, metric),
                "paper at this size": paper_here(paper, built),
                "shortcut plateau": plateau_text(plateaus),
                "here (test, mean +- std)": mean_std(tests) if tests else unfinished.get((task, model), "not run"),
                "left the plateau (> 3 SE)": left or "-",
                "seeds": str(len(records)),
                "iterations": "/".join(sorted({str(r["iterations"]) for r in records})) or "-",
                "wall min (mean)": f"{statistics.mean(r['elapsed_s'] for r in records) / 60:.1f}" if records else "-",
                "other": extra,
            })
    return rows


def write_outputs(out: Path, rows: list[dict[str, str]], runs: dict, tasks: Sequence[str], command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    with open(out / "table.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Command: `{command}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[k] for k in header) + " |" for row in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (run_task, model), records in runs.items():
            if run_task != task:
                continue
            length = min(len(r["curve"]) for r in records)
            xs = [records[0]["curve"][i][0] for i in range(length)]
            ys = [statistics.mean(r["curve"][i][1] for r in records) for i in range(length)]
            ax.plot(xs, ys, label=f"{model} ({len(records)} seed{'s' if len(records) > 1 else ''})")
        ax.set_title(task)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"valid {TASKS[task].main_metric}")
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


BABI_PAPER_MEAN_ERROR = "0.39 +- 0.18 (10 runs)"
BABI_PAPER_MEAN = 0.39  # % over the 20 tasks, mean of the paper's 10 runs (spec SUPERVISED.md)


def babi_report(run_dir: Path, out: Optional[Path] = None) -> str:
    """Markdown: the per-task error % of a bAbI run's latest evaluation (test if there is one) beside each task's
    best validation so far, and the mean; with ``out``, also ``out/babi.png``, the validation curve (mean error and
    tasks solved against iterations)."""
    if not Path(run_dir).is_dir():
        raise StmRlError(f"--babi-run {run_dir}: no such run directory")
    log = RunDir(run_dir).evaluations
    records = list(read_jsonl(log)) if log.exists() else []
    if not records:
        raise StmRlError(f"--babi-run {run_dir}: no evaluations yet")
    tests = [r for r in records if r["split"] == "test"]
    valids = [r for r in records if r["split"] == "valid"]
    latest = tests[-1] if tests else records[-1]
    tasks = sorted(int(k[len("error_qa"):]) for k in latest if k.startswith("error_qa"))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)

    def best_valid(task: int) -> str:
        if not valids:
            return "-"
        best = min(valids, key=lambda r: (r[f"error_qa{task}"], r["iteration"]))
        return f"{best[f'error_qa{task}']:.1f} ({best['iteration']})"

    lines = [f"bAbI run `{run_dir}`: {latest['split']} split at iteration {latest['iteration']} "
             f"({latest['elapsed_s'] / 3600:.2f} h of training)", "",
             "| task | error % here | solved (<= 5%) | best valid error % (iteration) |", "|---|---|---|---|"]
    lines += [f"| qa{t} | {latest[f'error_qa{t}']:.1f} | {'yes' if latest[f'error_qa{t}'] <= 5 else 'no'} "
              f"| {best_valid(t)} |" for t in tasks]
    lines.append(f"| mean | {latest['mean_error']:.2f} (paper STM: {BABI_PAPER_MEAN_ERROR}) | "
                 f"{int(latest['tasks_solved'])} of {len(tasks)} | |")
    lines += ["", f"The paper gives the STM's mean only: {BABI_PAPER_MEAN}% over {len(tasks) or 20} tasks bounds every "
              f"task's error in it by {BABI_PAPER_MEAN * (len(tasks) or 20):.1f}%."]
    if out is not None and valids:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, error_axis = plt.subplots(figsize=(6.5, 3.6))
        xs = [r["iteration"] for r in valids]
        error_axis.plot(xs, [r["mean_error"] for r in valids], color="C0")
        for test in tests:
            error_axis.plot([test["iteration"]], [test["mean_error"]], "o", color="C0")  # the test
        error_axis.set_xlabel("iteration")
        error_axis.set_ylabel("mean error % (20 tasks)", color="C0")
        solved_axis = error_axis.twinx()
        solved_axis.step(xs, [r["tasks_solved"] for r in valids], where="post", color="C1")
        solved_axis.set_ylabel("tasks with error <= 5%", color="C1")
        solved_axis.set_ylim(0, len(tasks) or 20)
        error_axis.set_title(f"bAbI: {Path(run_dir).name}")
        fig.tight_layout()
        fig.savefig(Path(out) / "babi.png", dpi=100)
        plt.close(fig)
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join(["benchmarks/supervised_table.py", *(argv if argv is not None else sys.argv[1:])])
    return run_command("supervised_table.py", lambda: build_table(args, command),
                       interrupted_hint="rerun the same command to resume")


def build_table(args: argparse.Namespace, command: str) -> int:
    """Train the runs the table still lacks (resuming interrupted ones), then write and print the table."""
    out = Path(args.out)
    if not args.report_only:
        for task in args.tasks:
            for seed in args.seeds:
                for model in args.models:
                    try:
                        run_one(args, task, model, seed)
                    except TrainingInterrupted as stop:
                        raise KeyboardInterrupt(str(stop)) from None
                    runs = load_runs(out, args.tasks, args.models, args.seeds)
                    rows = table_rows(runs, args.tasks, args.models, args.preset,
                                      in_progress(out, args.tasks, args.models, args.seeds))
                    write_outputs(out, rows, runs, args.tasks, command)
    if args.tasks:
        runs = load_runs(out, args.tasks, args.models, args.seeds)
        rows = table_rows(runs, args.tasks, args.models, args.preset,
                          in_progress(out, args.tasks, args.models, args.seeds))
        write_outputs(out, rows, runs, args.tasks, command)
        print((out / "table.md").read_text())
    if args.babi_run:
        report = babi_report(Path(args.babi_run), out)
        (out / "babi.md").write_text(report, encoding="utf-8")
        print(report)
    return ExitCode.COMPLETED


if __name__ == "__main__":
    sys.exit(main())
