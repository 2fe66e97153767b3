"""``stm-rl train``: build the configs from flags, start or resume a run, report how it ended.

Exit codes (:mod:`stm_rl.conventions`): 0 the budget was reached, 130 stopped by Ctrl-C / SIGTERM (with a
final checkpoint: resumable), 1 failed, 2 bad input (nothing was started or created).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from agents import AgentConfig, count_parameters
from envs import EnvConfig
from stm_rl.a3c.checkpoint import RESUMABLE_RUN_FLAGS, load_resume_checkpoint
from stm_rl.a3c.config import (ENV_FLAGS_HIDDEN, PRESETS, A3CConfig, RunConfig, TrainConfig, budget_rule,
                              build_train_config)
from stm_rl.a3c.limits import validate_for_training
from stm_rl.a3c.trainer import Trainer
from stm_rl.evaluate import evaluate_final_agent
from stm_rl.config_cli import (add_dataclass_flags, dataclass_from_flags, flag_name, given_flags, given_settings,
                               with_flag_names)
from stm_rl.conventions import EXIT_CODES, RunStatus, suggest
from stm_rl.run_dir import Checkpoint, RunDir, StmRlError, check_can_write, read_json

__all__ = ["RESUMABLE_RUN_FLAGS", "add_parser", "config_from_args", "default_run_dir", "run"]

DEFAULT_RUN_DIR_TEXT = "runs/<agent>-<encoder>-skip<frame skip>-seed<seed>"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train an LSTM or STM agent on Pong with A3C",
        description="Train an actor-critic agent on Pong with asynchronous advantage actor-critic (A3C). "
                    "Ctrl-C stops the workers cleanly and writes a final checkpoint; "
                    "`stm-rl train --resume RUN_DIR` continues a run. Exit codes: 0 completed, 1 failed, "
                    "2 bad input, 130 interrupted (resumable).")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its latest checkpoint (its settings are kept; "
                             f"only {', '.join(flag_name(f) for f in RESUMABLE_RUN_FLAGS)} may change)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="starting point for every setting, overridden by the flags given: \"cpu\" (the defaults "
                             "below, chosen for few CPU cores) or \"paper\" (the paper's 80x80 encoder, one game per "
                             "worker, Adam lr 1e-4 with eps 1e-3) (default: cpu)")
    add_dataclass_flags(parser, AgentConfig, title="agent")
    add_dataclass_flags(parser, EnvConfig, exclude=ENV_FLAGS_HIDDEN, title="environment")
    add_dataclass_flags(parser, A3CConfig, title="A3C")
    add_dataclass_flags(parser, RunConfig, title="run", default_text={"run_dir": DEFAULT_RUN_DIR_TEXT})
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The flags given, over the chosen preset (:func:`stm_rl.a3c.config.build_train_config`, as ``stm-rl sweep``
    builds its runs); without ``--run-dir`` the run goes to :func:`default_run_dir`."""
    sections = (AgentConfig, EnvConfig, A3CConfig, RunConfig)
    settings = {cls.__name__: given_settings(cls, args) for cls in sections}
    try:
        config = build_train_config(settings, getattr(args, "preset", None))
    except ValueError as error:  # the dataclass's message, with the flags' names
        fields = [f.name for cls in sections for f in dataclasses.fields(cls)
                  if hasattr(args, f"{cls.__name__}.{f.name}")]
        raise ValueError(with_flag_names(str(error), fields)) from None
    if "run_dir" in settings["RunConfig"]:
        return config
    run_dir = default_run_dir(config.agent, config.env, config.run.seed)
    return dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir=run_dir))


def default_run_dir(agent: AgentConfig, env: EnvConfig, seed: int) -> Path:
    """A readable name: ``runs/stm-paper-skip4-seed0``."""
    return Path("runs") / f"{agent.agent}-{agent.encoder}-skip{env.frame_skip}-seed{seed}"


def run(args: argparse.Namespace) -> int:
    trainer = _resumed_trainer(args) if args.resume is not None else _new_trainer(args)
    trainer.check_budget()
    config = trainer.config
    print(f"run {config.run.run_dir}: {config.agent.agent} agent ({config.agent.encoder} encoder, "
          f"{count_parameters(trainer.shared_model):,} parameters), frame skip {config.env.frame_skip}, "
          f"{config.run.workers} workers x {config.a3c.envs_per_worker} env(s), "
          f"budget {config.run.describe_budget()}"
          + (f", resuming at {trainer.counters.frames:,} frames, {trainer.counters.agent_steps:,} agent steps"
             if trainer.counters.frames else ""), flush=True)
    result = trainer.run()
    if result.status == RunStatus.COMPLETED:
        evaluate_final_agent(config.run.run_dir, config.env.frame_skip, config.run.final_eval_games)
    counters = result.counters
    average = "n/a" if math.isnan(result.moving_average) else f"{result.moving_average:+.2f}"
    print(f"{result.status}: {counters.games} games, {counters.agent_steps:,} agent steps, "
          f"{counters.frames:,} frames in {counters.wall_time / 60:.1f} min; "
          f"moving average score {average}; checkpoints in {RunDir(config.run.run_dir).checkpoints}")
    if result.status == RunStatus.INTERRUPTED:
        print(f"continue it with `{suggest('train', ['--resume', str(config.run.run_dir)])}`")
    if result.message and result.status == RunStatus.FAILED:
        print(f"stm-rl train: error: {result.message}", file=sys.stderr)
    elif result.message:
        print(result.message)
    return EXIT_CODES[result.status]


def _new_trainer(args: argparse.Namespace) -> Trainer:
    config = config_from_args(args)
    validate_for_training(config)
    layout = RunDir(config.run.run_dir)
    check_can_write(layout.path, "--run-dir", directory=True)
    layout.refuse_if_busy()
    resume = suggest("train", ["--resume", str(layout.path)])
    if layout.checkpoint(Checkpoint.LATEST).exists():
        raise StmRlError(f"{layout.path} already holds a run; continue it with `{resume}` or choose another "
                         "--run-dir")
    if layout.games.exists():
        raise StmRlError(f"{layout.path} holds the game log of a run that stopped before its first checkpoint; "
                         f"`{resume}` starts it over with its recorded settings, or choose another --run-dir")
    return Trainer(config)


def _resumed_trainer(args: argparse.Namespace) -> Trainer:
    layout = RunDir(args.resume)
    if not layout.path.is_dir():
        raise StmRlError(f"cannot resume: no run directory at {layout.path}")
    fixed = ["--preset"] if args.preset else []
    fixed += [flag for cls in (AgentConfig, EnvConfig, A3CConfig) for flag in given_flags(cls, args)]
    fixed += [flag for flag in given_flags(RunConfig, args)
              if flag.lstrip("-").replace("-", "_") not in RESUMABLE_RUN_FLAGS]
    if fixed:
        raise StmRlError(f"cannot change {', '.join(fixed)} when resuming; start a new run instead")
    layout.refuse_if_busy()
    if not any(layout.checkpoint(name).exists() for name in RunDir.CHECKPOINT_NAMES) and layout.config.is_file():
        return _restarted_trainer(layout, args)
    record = load_resume_checkpoint(layout.path)
    saved: TrainConfig = record["config"]
    run_config = dataclass_from_flags(RunConfig, args, base=saved.run, run_dir=layout.path,
                                      **budget_rule(given_settings(RunConfig, args)))
    return Trainer(dataclasses.replace(saved, run=run_config), resume_from=record)


def _restarted_trainer(layout: RunDir, args: argparse.Namespace) -> Trainer:
    """A run killed before it wrote any checkpoint starts over with the settings of its config.json; the game
    log of the lost attempt is kept aside (``games.orphan-<time>.jsonl``)."""
    try:
        saved = TrainConfig.from_dict(read_json(layout.config)["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise StmRlError(f"cannot resume: {layout.path} has no checkpoint and its {RunDir.CONFIG} is not a "
                         f"training config ({error})") from None
    run_config = dataclass_from_flags(RunConfig, args, base=saved.run, run_dir=layout.path,
                                      **budget_rule(given_settings(RunConfig, args)))
    orphan = layout.set_aside_game_log()
    kept = f"; its game log is kept as {orphan.name}" if orphan else ""
    print(f"{layout.path} has no checkpoint (stopped before its first one): starting it over with the settings "
          f"of its {RunDir.CONFIG}{kept}", file=sys.stderr)
    return Trainer(dataclasses.replace(saved, run=run_config))
