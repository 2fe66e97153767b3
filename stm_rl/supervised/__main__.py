"""``python -m stm_rl.supervised``: train, resume or evaluate a model on a supervised memory task.

    python -m stm_rl.supervised --task copy --model stm --preset small
    python -m stm_rl.supervised --resume runs/supervised/copy-stm-small-seed0 --iterations 4000
    python -m stm_rl.supervised --eval-only runs/supervised/copy-stm-small-seed0/checkpoints/best.pt
    python -m stm_rl.supervised --list

User errors (unknown names, missing data, bad flags) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Optional, Sequence

from stm_rl.run_dir import StmRlError


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stm_rl.supervised", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list tasks, models and presets")
    action.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    action.add_argument("--eval-only", metavar="CHECKPOINT", help="print the test metrics of a checkpoint")
    parser.add_argument("--task", help="task name (see --list)")
    parser.add_argument("--model", help="model name (see --list)")
    parser.add_argument("--preset", help="smoke, small (default) or paper")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument("--run-dir", help="run directory (default runs/supervised/TASK-MODEL-PRESET-seedS)")
    parser.add_argument("--time-limit-minutes", type=float, help="stop training after this much wall time")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task option, e.g. test_points=5 (repeatable)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model option, e.g. d=64 (repeatable)")
    parser.add_argument("--data-dir", help="bAbI: folder of bAbI v1.2 files (en-valid-10k, en-10k or en)")
    parser.add_argument("--babi-missing", choices=("error", "skip", "use-1k"),
                        help="bAbI: what to do with a task whose training file is missing (default error)")
    parser.add_argument("--babi-fallback-dir", help="bAbI: the 1k folder for --babi-missing use-1k (default: ../en)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def parse_options(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``["d=64", "gated=False"]`` -> ``{"d": 64, "gated": False}`` (Python literals, else strings)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StmRlError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def task_overrides(args: argparse.Namespace) -> dict[str, Any]:
    options = parse_options(args.task_option, "--task-option")
    for flag, key in (("data_dir", "data_dir"), ("babi_missing", "missing"), ("babi_fallback_dir", "fallback_dir")):
        if getattr(args, flag) is not None:
            options[key] = getattr(args, flag)
    return options


def list_everything() -> str:
    from stm_rl.supervised.config import PRESETS
    from stm_rl.supervised.models import MODELS
    from stm_rl.supervised.tasks import TASKS

    lines = ["tasks:"]
    lines += [f"  {name:26s} {cls.description}  [paper STM: {cls.paper_result}]" for name, cls in TASKS.items()]
    lines.append("models:")
    lines += [f"  {name:26s} {module.DESCRIPTION}" for name, module in MODELS.items()]
    lines.append("presets:")
    lines += [f"  {name:26s} {scale.description} ({scale.iterations} iterations, batch {scale.batch_size})"
              for name, scale in PRESETS.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise StmRlError(f"--threads must be >= 1, got {args.threads}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.list:
        print(list_everything())
        return 0

    from stm_rl.supervised.config import resolve_config
    from stm_rl.supervised.train import describe_metrics, evaluate_checkpoint, resume, train

    if args.eval_only:
        values = evaluate_checkpoint(args.eval_only, "test", task_overrides(args), args.device)
        print(f"test: {describe_metrics(values)}")
        return 0
    if args.resume:
        if args.lr is not None or args.task_option or args.model_option:
            raise StmRlError("--resume continues a run with its own settings; only --iterations, "
                             "--time-limit-minutes, --device and --eval-every may change")
        summary = resume(args.resume, {
            "task": args.task, "model": args.model, "preset": args.preset, "iterations": args.iterations,
            "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
            "time_limit_minutes": args.time_limit_minutes, "eval_every": args.eval_every, "threads": args.threads,
        }, progress=not args.no_progress)
    else:
        if not args.task or not args.model:
            raise StmRlError("--task and --model are required (see --list)")
        config = resolve_config(
            args.task, args.model, args.preset or "small", iterations=args.iterations, batch_size=args.batch_size,
            eval_every=args.eval_every, seed=args.seed, device=args.device, run_dir=args.run_dir,
            time_limit_minutes=args.time_limit_minutes, threads=args.threads, optimizer={"lr": args.lr},
            task_options=task_overrides(args), model_options=parse_options(args.model_option, "--model-option"),
        )
        summary = train(config, progress=not args.no_progress)
    print(f"run {summary['run_dir']}: {summary['iterations']} iterations in {summary['elapsed_s']:.0f} s; "
          f"best valid {summary['main_metric']} {summary['best_valid']:.4g} at iteration {summary['best_iteration']}")
    print(f"test: {describe_metrics(summary['test'])}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from stm_rl.supervised.train import TrainingInterrupted

    try:
        return run(parse_args(argv))
    except StmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
