"""Reproduce the results table of docs/supervised.md: the small preset of copy, associative retrieval
(length 30) and Nth-farthest with STM and LSTM, one run after the other, each under a wall-time limit.

    nice -n 10 .venv/bin/python benchmarks/supervised_results.py --minutes-stm 7 --minutes-lstm 4

Prints a markdown table (and writes it to runs/supervised/results.md): iterations, wall time, best
validation metric, the test metric of the best checkpoint and the task's shortcut plateaus (``Task.plateaus``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from stm_rl.conventions import run_command
from stm_rl.supervised.config import resolve_config
from stm_rl.supervised.tasks import TASKS, make_task
from stm_rl.supervised.train import train

RUNS = [("copy", "stm"), ("copy", "lstm"), ("associative-retrieval-30", "stm"), ("associative-retrieval-30", "lstm"),
        ("nth-farthest", "stm"), ("nth-farthest", "lstm")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes-stm", type=float, default=7.0)
    parser.add_argument("--minutes-lstm", type=float, default=4.0)
    parser.add_argument("--out", default="runs/supervised/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ["| task | model | preset | iterations | wall time | best valid | test (best checkpoint) | shortcut plateau "
            "| paper (STM) |", "|---|---|---|---|---|---|---|---|---|"]
    for task, model in RUNS:
        minutes = args.minutes_stm if model == "stm" else args.minutes_lstm
        run_dir = Path(args.out) / f"{task}-{model}-{int(time.time())}"
        config = resolve_config(task, model, "small", iterations=100_000, eval_every=100,
                                time_limit_minutes=minutes, run_dir=str(run_dir))
        started = time.monotonic()
        summary = train(config, progress=False)
        wall = time.monotonic() - started
        metric = summary["main_metric"]
        plateaus = "; ".join(f"{p.name} {p.value:.3g}" for p in make_task(task, **config.task_options).plateaus())
        rows.append(f"| {task} | {model} | small | {summary['iterations']} | {wall / 60:.1f} min | "
                    f"{metric} {summary['best_valid']:.4g} | {metric} {summary['test'][metric]:.4g} | "
                    f"{plateaus or '-'} | {TASKS[task].paper_result} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(run_command("supervised_results.py", main))
