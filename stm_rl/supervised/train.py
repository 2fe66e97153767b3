"""The supervised training loop: sample a batch, step the optimizer, validate now and then, keep the best.

Bookkeeping (run directory, checkpoints, logs, progress display, summary) sits in small helpers so that
:func:`train` reads top to bottom. The run directory is a :class:`stm_rl.run_dir.RunDir`, the same layout and
run lock as ``stm-rl train``::

    config.json                   the resolved SupervisedConfig, versions, argv
    evaluations.jsonl             one line per evaluation: iteration, split, elapsed_s, metrics
    metrics.jsonl, tb/            scalars train/loss, train/<metric>, train/lr, the model's own diagnostics (the
                                  STM's learned alphas and gate biases, ``stm/*``), valid/<metric>, test/<metric>
                                  by iteration (stm_rl.logger.MetricLogger, the RL side's logger)
    checkpoints/latest.pt, best.pt   model, optimizer, iteration, config, RNG state, best metric
    summary.json                  how the last session ended (a RunStatus), best and final metrics, test metrics
    .lock                         held by the process training the run

A run ends :attr:`~stm_rl.conventions.RunStatus.COMPLETED` (its iterations or its time limit spent; the test
metrics of the best weights are in the summary), ``INTERRUPTED`` (Ctrl-C / SIGTERM: the latest checkpoint is
saved, :class:`TrainingInterrupted` is raised) or ``FAILED`` (a non-finite loss: nothing is saved over the last
good checkpoint, :class:`TrainingFailed` is raised); summary.json records which in every case.
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

from stm_rl import fastpath
from stm_rl.conventions import RunStatus, StopRequest
from stm_rl.logger import MetricLogger
from stm_rl.progress import ProgressDisplay
from stm_rl.run_dir import (
    Checkpoint, CheckpointError, JsonlWriter, RunDir, RunFailed, StmRlError, check_can_write, drop_records_after,
    load_checkpoint, read_json, save_checkpoint, to_jsonable, write_config, write_json_atomic,
)
from stm_rl.supervised.config import (OptimizerConfig, SupervisedConfig, check_resumable, with_default_run_dir,
                                      with_overrides)
from stm_rl.supervised.models import SequenceModel, build_model
from stm_rl.supervised.tasks import Batch, Task, make_task
from stm_rl.supervised.tasks.base import split_rng

CHECKPOINT_KIND = "supervised"
TRAIN_LOG_EVERY = 10  # iterations between two train/* points of the metrics log


class TrainingInterrupted(Exception):
    """Ctrl-C during training; the latest checkpoint has been saved at ``path``."""

    def __init__(self, path: Path, iteration: int) -> None:
        super().__init__(f"interrupted at iteration {iteration}; latest checkpoint saved to {path}")
        self.path, self.iteration = path, iteration


class TrainingFailed(RunFailed):
    """The run failed while training (a non-finite loss); its summary.json says so, its checkpoints are the
    last good ones."""


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights."""

    iteration: int = 0
    best_metric: Optional[float] = None
    best_iteration: int = 0
    elapsed_s: float = 0.0
    lr_decayed: bool = False
    """Whether the one decay of ``decay_below_valid_loss`` has happened."""


def make_optimizer(model: nn.Module, settings: OptimizerConfig) -> torch.optim.Optimizer:
    if settings.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=settings.lr, alpha=settings.rmsprop_alpha,
                                   momentum=settings.momentum)
    return torch.optim.Adam(model.parameters(), lr=settings.lr, betas=tuple(settings.betas))


def learning_rate(settings: OptimizerConfig, iteration: int, decayed: bool) -> float:
    """The learning rate of the iteration after ``iteration`` (0-based count of those done): ``lr``, times
    ``warmup_factor`` during the first ``warmup_iterations``, times ``decay_factor`` once decayed."""
    rate = settings.lr * (settings.warmup_factor if iteration < settings.warmup_iterations else 1.0)
    return rate * (settings.decay_factor if decayed else 1.0)


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate


def clip_gradients(model: nn.Module, settings: OptimizerConfig) -> None:
    if settings.clip_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), settings.clip_value)
    if settings.clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batches: list[Batch], device: str,
             stop: Optional[StopRequest] = None) -> dict[str, float]:
    """The task's metrics aggregated over ``batches`` (totals / counts), plus ``loss``; with ``stop``, a stop
    request raises ``KeyboardInterrupt`` between two batches."""
    was_training = model.training
    model.eval()
    totals: dict[str, list[float]] = {}
    loss_sum, samples = 0.0, 0
    for batch in batches:
        if stop is not None:
            stop.raise_if_requested()
        batch = batch.to(device)
        outputs = model(batch.inputs, answer_steps=batch.mask.any(0))
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
    torch.manual_seed(config.run.seed)
    model = build_model(config.model, task, config.model_options).to(config.run.device)
    return task, model


def train(config: SupervisedConfig, resume_from: Optional[dict[str, Any]] = None,
          progress: Optional[bool] = None) -> dict[str, Any]:
    """Train, validating every ``eval_every`` iterations; returns the summary (also written to summary.json):
    status, iterations, best validation and test metrics.

    ``resume_from`` is a loaded checkpoint of the same run (:func:`resume`). ``progress`` overrides
    ``config.run.progress``. Everything that can be refused (bad options, missing data, a busy or already used
    run directory) is refused before the run directory is created or touched.
    """
    config = with_default_run_dir(config)
    # the CPU fast path (stm_rl/fastpath); a bad STM_RL_FUSED_KERNELS is refused here, before anything starts
    fastpath.enable(num_threads=config.run.threads or torch.get_num_threads())
    if config.run.device.startswith("cuda") and not torch.cuda.is_available():
        raise StmRlError("--device cuda given but CUDA is not available")
    layout = RunDir(config.run.run_dir)
    check_can_write(layout.path, "--run-dir", directory=True)
    layout.refuse_if_busy()
    if resume_from is None and layout.checkpoint(Checkpoint.LATEST).exists():
        raise StmRlError(f"{layout.path} already holds a run; continue it with --resume {layout.path} or pick "
                         "another --run-dir")
    task, model = build(config)
    with layout.lock():
        layout.remove_stale_temp_files()
        return _train(config, layout, task, model, resume_from,
                      config.run.progress if progress is None else progress)


def _train(config: SupervisedConfig, layout: RunDir, task: Task, model: SequenceModel,
           resume_from: Optional[dict[str, Any]], progress: bool) -> dict[str, Any]:
    optimizer = make_optimizer(model, config.optimization)
    rng = split_rng(config.run.seed, "sampling")
    state = TrainState()
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        rng.bit_generator.state = resume_from["rng"]["numpy"]
        torch.set_rng_state(resume_from["rng"]["torch"])
        state = TrainState(**resume_from["train_state"])
        # what a killed process logged after the checkpoint goes, and so does the test of a shorter run or one cut
        # off before its summary: a completed run's log ends with exactly one test
        kept = drop_records_after(layout.evaluations, "iteration", state.iteration,
                                  also_drop=lambda logged: logged["split"] == "test")
    else:
        kept = []
        layout.set_aside(layout.evaluations)  # the log of an attempt that died before its first checkpoint
    write_config(layout.path, config, task_notes=getattr(task, "notes", []),
                 compute=fastpath.report(torch.get_num_threads()))

    training = config.training
    train_pool = task.dataset("train", training.train_size, config.run.seed) if training.train_size > 0 else None
    valid = task.eval_batches("valid", training.valid_size, config.run.seed, training.eval_batch_size)
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
    best_weights = copy.deepcopy(model.state_dict())
    if resume_from is not None and layout.checkpoint(Checkpoint.BEST).exists():
        best_weights = load_checkpoint(layout.checkpoint(Checkpoint.BEST), CHECKPOINT_KIND)["model"]
    last_valid: dict[str, float] = {}
    for logged in kept:  # a resumed run starts from the validation its checkpoint's iteration ended on
        if logged["split"] == "valid":
            last_valid = {k: v for k, v in logged.items() if k not in ("iteration", "split", "elapsed_s")}

    def checkpoint(name: str) -> Path:
        return save_checkpoint(layout.checkpoint(name), CHECKPOINT_KIND, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": to_jsonable(config),
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "train_state": dataclasses.asdict(state),
        })

    def summary(status: RunStatus, message: str = "", test: Optional[dict[str, float]] = None) -> dict[str, Any]:
        record = {"status": status, "message": message, "run_dir": str(layout.path), "task": config.task,
                  "model": config.model, "preset": config.preset, "iterations": state.iteration,
                  "elapsed_s": state.elapsed_s, "main_metric": task.main_metric, "best_valid": state.best_metric,
                  "best_iteration": state.best_iteration, "final_valid": last_valid or None, "test": test}
        write_json_atomic(layout.summary, record)
        return record

    log = JsonlWriter(layout.evaluations)
    metrics = MetricLogger.in_run_dir(layout.path, resume_step=state.iteration if resume_from is not None else None)
    started = time.monotonic() - state.elapsed_s
    session_start = time.monotonic()
    display = ProgressDisplay(training.iterations, state.iteration, "iterations", "it/s",
                              f"{config.task}/{config.model}", live=progress, interval=config.run.progress_interval)
    status = ""  # the latest training loss and metric, then the best validation so far

    def record(split: str, values: dict[str, float]) -> None:
        log.write({"iteration": state.iteration, "split": split, "elapsed_s": round(state.elapsed_s, 2), **values})
        metrics.log(state.iteration, {f"{split}/{name}": value for name, value in values.items()})
        metrics.flush()

    def validate() -> None:
        values = evaluate(model, task, valid, config.run.device, stop)
        record("valid", values)
        last_valid.update(values)
        metric = values[task.main_metric]
        threshold = config.optimization.decay_below_valid_loss
        if threshold is not None and not state.lr_decayed and values["loss"] < threshold:
            state.lr_decayed = True
            display.write(f"iteration {state.iteration}: validation loss {values['loss']:.4g} < {threshold}: "
                          f"learning rate x {config.optimization.decay_factor} from now on")
        if state.best_metric is None or better(metric, state.best_metric):
            state.best_metric, state.best_iteration = metric, state.iteration
            best_weights.update(copy.deepcopy(model.state_dict()))
            checkpoint(Checkpoint.BEST)
        display.write(f"iteration {state.iteration}: valid {task.main_metric} {metric:.4g} "
                      f"(best {state.best_metric:.4g} at {state.best_iteration})")

    def close() -> None:
        display.close()
        metrics.close()
        log.close()

    # a stop signal is honoured between iterations and between evaluation batches, never inside the logging,
    # TensorBoard or checkpoint code (see StopRequest); KeyboardInterrupt is how the loop leaves
    stop = StopRequest("stopping after the current iteration and saving the latest checkpoint "
                       "(Ctrl-C again to abort)...")
    with stop.installed():
        model.train()
        try:
            while state.iteration < training.iterations:
                stop.raise_if_requested()
                if train_pool is not None:
                    batch = train_pool.select(rng.integers(0, train_pool.size, size=training.batch_size))
                else:
                    batch = task.sample(training.batch_size, rng)
                batch = batch.to(config.run.device)
                outputs = model(batch.inputs, answer_steps=batch.mask.any(0))
                loss = task.loss(outputs, batch)
                if not math.isfinite(loss.item()):  # before the step: the weights and the checkpoints stay good
                    message = (f"the loss became {loss.item()} at iteration {state.iteration + 1}; lower --lr "
                               f"(the checkpoints are those of iteration {state.iteration} or before)")
                    close()
                    summary(RunStatus.FAILED, message)
                    raise TrainingFailed(message)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_gradients(model, config.optimization)
                set_learning_rate(optimizer, learning_rate(config.optimization, state.iteration, state.lr_decayed))
                optimizer.step()
                state.iteration += 1
                state.elapsed_s = time.monotonic() - started

                if state.iteration % TRAIN_LOG_EVERY == 0 or state.iteration == 1:
                    with torch.no_grad():
                        totals = task.metrics(outputs.detach(), batch)
                    values = task.summarize({k: t / c if c else float("nan") for k, (t, c) in totals.items()})
                    scalars = {"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"],
                               **model.diagnostics()}
                    status = f"loss {loss.item():.4g}"
                    if task.main_metric in values:
                        scalars[f"train/{task.main_metric}"] = values[task.main_metric]
                        status += f" | {task.main_metric} {values[task.main_metric]:.3g}"
                    metrics.log(state.iteration, scalars)
                best = "" if state.best_metric is None else f" | best valid {state.best_metric:.4g}"
                display.update(state.iteration, state.elapsed_s, status + best)
                out_of_time = (config.run.time_limit_minutes > 0
                               and time.monotonic() - session_start >= 60 * config.run.time_limit_minutes)
                if state.iteration % training.eval_every == 0 or state.iteration == training.iterations or out_of_time:
                    validate()
                    checkpoint(Checkpoint.LATEST)
                if out_of_time:
                    display.write(f"time limit of {config.run.time_limit_minutes} minutes reached at iteration "
                                  f"{state.iteration}")
                    break
        except KeyboardInterrupt:
            state.elapsed_s = time.monotonic() - started
            path = checkpoint(Checkpoint.LATEST)
            close()
            summary(RunStatus.INTERRUPTED, f"stopped at iteration {state.iteration}; continue with --resume")
            raise TrainingInterrupted(path, state.iteration) from None
        display.close(state.iteration)

        model.load_state_dict(best_weights)
        try:
            test = evaluate(model, task, task.eval_batches("test", training.test_size, config.run.seed,
                                                           training.eval_batch_size), config.run.device, stop)
        except KeyboardInterrupt:  # the training is complete and checkpointed: --resume runs only the test
            close()
            summary(RunStatus.INTERRUPTED, f"stopped during the final test after iteration {state.iteration}; "
                                           "--resume runs the test")
            raise TrainingInterrupted(layout.checkpoint(Checkpoint.LATEST), state.iteration) from None
        record("test", test)
        metrics.close()
        log.close()
        return summary(RunStatus.COMPLETED, test=test)


def load_run(run_dir: str) -> tuple[dict[str, Any], SupervisedConfig]:
    """The latest checkpoint of the run in ``run_dir`` and the config it holds."""
    if not Path(run_dir).is_dir():
        raise StmRlError(f"cannot resume: no run directory at {run_dir}")
    record = load_checkpoint(RunDir(run_dir).checkpoint(Checkpoint.LATEST), CHECKPOINT_KIND)
    return record, config_of(record, RunDir(run_dir).checkpoint(Checkpoint.LATEST))


def config_of(record: dict[str, Any], path: Path) -> SupervisedConfig:
    """The config saved in a checkpoint record (:class:`CheckpointError` if it is unusable)."""
    try:
        return SupervisedConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has no usable config ({error})") from None


def resume_with(record: dict[str, Any], saved: SupervisedConfig, wanted: SupervisedConfig,
                progress: Optional[bool] = None) -> dict[str, Any]:
    """Continue a run from its checkpoint ``record`` (config ``saved``) as ``wanted``: refused if ``wanted``
    changes more than :data:`~stm_rl.supervised.config.RESUMABLE_SETTINGS`, or leaves nothing to do. A run that
    trained its iterations but was stopped before its final test has that test left to do, and only that."""
    run_dir = wanted.run.run_dir
    check_resumable(saved, wanted, run_dir)
    done = record["train_state"]["iteration"]
    if done >= wanted.training.iterations and _tested(RunDir(run_dir)):
        raise StmRlError(f"the run in {run_dir} already did {done} iterations; pass a larger --iterations to "
                         "continue it")
    return train(wanted, resume_from=record, progress=progress)


def _tested(layout: RunDir) -> bool:
    """Whether the run's summary records a completed run with its test (a run stopped during its final test, or
    killed before writing its summary, has none)."""
    if not layout.summary.exists():
        return False
    summary = read_json(layout.summary)
    return summary.get("status", RunStatus.COMPLETED) == RunStatus.COMPLETED and summary.get("test") is not None


def resume(run_dir: str, progress: Optional[bool] = None, **changes: Any) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its latest checkpoint with ``changes`` by field name (e.g.
    ``iterations=4000, time_limit_minutes=5``; only :data:`~stm_rl.supervised.config.RESUMABLE_SETTINGS`)."""
    record, saved = load_run(run_dir)
    wanted = with_overrides(saved, run_dir=str(run_dir), **changes)
    return resume_with(record, saved, wanted, progress)


def evaluate_checkpoint(path: str, split: str = "test", task_overrides: Optional[dict[str, Any]] = None,
                        device: Optional[str] = None) -> dict[str, float]:
    """Metrics of a saved model on its task's fixed ``split`` set (``--eval-only``)."""
    record = load_checkpoint(Path(path), CHECKPOINT_KIND)
    config = with_overrides(config_of(record, Path(path)), task_options=task_overrides, device=device)
    task, model = build(config)
    model.load_state_dict(record["model"])
    size = config.training.test_size if split == "test" else config.training.valid_size
    return evaluate(model, task, task.eval_batches(split, size, config.run.seed, config.training.eval_batch_size),
                    config.run.device)


def describe_metrics(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())
