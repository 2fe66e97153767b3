"""Checkpoints of A3C training runs: what they hold, how they are saved and loaded, and the resume rule.

A checkpoint (``checkpoints/{latest,best,final}.pt``, written atomically by :func:`stm_rl.run_dir.save_checkpoint`)
holds the shared model and optimizer states, the run's counters and recent scores, and its whole config.
Weights that are not finite are never saved: a run whose shared model a NaN reached keeps its last good
checkpoints. Resuming continues from ``latest.pt`` with the config it holds; only the settings in
:data:`RESUMABLE_RUN_FLAGS` may change, and the checkpoint must belong to the run directory it is in (its
config.json).

This module imports no trainer and no tensorboard, so ``evaluate`` and ``sweep`` can load checkpoints cheaply.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch

from agents import ActorCritic, build_agent
from stm_rl.a3c.config import TrainConfig
from stm_rl.config_cli import differing_settings
from stm_rl.run_dir import CheckpointError, RunDir, load_checkpoint, read_json, save_checkpoint, to_jsonable

CHECKPOINT_KIND = "a3c"
NUM_ACTIONS = 6  # Pong's minimal action set
RESUMABLE_RUN_FLAGS = ("frames", "workers", "checkpoint_interval", "progress", "progress_interval")
"""RunConfig fields that a resumed segment may change; every other setting comes from the checkpoint."""


class NonFiniteWeightsError(CheckpointError):
    """The weights to save hold NaN or infinity; the previous checkpoint was kept."""


def checkpoint_paths(run_dir: Path) -> dict[str, Path]:
    """``{"latest": .../checkpoints/latest.pt, "best": ..., "final": ...}``."""
    layout = RunDir(run_dir)
    return {name: layout.checkpoint(name) for name in RunDir.CHECKPOINT_NAMES}


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [name for name, tensor in state.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def save_training_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             counters: Mapping[str, Any], scores: Mapping[str, Any], config: TrainConfig) -> Path:
    """Save a training checkpoint atomically; :class:`NonFiniteWeightsError` (nothing written) if the model's
    weights are not finite."""
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad = non_finite_tensors(model_state)
    if bad:
        raise NonFiniteWeightsError(f"the shared weights hold NaN/inf ({', '.join(bad[:3])}"
                                    f"{', ...' if len(bad) > 3 else ''}); {Path(path).name} was not overwritten")
    return save_checkpoint(path, CHECKPOINT_KIND, {
        "model": model_state,
        "optimizer": optimizer.state_dict(),
        "counters": dict(counters),
        "scores": dict(scores),
        "config": to_jsonable(config),
        "seeds": {"seed": config.run.seed, "segment": counters.get("segments")},
        "rng": {"torch": torch.get_rng_state()},
    })


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A trainer checkpoint with its config checked (clear :class:`CheckpointError` otherwise)."""
    record = load_checkpoint(path, CHECKPOINT_KIND)
    missing = {"model", "optimizer", "counters", "config", "scores"} - set(record)
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}: not a complete training checkpoint")
    try:
        record["config"] = TrainConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds an unreadable config: {error}") from None
    return record


def load_resume_checkpoint(run_dir: Path) -> dict[str, Any]:
    """``latest.pt`` of a run directory, for resuming; if it is unreadable, the error says which other
    checkpoint of the run is intact (and how to resume from it)."""
    layout = RunDir(run_dir)
    latest = layout.checkpoint("latest")
    if not latest.is_file():
        raise CheckpointError(f"cannot resume: {run_dir} has no {RunDir.CHECKPOINTS}/latest.pt"
                              + _intact_alternative(layout, latest))
    try:
        return load_training_checkpoint(latest)
    except CheckpointError as error:
        raise CheckpointError(f"{error}{_intact_alternative(layout, latest)}") from None


def _intact_alternative(layout: RunDir, latest: Path) -> str:
    for name in ("final", "best"):
        candidate = layout.checkpoint(name)
        if not candidate.is_file():
            continue
        try:
            record = load_training_checkpoint(candidate)
        except CheckpointError:
            continue
        return (f"; {candidate} is intact ({record['counters']['frames']:,} frames): "
                f"`cp {candidate} {latest}` to resume from it")
    return ""


def check_checkpoint_belongs_to_run(run_dir: Path, checkpoint_config: TrainConfig) -> None:
    """Refuse a checkpoint whose settings are not those the run directory records in its config.json
    (e.g. an STM run's latest.pt copied into an LSTM run): resuming it would turn the run into another one."""
    layout = RunDir(run_dir)
    if not layout.config.is_file():
        return  # nothing to compare with; the checkpoint's config is rewritten into config.json
    try:
        recorded = read_json(layout.config)["config"]
        TrainConfig.from_dict(recorded)
    except (KeyError, TypeError, ValueError, CheckpointError) as error:
        raise CheckpointError(f"{layout.config} is not a training config ({error}); cannot check that "
                              f"{layout.checkpoint('latest')} belongs to this run") from None
    ignore = {("run", name) for name in (*RESUMABLE_RUN_FLAGS, "run_dir")}
    differences = differing_settings([recorded, to_jsonable(checkpoint_config)], ignore=ignore)
    if differences:
        listed = "; ".join(f"{flag} {values[0]} in config.json, {values[1]} in the checkpoint"
                           for flag, values in differences.items())
        raise CheckpointError(f"{layout.checkpoint('latest')} does not belong to the run in {run_dir} ({listed}); "
                              "restore the run's own checkpoint or start a new run elsewhere")


def load_agent_from_checkpoint(path: Path) -> tuple[ActorCritic, TrainConfig, dict[str, Any]]:
    """The agent saved in a trainer checkpoint, ready for evaluation, with its config and the record."""
    record = load_training_checkpoint(path)
    config: TrainConfig = record["config"]
    model = build_agent(config.agent, NUM_ACTIONS)
    try:
        model.load_state_dict(record["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not match a {config.agent.agent!r} agent with the "
                              f"{config.agent.encoder!r} encoder ({str(error).splitlines()[0]})") from None
    bad = non_finite_tensors(record["model"])
    if bad:
        raise CheckpointError(f"{path}: the weights hold NaN/inf ({bad[0]}...); use another checkpoint")
    return model, config, record


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: such values are written as null."""
    return value if math.isfinite(value) else None
