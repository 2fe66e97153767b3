"""``stm-rl train``: build the configs from flags, start or resume a run, report how it ended."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from agents import AgentConfig, count_parameters
from envs import EnvConfig
from stm_rl.a3c.config import A3CConfig, RunConfig, TrainConfig
from stm_rl.a3c.trainer import GAME_LOG, Trainer, checkpoint_paths, load_training_checkpoint
from stm_rl.config_cli import add_dataclass_flags, dataclass_from_flags, given_flags
from stm_rl.run_dir import StmRlError

ENV_FLAGS_HIDDEN = ("seed", "obs_size", "clip_reward")  # derived from the run seed / the encoder
RESUMABLE_RUN_FLAGS = ("frames", "workers", "checkpoint_interval", "progress")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train an LSTM or STM agent on Pong with A3C",
        description="Train an actor-critic agent on Pong with asynchronous advantage actor-critic (A3C). "
                    "Ctrl-C stops the workers cleanly and writes a final checkpoint; "
                    "`stm-rl train --resume RUN_DIR` continues a run.")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its latest checkpoint (its settings are kept; "
                             f"only {', '.join('--' + f.replace('_', '-') for f in RESUMABLE_RUN_FLAGS)} may change)")
    add_dataclass_flags(parser, AgentConfig, title="agent")
    add_dataclass_flags(parser, EnvConfig, exclude=ENV_FLAGS_HIDDEN, title="environment")
    add_dataclass_flags(parser, A3CConfig, title="A3C")
    add_dataclass_flags(parser, RunConfig, title="run")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    agent = dataclass_from_flags(AgentConfig, args)
    env = dataclass_from_flags(EnvConfig, args, obs_size=agent.obs_size)
    a3c = dataclass_from_flags(A3CConfig, args)
    run_dir = getattr(args, "RunConfig.run_dir") or default_run_dir(agent, env, getattr(args, "RunConfig.seed") or 0)
    run = dataclass_from_flags(RunConfig, args, run_dir=run_dir)
    return TrainConfig(env=env, agent=agent, a3c=a3c, run=run)


def default_run_dir(agent: AgentConfig, env: EnvConfig, seed: int) -> Path:
    """A readable name: ``runs/stm-paper-skip4-seed0``."""
    return Path("runs") / f"{agent.agent}-{agent.encoder}-skip{env.frame_skip}-seed{seed}"


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        trainer = _resumed_trainer(args)
    else:
        config = config_from_args(args)
        if checkpoint_paths(config.run.run_dir)["latest"].exists():
            raise StmRlError(f"{config.run.run_dir} already holds a run; continue it with "
                             f"`stm-rl train --resume {config.run.run_dir}` or choose another --run-dir")
        if (config.run.run_dir / GAME_LOG).exists():
            raise StmRlError(f"{config.run.run_dir} holds the game log of a run that stopped before its first "
                             "checkpoint; remove the directory or choose another --run-dir")
        trainer = Trainer(config)
    config = trainer.config
    print(f"run {config.run.run_dir}: {config.agent.agent} agent ({config.agent.encoder} encoder, "
          f"{count_parameters(trainer.shared_model):,} parameters), frame skip {config.env.frame_skip}, "
          f"{config.run.workers} workers x {config.a3c.envs_per_worker} env(s), "
          f"budget {config.run.frames:,} frames" + (f", resuming at {trainer.counters.frames:,}"
                                                     if trainer.counters.frames else ""))
    result = trainer.run()
    counters = result.counters
    average = "n/a" if math.isnan(result.moving_average) else f"{result.moving_average:+.2f}"
    print(f"{result.status}: {counters.games} games, {counters.agent_steps:,} agent steps, "
          f"{counters.frames:,} frames in {counters.wall_time / 60:.1f} min; "
          f"moving average score {average}; checkpoints in {config.run.run_dir / 'checkpoints'}")
    if result.message:
        print(result.message)
    return 1 if result.status == "failed" else 0


def _resumed_trainer(args: argparse.Namespace) -> Trainer:
    run_dir: Path = args.resume
    if not run_dir.is_dir():
        raise StmRlError(f"cannot resume: no run directory at {run_dir}")
    latest = checkpoint_paths(run_dir)["latest"]
    if not latest.exists():
        raise StmRlError(f"cannot resume: {run_dir} has no checkpoints/latest.pt")
    record = load_training_checkpoint(latest)
    fixed = [flag for cls in (AgentConfig, EnvConfig, A3CConfig) for flag in given_flags(cls, args)]
    fixed += [flag for flag in given_flags(RunConfig, args)
              if flag.lstrip("-").replace("-", "_") not in RESUMABLE_RUN_FLAGS]
    if fixed:
        raise StmRlError(f"cannot change {', '.join(fixed)} when resuming; start a new run instead")
    saved: TrainConfig = record["config"]
    run_config = dataclass_from_flags(RunConfig, args, base=saved.run, run_dir=run_dir)
    return Trainer(dataclasses.replace(saved, run=run_config), resume_from=record)
