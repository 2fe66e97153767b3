"""The supervised training loop: sample a batch, step the optimizer, validate now and then, keep the best.

Bookkeeping (run directory, checkpoints, logs, progress bar) sits in small helpers so that :func:`train`
reads top to bottom. Layout of a run directory (``stm_rl.run_dir``)::

    config.json                   the resolved SupervisedConfig, versions, argv
    evaluations.jsonl             one line per evaluation: iteration, split, elapsed_s, metrics
    tb/                           tensorboard scalars train/loss, train/<metric>, valid/<metric>, test/<metric>
    checkpoints/latest.pt, best.pt   model, optimizer, iteration, config, RNG state, best metric
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from tqdm import tqdm

from stm_rl.run_dir import (
    CheckpointError, JsonlWriter, StmRlError, check_can_write, load_checkpoint, save_checkpoint, to_jsonable, write_config,
)
from stm_rl.supervised.config import OptimizerConfig, SupervisedConfig, config_from_dict, validate_config
from stm_rl.supervised.models import SequenceModel, build_model
from stm_rl.supervised.tasks import Batch, Task, make_task
from stm_rl.supervised.tasks.base import split_rng

CHECKPOINT_KIND = "supervised"
TRAIN_LOG_EVERY = 10  # iterations between tensorboard train/* points


class TrainingInterrupted(Exception):
    """Ctrl-C during training; the latest checkpoint has been saved at ``path``."""

    def __init__(self, path: Path, iteration: int) -> None:
        super().__init__(f"interrupted at iteration {iteration}; latest checkpoint saved to {path}")
        self.path, self.iteration = path, iteration


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights."""

    iteration: int = 0
    best_metric: Optional[float] = None
    best_iteration: int = 0
    elapsed_s: float = 0.0


def default_run_dir(config: SupervisedConfig) -> str:
    return f"runs/supervised/{config.task}-{config.model}-{config.preset}-seed{config.seed}"


def make_optimizer(model: nn.Module, settings: OptimizerConfig) -> torch.optim.Optimizer:
    if settings.name == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    return torch.optim.Adam(model.parameters(), lr=settings.lr, betas=tuple(settings.betas))


def clip_gradients(model: nn.Module, settings: OptimizerConfig) -> None:
    if settings.clip_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), settings.clip_value)
    if settings.clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batches: list[Batch], device: str) -> dict[str, float]:
    """The task's metrics aggregated over ``batches`` (totals / counts), plus ``loss``."""
    was_training = model.training
    model.eval()
    totals: dict[str, list[float]] = {}
    loss_sum, samples = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        outputs = model(batch.inputs)
        loss_sum += float(task.loss(outputs, batch)) * batch.size
        samples += batch.size
        for name, (total, count) in task.metrics(outputs, batch).items():
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += total
            entry[1] += count
    model.train(was_training)
    values = {name: (total / count if count else float("nan")) for name, (total, count) in totals.items()}
    values["loss"] = loss_sum / max(samples, 1)
    return task.summarize(values)


def build(config: SupervisedConfig) -> tuple[Task, SequenceModel]:
    """The task and the (seeded) model of a config."""
    task = make_task(config.task, **config.task_options)
    torch.manual_seed(config.seed)
    model = build_model(config.model, task, config.model_options).to(config.device)
    return task, model


def train(config: SupervisedConfig, resume_from: Optional[dict[str, Any]] = None, progress: bool = True) -> dict[str, Any]:
    """Train, validating every ``eval_every`` iterations; returns the summary (best validation and test metrics).

    ``resume_from`` is a loaded checkpoint of the same run (``--resume``). Ctrl-C saves the latest checkpoint
    and raises :class:`TrainingInterrupted`.
    """
    validate_config(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise StmRlError("--device cuda given but CUDA is not available")
    run_dir = Path(config.run_dir or default_run_dir(config))
    config = dataclasses.replace(config, run_dir=str(run_dir))
    checkpoints = run_dir / "checkpoints"
    check_can_write(run_dir, "--run-dir", directory=True)
    if resume_from is None and (checkpoints / "latest.pt").exists():
        raise StmRlError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --run-dir")

    task, model = build(config)
    optimizer = make_optimizer(model, config.optimizer)
    rng = split_rng(config.seed, "sampling")
    state = TrainState()
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        rng.bit_generator.state = resume_from["rng"]["numpy"]
        torch.set_rng_state(resume_from["rng"]["torch"])
        state = TrainState(**resume_from["train_state"])
    write_config(run_dir, config, task_notes=getattr(task, "notes", []))

    train_pool = task.dataset("train", config.train_size, config.seed) if config.train_size > 0 else None
    valid = task.eval_batches("valid", config.valid_size, config.seed, config.eval_batch_size)
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
    best_weights = copy.deepcopy(model.state_dict())
    if resume_from is not None and (checkpoints / "best.pt").exists():
        best_weights = load_checkpoint(checkpoints / "best.pt", CHECKPOINT_KIND)["model"]

    def checkpoint(name: str) -> Path:
        return save_checkpoint(checkpoints / f"{name}.pt", CHECKPOINT_KIND, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": to_jsonable(config),
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "train_state": dataclasses.asdict(state),
        })

    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    log = JsonlWriter(run_dir / "evaluations.jsonl")
    writer = SummaryWriter(str(run_dir / "tb"))
    started = time.monotonic() - state.elapsed_s
    session_start = time.monotonic()
    bar = tqdm(total=config.iterations, initial=state.iteration, disable=not progress, dynamic_ncols=True,
               desc=f"{config.task}/{config.model}")

    def record(split: str, values: dict[str, float]) -> None:
        log.write({"iteration": state.iteration, "split": split, "elapsed_s": round(state.elapsed_s, 2), **values})
        for name, value in values.items():
            writer.add_scalar(f"{split}/{name}", value, state.iteration)
        writer.flush()

    def validate() -> None:
        values = evaluate(model, task, valid, config.device)
        record("valid", values)
        metric = values[task.main_metric]
        if state.best_metric is None or better(metric, state.best_metric):
            state.best_metric, state.best_iteration = metric, state.iteration
            best_weights.update(copy.deepcopy(model.state_dict()))
            checkpoint("best")
        bar.write(f"iteration {state.iteration}: valid {task.main_metric} {metric:.4g} "
                  f"(best {state.best_metric:.4g} at {state.best_iteration})")

    model.train()
    try:
        while state.iteration < config.iterations:
            if train_pool is not None:
                batch = train_pool.select(rng.integers(0, train_pool.size, size=config.batch_size))
            else:
                batch = task.sample(config.batch_size, rng)
            batch = batch.to(config.device)
            outputs = model(batch.inputs)
            loss = task.loss(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, config.optimizer)
            optimizer.step()
            state.iteration += 1
            state.elapsed_s = time.monotonic() - started
            if not math.isfinite(loss.item()):
                raise StmRlError(f"the loss became {float(loss)} at iteration {state.iteration}; lower --lr")

            if state.iteration % TRAIN_LOG_EVERY == 0 or state.iteration == 1:
                with torch.no_grad():
                    totals = task.metrics(outputs.detach(), batch)
                metric = task.summarize({k: t / c if c else float("nan") for k, (t, c) in totals.items()})
                writer.add_scalar("train/loss", loss.item(), state.iteration)
                if task.main_metric in metric:
                    writer.add_scalar(f"train/{task.main_metric}", metric[task.main_metric], state.iteration)
                    bar.set_postfix(loss=f"{loss.item():.4f}", **{task.main_metric: f"{metric[task.main_metric]:.3g}"})
            bar.update(1)
            out_of_time = (config.time_limit_minutes > 0
                           and time.monotonic() - session_start >= 60 * config.time_limit_minutes)
            if state.iteration % config.eval_every == 0 or state.iteration == config.iterations or out_of_time:
                validate()
                checkpoint("latest")
            if out_of_time:
                bar.write(f"time limit of {config.time_limit_minutes} minutes reached at iteration {state.iteration}")
                break
    except KeyboardInterrupt:
        state.elapsed_s = time.monotonic() - started
        path = checkpoint("latest")
        bar.close()
        writer.close()
        log.close()
        raise TrainingInterrupted(path, state.iteration) from None
    bar.close()

    model.load_state_dict(best_weights)
    test = evaluate(model, task, task.eval_batches("test", config.test_size, config.seed, config.eval_batch_size),
                    config.device)
    record("test", test)
    writer.close()
    log.close()
    return {"run_dir": str(run_dir), "iterations": state.iteration, "elapsed_s": state.elapsed_s,
            "best_iteration": state.best_iteration, "main_metric": task.main_metric,
            "best_valid": state.best_metric, "test": test}


RESUMABLE_CHANGES = ("iterations", "time_limit_minutes", "device", "eval_every", "threads")


def resume(run_dir: str, overrides: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its latest checkpoint. ``overrides`` may extend the iterations,
    the time limit, the device or the evaluation interval; any other difference is an error."""
    record = load_checkpoint(Path(run_dir) / "checkpoints" / "latest.pt", CHECKPOINT_KIND)
    config = config_from_dict(record["config"])
    changes = {}
    for key, value in overrides.items():
        if value is None:
            continue
        saved = getattr(config, key)
        if value != saved:
            if key not in RESUMABLE_CHANGES:
                raise StmRlError(f"--resume {run_dir}: the run has {key}={saved!r}, the command line says {value!r}")
            changes[key] = value
    config = dataclasses.replace(config, run_dir=str(run_dir), **changes)
    if record["train_state"]["iteration"] >= config.iterations:
        raise StmRlError(f"the run in {run_dir} already did {record['train_state']['iteration']} iterations; "
                         "pass a larger --iterations to continue it")
    return train(config, resume_from=record, progress=progress)


def evaluate_checkpoint(path: str, split: str = "test", task_overrides: Optional[dict[str, Any]] = None,
                        device: Optional[str] = None) -> dict[str, float]:
    """Metrics of a saved model on its task's fixed ``split`` set (``--eval-only``)."""
    record = load_checkpoint(Path(path), CHECKPOINT_KIND)
    try:
        config = config_from_dict(record["config"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path} has no usable config ({error})") from None
    config.task_options.update(task_overrides or {})
    if device:
        config = dataclasses.replace(config, device=device)
    task, model = build(config)
    model.load_state_dict(record["model"])
    size = config.test_size if split == "test" else config.valid_size
    return evaluate(model, task, task.eval_batches(split, size, config.seed, config.eval_batch_size), config.device)


def describe_metrics(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())
