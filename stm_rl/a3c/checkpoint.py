"""Checkpoints of A3C training runs: what they hold, how they are saved and loaded, and the resume rule.

A checkpoint (``checkpoints/{latest,best,final}.pt``, written atomically by :func:`stm_rl.run_dir.save_checkpoint`)
holds the shared model and optimizer states, the run's counters and recent scores, its whole config, and the
action count of its environment (probed when the run started; the agent's actor head is rebuilt from it).
Weights that are not finite are never saved: a run whose shared model a NaN reached keeps its last good
checkpoints. Resuming continues from ``latest.pt`` with the config it holds; only the settings of the resume rule
(:mod:`stm_rl.resume`, :data:`~stm_rl.a3c.config.RL_RESUME`) may change, and the checkpoint must belong to the
run directory it is in (its config.json).

This module imports no trainer and no tensorboard, so ``evaluate`` and ``sweep`` can load checkpoints cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from agents import ActorCritic, FrameNormalizer, build_agent
from agents.precision import playing_precision
from stm_rl.a3c.config import RL_RESUME, TrainConfig
from stm_rl.run_dir import Checkpoint, CheckpointError, RunDir, load_checkpoint, read_json, save_checkpoint, to_jsonable

CHECKPOINT_KIND = "a3c"
LEGACY_NUM_ACTIONS = 6
"""The action count of checkpoints written before it was saved: those runs were all Pong (minimal action set)."""
RESUMABLE_RUN_FLAGS = tuple(name for name in RL_RESUME.fields_of("run") if name != "run_dir")
"""RunConfig fields that ``stm-rl train --resume`` takes as flags (the directory is the one resumed)."""
NORMALIZER = "normalizer"
"""Name of the agent's observation normaliser in its state dict (``normalizer.mean``...)."""


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


def saved_num_actions(record: Mapping[str, Any]) -> int:
    """The action count a checkpoint's agent was built with (:data:`LEGACY_NUM_ACTIONS` for older checkpoints)."""
    return int(record.get("num_actions", LEGACY_NUM_ACTIONS))


def save_training_checkpoint(path: Path, model: ActorCritic, optimizer: torch.optim.Optimizer,
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
        "num_actions": model.num_actions,
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
    if record["config"].agent.normalize_obs:
        # Written when the observation statistics lived in the environments (never saved): they start afresh.
        fresh = {f"{NORMALIZER}.{name}": value for name, value in FrameNormalizer().state_dict().items()}
        record["model"] = {**fresh, **record["model"]}
    return record


def load_resume_checkpoint(run_dir: Path) -> dict[str, Any]:
    """``latest.pt`` of a run directory, for resuming; if it is unreadable, the error says which other
    checkpoint of the run is intact (and how to resume from it)."""
    layout = RunDir(run_dir)
    latest = layout.checkpoint(Checkpoint.LATEST)
    if not latest.is_file():
        raise CheckpointError(f"cannot resume: {run_dir} has no {RunDir.CHECKPOINTS}/latest.pt"
                              + _intact_alternative(layout, latest))
    try:
        return load_training_checkpoint(latest)
    except CheckpointError as error:
        raise CheckpointError(f"{error}{_intact_alternative(layout, latest)}") from None


def _intact_alternative(layout: RunDir, latest: Path) -> str:
    for name in (Checkpoint.FINAL, Checkpoint.BEST):
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
        recorded = to_jsonable(TrainConfig.from_dict(read_json(layout.config)["config"]))  # in today's form
    except (KeyError, TypeError, ValueError, CheckpointError) as error:
        raise CheckpointError(f"{layout.config} is not a training config ({error}); cannot check that "
                              f"{layout.checkpoint(Checkpoint.LATEST)} belongs to this run") from None
    differences = RL_RESUME.differences(recorded, to_jsonable(checkpoint_config))
    if differences:
        listed = "; ".join(f"{flag} {values[0]} in config.json, {values[1]} in the checkpoint"
                           for flag, values in differences.items())
        raise CheckpointError(f"{layout.checkpoint(Checkpoint.LATEST)} does not belong to the run in {run_dir} ({listed}); "
                              "restore the run's own checkpoint or start a new run elsewhere")


def print_notice(line: str) -> None:
    """A one-line notice to the user, on stderr."""
    print(f"note: {line}", file=sys.stderr, flush=True)


def load_agent_from_checkpoint(path: Path, notify: Callable[[str], None] = print_notice
                               ) -> tuple[ActorCritic, TrainConfig, dict[str, Any]]:
    """The agent saved in a trainer checkpoint, ready for evaluation, with the config it runs with and the record.

    An agent trained in bf16 plays in fp32 where bf16 would be emulated (:func:`agents.precision.playing_precision`);
    ``notify`` gets the one-line notice (the returned config then says fp32; ``record["config"]`` keeps bf16).
    """
    record = load_training_checkpoint(path)
    config: TrainConfig = record["config"]
    precision, notice = playing_precision(config.agent.precision)
    if notice:
        notify(notice)
        config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, precision=precision))
    model = build_agent(config.agent, saved_num_actions(record))
    try:
        model.load_state_dict(record["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not match a {config.agent.agent!r} agent with the "
                              f"{config.agent.encoder!r} encoder and {model.num_actions} actions "
                              f"({str(error).splitlines()[0]})") from None
    bad = non_finite_tensors(record["model"])
    if bad:
        raise CheckpointError(f"{path}: the weights hold NaN/inf ({bad[0]}...); use another checkpoint")
    return model, config, record


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: such values are written as null."""
    return value if math.isfinite(value) else None
