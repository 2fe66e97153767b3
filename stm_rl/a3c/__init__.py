"""Asynchronous advantage actor-critic (A3C) for the Pong agents: config, shared Adam, worker, trainer."""

from stm_rl.a3c.config import A3CConfig, RunConfig, TrainConfig
from stm_rl.a3c.shared_adam import SharedAdam
from stm_rl.a3c.trainer import Trainer, TrainResult, load_agent_from_checkpoint, load_training_checkpoint

__all__ = ["A3CConfig", "RunConfig", "SharedAdam", "TrainConfig", "TrainResult", "Trainer",
           "load_agent_from_checkpoint", "load_training_checkpoint"]
