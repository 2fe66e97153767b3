"""``python -m stm_rl.supervised``: train, resume or evaluate a model on a supervised memory task.

    python -m stm_rl.supervised --task copy --model stm --preset small
    python -m stm_rl.supervised --resume runs/supervised/copy-stm-small-seed0 --iterations 4000
    python -m stm_rl.supervised --eval-only runs/supervised/copy-stm-small-seed0/checkpoints/best.pt
    python -m stm_rl.supervised --list

Exit status (``stm_rl.conventions``): 0 completed, 1 failed, 2 bad input (unknown names, missing data, bad
flags: one line, nothing created), 130 interrupted by Ctrl-C or SIGTERM (the latest checkpoint is saved;
continue with ``--resume``). ``STM_RL_DEBUG=1`` shows tracebacks instead of one-line errors.
"""

from __future__ import annotations

import argparse
import ast
import signal
import sys
from typing import Any, Optional, Sequence

from stm_rl.conventions import ExitCode, debugging
from stm_rl.run_dir import StmRlError


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stm_rl.supervised", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list tasks, models and presets")
    action.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    action.add_argument("--eval-only", metavar="CHECKPOINT", help="print the test metrics of a checkpoint")
    parser.add_argument("--task", help="task name (see --list); required unless --resume/--eval-only/--list")
    parser.add_argument("--model", help="model name: stm or a baseline (see --list)")
    parser.add_argument("--preset", help="smoke, small or paper (default: small)")
    parser.add_argument("--iterations", type=int, help="training iterations (default: the preset's; small 2000, "
                        "paper 100000); with --resume, the new total")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: the preset's; small 32, paper 128)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the preset's; small Adam 1e-3, paper: "
                        "the paper's per task, see docs/supervised.md)")
    parser.add_argument("--eval-every", type=int, help="validate every N iterations (default: the preset's; "
                        "small 200, paper 1000)")
    parser.add_argument("--seed", type=int, help="seed of the model, the data sets and the training stream, >= 0 "
                        "(default: 0)")
    parser.add_argument("--device", help="cpu or cuda (default: cpu)")
    parser.add_argument("--run-dir", help="run directory (default: runs/supervised/TASK-MODEL-PRESET-seedS)")
    parser.add_argument("--time-limit-minutes", type=float, help="stop training after this much wall time "
                        "(default: no limit)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads, >= 1, saved with the run (default: "
                        "torch's choice)")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task option, e.g. test_points=5 (repeatable; default: the preset's)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model option, e.g. d=64 (repeatable; default: the preset's)")
    parser.add_argument("--data-dir", help="bAbI: folder of bAbI v1.2 files (en-valid-10k, en-10k or en); "
                        "required for --task babi")
    parser.add_argument("--babi-missing", choices=("error", "skip", "use-1k"),
                        help="bAbI: what to do with a task whose training file is missing (default: error)")
    parser.add_argument("--babi-fallback-dir", help="bAbI: the 1k folder for --babi-missing use-1k "
                        "(default: ../en next to --data-dir)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar on a terminal)")
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
        return ExitCode.COMPLETED

    from stm_rl.supervised.config import resolve_config
    from stm_rl.supervised.train import describe_metrics, evaluate_checkpoint, resume, train

    if args.eval_only:
        values = evaluate_checkpoint(args.eval_only, "test", task_overrides(args), args.device)
        print(f"test: {describe_metrics(values)}")
        return ExitCode.COMPLETED
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
    return ExitCode.COMPLETED


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM stops training like Ctrl-C: the latest checkpoint is saved, the exit status is 130."""
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    from stm_rl.supervised.train import TrainingInterrupted

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        return run(parse_args(argv))
    except StmRlError as error:
        if debugging():
            raise
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
