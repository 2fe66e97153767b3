"""The SAM paper's supervised tables side by side with models trained here, at a stated budget.

    nice -n 19 .venv/bin/python benchmarks/supervised_table.py --tasks copy nth-farthest \
        --models stm lstm ntm dnc rmc --seeds 0 1 --iterations 500 --out runs/supervised_table

Every (task, model, seed) is one ordinary run of ``stm_rl.supervised`` (the task's ``--preset``, validation
every ``--eval-every`` iterations, the final test on the best validation weights) in
``OUT/TASK-MODEL-seedS``. The budget is the same number of iterations for every model (``--iterations``),
or a wall-time limit per run (``--minutes``; a resumed run gets the limit again for its new session, so
prefer iterations for comparisons). Re-running the command skips finished runs and resumes
interrupted ones from their latest checkpoint, so the whole table can be built over several sessions.
``--report-only`` rebuilds the outputs from the run directories without training.

Writes ``OUT/table.md`` and ``OUT/table.csv`` (per task: the paper's value where the spec gives it, then
each model's test value of the task's main metric, mean +- std over the finished seeds, with iterations
and wall time) and ``OUT/curves.png`` (validation main metric against iterations, one panel per task,
mean over seeds). A run counts as finished when its ``summary.json`` says it completed its budget. Exit status
(:mod:`stm_rl.conventions`): 0 done, 1 a run failed (e.g. a non-finite loss), 2 bad input, 130 interrupted
(Ctrl-C / SIGTERM; rerun to resume).
"""

from __future__ import annotations

import argparse
import csv
import signal
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from stm_rl.conventions import ExitCode, RunStatus
from stm_rl.run_dir import RunDir, RunFailed, StmRlError, read_json, read_jsonl
from stm_rl.supervised.config import PRESETS, resolve_config
from stm_rl.supervised.models import MODELS
from stm_rl.supervised.tasks import TASKS
from stm_rl.supervised.train import TrainingInterrupted, resume, train

PAPER_VALUES: dict[tuple[str, str], str] = {
    ("associative-retrieval-30", "stm"): "accuracy 1.00",
    ("associative-retrieval-50", "stm"): "accuracy 1.00",
    ("nth-farthest", "stm"): "accuracy 0.98",
    ("nth-farthest", "rmc"): "accuracy 0.91",
    ("nth-farthest", "tpr"): "accuracy 0.13",
    ("copy", "stm"): "bit_error ~0",
    ("priority-sort", "stm"): "bit_error ~0",
    ("rar", "stm"): "bit_error ~1 (87% items perfect)",
    ("rar", "ntm"): "bit_error ~30",
    ("rar", "dnc"): "bit_error ~30",
    ("rar", "rmc"): "bit_error ~30",
}
"""The paper's values as ``../shared/spec/SUPERVISED.md`` states them (at the paper's sizes and budgets)."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["associative-retrieval-30", "nth-farthest", "rar", "copy"],
                        help="tasks (python -m stm_rl.supervised --list)")
    parser.add_argument("--models", nargs="+", default=["stm", "lstm", "ntm", "dnc", "rmc"], help="models")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (>= 0)")
    parser.add_argument("--preset", default="small", help="preset of every run: " + ", ".join(PRESETS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, default=None, help="iterations per run (default 500)")
    budget.add_argument("--minutes", type=float, default=None, help="wall-time limit per run instead of iterations")
    parser.add_argument("--eval-every", type=int, default=100, help="validate every this many iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="runs/supervised_table", help="folder of the runs and the outputs")
    parser.add_argument("--report-only", action="store_true", help="only rebuild table and figure from OUT")
    parser.add_argument("--babi-run", default=None, help="also report the per-task error of this bAbI run directory "
                        "(its latest evaluation; test if it has one, else validation) in OUT/babi.md")
    args = parser.parse_args(argv)
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
    """Train (or resume) one run to its budget; the run leaves its ``summary.json``."""
    run_dir = run_dir_of(Path(args.out), task, model, seed)
    if finished(run_dir, args.iterations):
        return
    iterations = args.iterations if args.iterations is not None else 10_000_000
    minutes = args.minutes or 0.0
    print(f"== {task} / {model} / seed {seed}", flush=True)
    if RunDir(run_dir).checkpoint("latest").exists():
        resume(str(run_dir), progress=False, iterations=iterations, time_limit_minutes=minutes)
    else:
        train(resolve_config(task, model, args.preset, iterations=iterations, eval_every=args.eval_every, seed=seed,
                             run_dir=str(run_dir), time_limit_minutes=minutes, threads=args.threads), progress=False)


def load_runs(out: Path, tasks: Sequence[str], models: Sequence[str], seeds: Sequence[int]) -> dict:
    """``{(task, model): [run record, ...]}`` of the finished runs: summary plus validation curve."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for task in tasks:
        for model in models:
            for seed in seeds:
                run_dir = run_dir_of(out, task, model, seed)
                if not finished(run_dir, None):
                    continue
                summary = read_json(RunDir(run_dir).summary)
                metric = summary["main_metric"]
                curve = [(r["iteration"], r[metric]) for r in read_jsonl(RunDir(run_dir).evaluations)
                         if r["split"] == "valid"]
                runs.setdefault((task, model), []).append({**summary, "seed": seed, "curve": curve})
    return runs


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} +- {statistics.stdev(values):.2g}"


def table_rows(runs: dict, tasks: Sequence[str], models: Sequence[str]) -> list[dict[str, str]]:
    rows = []
    for task in tasks:
        for model in models:
            records = runs.get((task, model), [])
            metric = records[0]["main_metric"] if records else TASKS[task].main_metric
            tests = [r["test"][metric] for r in records]
            extra = ""
            if records and "items_perfect" in records[0]["test"]:
                extra = f"items_perfect {mean_std([r['test']['items_perfect'] for r in records])}"
            rows.append({
                "task": task, "model": model, "metric": metric,
                "paper": PAPER_VALUES.get((task, model), "-"),
                "here (test, mean +- std)": mean_std(tests) if tests else "not run",
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


def babi_report(run_dir: Path) -> str:
    """Markdown: the per-task error % of a bAbI run's latest evaluation (test if there is one) and the mean."""
    records = list(read_jsonl(run_dir / "evaluations.jsonl"))
    if not records:
        raise StmRlError(f"--babi-run {run_dir}: no evaluations yet")
    tests = [r for r in records if r["split"] == "test"]
    latest = tests[-1] if tests else records[-1]
    tasks = sorted(int(k[len("error_qa"):]) for k in latest if k.startswith("error_qa"))
    lines = [f"bAbI run `{run_dir}`: {latest['split']} split at iteration {latest['iteration']} "
             f"({latest['elapsed_s'] / 3600:.2f} h of training)", "",
             "| task | error % here | solved (<= 5%) |", "|---|---|---|"]
    lines += [f"| qa{t} | {latest[f'error_qa{t}']:.1f} | {'yes' if latest[f'error_qa{t}'] <= 5 else 'no'} |"
              for t in tasks]
    lines.append(f"| mean | {latest['mean_error']:.2f} (paper STM: {BABI_PAPER_MEAN_ERROR}) | "
                 f"{int(latest['tasks_solved'])} of {len(tasks)} |")
    return "\n".join(lines) + "\n"


def raise_interrupt(signum, frame) -> None:  # SIGTERM behaves like Ctrl-C: save the latest checkpoint and stop
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, raise_interrupt)
    out = Path(args.out)
    command = " ".join(["benchmarks/supervised_table.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        if not args.report_only:
            for task in args.tasks:
                for seed in args.seeds:
                    for model in args.models:
                        run_one(args, task, model, seed)
                        runs = load_runs(out, args.tasks, args.models, args.seeds)
                        write_outputs(out, table_rows(runs, args.tasks, args.models), runs, args.tasks, command)
    except (StmRlError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except (TrainingInterrupted, KeyboardInterrupt) as stop:
        print(f"interrupted ({stop}); rerun the same command to resume", file=sys.stderr)
        return ExitCode.INTERRUPTED
    runs = load_runs(out, args.tasks, args.models, args.seeds)
    rows = table_rows(runs, args.tasks, args.models)
    write_outputs(out, rows, runs, args.tasks, command)
    print((out / "table.md").read_text())
    if args.babi_run:
        try:
            report = babi_report(Path(args.babi_run))
        except (StmRlError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return ExitCode.BAD_INPUT
        (out / "babi.md").write_text(report, encoding="utf-8")
        print(report)
    return ExitCode.COMPLETED


if __name__ == "__main__":
    sys.exit(main())
