"""``stm-rl supervised`` (also ``python -m stm_rl.supervised``): train, resume or evaluate a model on a
supervised memory task.

    stm-rl supervised --task copy --model stm --preset small
    stm-rl supervised --resume runs/supervised/copy-stm-small-seed0 --iterations 4000
    stm-rl supervised --eval-only runs/supervised/copy-stm-small-seed0/checkpoints/best.pt
    stm-rl supervised --list

The flags are generated from the config dataclasses of :mod:`stm_rl.supervised.config` (their field
docstrings are the help texts); a flag given overrides the preset's value. ``--resume`` continues a run with
the settings of its checkpoint: only the settings in ``RESUMABLE_SETTINGS`` may differ (the same rule as
``stm-rl train --resume``). Exit status (:mod:`stm_rl.conventions`): 0 completed, 1 failed (a non-finite loss),
2 bad input (unknown names, missing data, bad flags, a busy run directory: one line, nothing created), 130
interrupted by Ctrl-C or SIGTERM (the latest checkpoint is saved; continue with ``--resume``).
``STM_RL_DEBUG=1`` shows tracebacks instead of one-line errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional

from stm_rl.config_cli import add_dataclass_flags, dataclass_from_flags, parse_key_values
from stm_rl.conventions import EXIT_CODES, RunStatus
from stm_rl.supervised.config import (
    DEFAULT_OPTIMIZER, DEFAULT_RUN_DIR_TEXT, PRESETS, OptimizerConfig, RunConfig, SupervisedConfig, TrainingConfig, preset_config,
    with_default_run_dir,
)
from stm_rl.supervised.models import MODELS, with_model_options
from stm_rl.supervised.models import model_options as preset_model_options

PROG = "stm-rl supervised"
DESCRIPTION = "train, resume or evaluate a model (STM or a baseline) on a supervised memory task of the SAM paper"
GROUPS = (("training", TrainingConfig, "training"), ("optimization", OptimizerConfig, "optimizer"),
          ("run", RunConfig, "run"))
"""The config groups that get flags: (field of SupervisedConfig, dataclass, help title)."""
FIELDS_WITHOUT_FLAGS = ("training", "optimization", "run", "task_options", "model_options")


@dataclass(frozen=True)
class BabiDataFlags:
    """Where the bAbI files are (task options of ``--task babi``, as flags of their own)."""

    data_dir: Optional[str] = None
    """bAbI: folder of bAbI v1.2 files (en-valid-10k, en-10k or en); required for --task babi."""
    babi_missing: Optional[Literal["error", "skip", "use-1k"]] = None
    """bAbI: what to do with a task whose training file is missing (default: error)."""
    babi_fallback_dir: Optional[str] = None
    """bAbI: the 1k folder for --babi-missing use-1k (default: ../en next to --data-dir)."""

    def task_options(self) -> dict[str, Any]:
        """The bAbI task's options for the flags that were given."""
        options = {"data_dir": self.data_dir, "missing": self.babi_missing, "fallback_dir": self.babi_fallback_dir}
        return {key: value for key, value in options.items() if value is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of the command (shared by ``stm-rl supervised`` and ``python -m stm_rl.supervised``)."""
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list tasks, models and presets")
    action.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint "
                        "with its own settings (only the budget, the evaluation interval, the time limit, device, "
                        "threads, display, run and data locations may change)")
    action.add_argument("--eval-only", metavar="CHECKPOINT", help="print the test metrics of a checkpoint")
    add_dataclass_flags(parser, SupervisedConfig, exclude=FIELDS_WITHOUT_FLAGS, title="what to train",
                        default_text={"preset": "small"})
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task option, e.g. test_points=5 (repeatable; default: the preset's)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model option, e.g. d=64 (repeatable; default: the preset's; --list "
                             "names them)")
    for _, cls, title in GROUPS:
        add_dataclass_flags(parser, cls, title=title, default_text=preset_defaults_text(cls))
    add_dataclass_flags(parser, BabiDataFlags, title="bAbI data")


def preset_defaults_text(cls: type) -> dict[str, str]:
    """The defaults shown in the help of ``cls``'s flags where the preset decides them."""
    if cls is TrainingConfig:
        return {f.name: "the preset's: " + ", ".join(f"{name} {getattr(scale.training, f.name)}"
                                                    for name, scale in PRESETS.items())
                for f in dataclasses.fields(TrainingConfig)}
    if cls is OptimizerConfig:
        return {f.name: f"the preset's: {getattr(DEFAULT_OPTIMIZER, f.name)}; paper: the paper's for the task "
                        "(docs/supervised.md)" for f in dataclasses.fields(OptimizerConfig)}
    return {"run_dir": DEFAULT_RUN_DIR_TEXT}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("supervised", help=DESCRIPTION, description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace, base: Optional[SupervisedConfig] = None) -> SupervisedConfig:
    """The flags given, over ``base`` (a resumed run's config) or over the preset of ``--task``/``--model``."""
    if base is None:
        task, model = getattr(args, "SupervisedConfig.task"), getattr(args, "SupervisedConfig.model")
        if not task or not model:
            raise ValueError("--task and --model are required (see --list)")
        base = preset_config(task, model, getattr(args, "SupervisedConfig.preset") or "small")
    top = {name: getattr(args, f"SupervisedConfig.{name}") for name in ("task", "model", "preset")}
    top = {name: value for name, value in top.items() if value is not None}
    groups = {name: dataclass_from_flags(cls, args, base=getattr(base, name)) for name, cls, _ in GROUPS}
    task_options = {**base.task_options, **parse_key_values(args.task_option, "--task-option"),
                    **dataclass_from_flags(BabiDataFlags, args).task_options()}
    model = top.get("model", base.model)
    model_options = (base.model_options if model == base.model  # another model (refused on resume): its preset's
                     else preset_model_options(model, top.get("task", base.task), top.get("preset", base.preset)))
    model_options = with_model_options(model, model_options, parse_key_values(args.model_option, "--model-option"))
    config = dataclasses.replace(base, **top, **groups, task_options=task_options, model_options=model_options)
    return with_default_run_dir(config)


def list_everything() -> str:
    from stm_rl.supervised.tasks import TASKS

    lines = ["tasks:"]
    lines += [f"  {name:26s} {cls.description}  [paper STM: {cls.paper_result}]" for name, cls in TASKS.items()]
    lines.append("models (--model-option names):")
    lines += [f"  {name:26s} {module.DESCRIPTION}\n  {'':26s} options: "
              f"{', '.join(f.name for f in dataclasses.fields(module.Options))}" for name, module in MODELS.items()]
    lines.append("presets:")
    lines += [f"  {name:26s} {scale.description} ({scale.training.iterations} iterations, "
              f"batch {scale.training.batch_size})" for name, scale in PRESETS.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """The command's body: 0 completed, 130 interrupted; errors (bad input, a failed run) are raised for
    :func:`stm_rl.conventions.run_command` to report."""
    if args.list:
        print(list_everything())
        return 0
    from stm_rl.supervised.train import (TrainingInterrupted, describe_metrics, evaluate_checkpoint, load_run,
                                         resume_with, train)

    if args.eval_only:
        device = getattr(args, "RunConfig.device")
        task_options = {**parse_key_values(args.task_option, "--task-option"),
                        **dataclass_from_flags(BabiDataFlags, args).task_options()}
        values = evaluate_checkpoint(args.eval_only, "test", task_options, device)
        print(f"test: {describe_metrics(values)}")
        return 0
    # Ctrl-C and SIGTERM arrive as KeyboardInterrupt (conventions.run_command); training saves and stops.
    try:
        if args.resume:
            record, saved = load_run(args.resume)
            wanted = config_from_args(args, base=saved)
            summary = resume_with(record, saved, dataclasses.replace(
                wanted, run=dataclasses.replace(wanted.run, run_dir=args.resume)))  # where the run is now
        else:
            summary = train(config_from_args(args))
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return EXIT_CODES[RunStatus.INTERRUPTED]
    print(f"run {summary['run_dir']}: {summary['iterations']} iterations in {summary['elapsed_s']:.0f} s; "
          f"best valid {summary['main_metric']} {summary['best_valid']:.4g} at iteration {summary['best_iteration']}")
    print(f"test: {describe_metrics(summary['test'])}")
    return EXIT_CODES[RunStatus.COMPLETED]
