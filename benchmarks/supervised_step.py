"""Time of one supervised training step (forward, loss, backward) of a model on a task, with the read-out at every
step against the read-out at the answer steps only (what training does), in alternating rounds of one run.

    python benchmarks/supervised_step.py                                   # STM, associative retrieval, paper sizes
    python benchmarks/supervised_step.py --task nth-farthest --preset small --batch-size 32 --rounds 5

Prints the median milliseconds per step of each way and their ratio; the values are the same either way
(tests/test_supervised_stm.py), only the work differs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from stm_rl.conventions import run_command
from stm_rl.run_dir import StmRlError
from stm_rl.supervised.models import build_model, model_options
from stm_rl.supervised.tasks import make_task


def step_time(model, task, batch, answer_steps) -> float:
    start = time.perf_counter()
    loss = task.loss(model(batch.inputs, answer_steps=answer_steps), batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="associative-retrieval-30")
    parser.add_argument("--model", default="stm")
    parser.add_argument("--preset", default="paper", choices=["smoke", "small", "paper"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both ways (default: 3)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.rounds < 1 or args.batch_size < 1 or args.threads < 1:
        raise StmRlError("--rounds, --batch-size and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    task = make_task(args.task)
    torch.manual_seed(0)
    model = build_model(args.model, task, model_options(args.model, args.task, args.preset))
    batch = task.sample(args.batch_size, np.random.default_rng(0))
    answer_steps = batch.mask.any(0)
    step_time(model, task, batch, None)  # warm-up
    times: dict[str, list[float]] = {"every step": [], "answer steps": []}
    for _ in range(args.rounds):
        times["every step"].append(step_time(model, task, batch, None))
        times["answer steps"].append(step_time(model, task, batch, answer_steps))
    print(f"{args.model} on {args.task} ({args.preset} sizes), batch {args.batch_size}, "
          f"{int(answer_steps.sum())} of {len(answer_steps)} steps scored, {args.threads} thread(s), torch {torch.__version__}")
    medians = {way: 1000 * statistics.median(values) for way, values in times.items()}
    for way, value in medians.items():
        print(f"  read-out at {way:<13} {value:9.1f} ms/step")
    print(f"  answer steps / every step: {medians['answer steps'] / medians['every step']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("supervised_step.py", main))
