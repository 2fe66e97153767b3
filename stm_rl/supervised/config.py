"""The configuration of one supervised run, and the presets that fill it (data, not code).

``resolve_config`` merges, in order: the preset's scale (``PRESETS``), the task's options for that preset
(``TASK_OPTIONS``), the model's preset options (``models.model_options``), the paper's optimizer for the
task in the ``paper`` preset (``PAPER_OPTIMIZERS``), then the command line's overrides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from stm_rl.run_dir import StmRlError
from stm_rl.supervised.models import model_options
from stm_rl.supervised.tasks import TASKS


@dataclass
class OptimizerConfig:
    """Optimizer and gradient clipping."""

    name: str = "adam"
    """"adam" or "rmsprop"."""
    lr: float = 1e-3
    """Learning rate."""
    momentum: float = 0.0
    """RMSprop momentum (paper: 0.9 for copy/sort/RAR)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas (paper bAbI: (0.9, 0.99))."""
    clip_value: Optional[float] = None
    """Clip every gradient value to +-clip_value (paper copy/sort/RAR: 10)."""
    clip_norm: Optional[float] = None
    """Clip the global gradient norm (paper bAbI: 5)."""


@dataclass
class SupervisedConfig:
    """Everything one run needs; written to ``config.json`` and into every checkpoint."""

    task: str
    """Registered task name (``--list``)."""
    model: str
    """Registered model name: stm, lstm, attn-lstm, ntm, dnc, rmc, tpr."""
    preset: str = "small"
    """smoke (seconds, tests), small (minutes on 2 CPU cores), paper (paper sizes and settings)."""
    iterations: int = 2000
    """Training iterations (one batch each)."""
    batch_size: int = 32
    """Training batch size (paper: 128)."""
    eval_every: int = 200
    """Validate every this many iterations (and at the end)."""
    valid_size: int = 500
    """Samples in the fixed validation set (bAbI: <= 0 means the whole split)."""
    test_size: int = 1000
    """Samples in the fixed test set (bAbI: <= 0 means the whole split)."""
    eval_batch_size: int = 256
    """Batch size for evaluation."""
    train_size: int = 0
    """0: fresh samples every batch; > 0: a fixed training set of this size (associative retrieval paper: 100k)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer settings."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task class (sizes, lengths, bAbI data_dir...)."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the model core (hidden sizes, STM slots, gates, alphas...)."""
    seed: int = 0
    """Seeds the model's initialisation, the data sets and the training stream."""
    device: str = "cpu"
    """cpu or cuda."""
    run_dir: str = ""
    """Where config, logs, tensorboard events and checkpoints go."""
    time_limit_minutes: float = 0.0
    """Stop training (validate, save, test) after this much wall time; 0: no limit."""
    threads: int = 0
    """torch.set_num_threads for training and evaluation; 0: torch's default. Saved, so a resumed run keeps it."""


@dataclass(frozen=True)
class PresetScale:
    """The run-length part of a preset."""

    iterations: int
    batch_size: int
    eval_every: int
    valid_size: int
    test_size: int
    description: str


PRESETS: dict[str, PresetScale] = {
    "smoke": PresetScale(3, 4, 2, 8, 8, "seconds: tiny tasks and models, for tests"),
    "small": PresetScale(2000, 32, 200, 500, 1000, "minutes on 2 CPU cores: reduced task and model sizes, Adam 1e-3"),
    "paper": PresetScale(100_000, 128, 1000, 2000, 10_000, "the paper's task/model sizes and optimizers (GPU)"),
}

_SMOKE_GRAPH = {"min_nodes": 3, "max_nodes": 4}
_SMALL_BITS = {"bits": 8}
_PAPER_TEST_LABELS = {"test_labels": "position"}  # the authors' hull/TSP test sets label points by input position
TASK_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "copy": {"smoke": {"bits": 4, "max_length": 3}, "small": {"bits": 8, "max_length": 10}},
    "priority-sort": {"smoke": {"bits": 4, "num_items": 4, "num_outputs": 3},
                      "small": {"bits": 8, "num_items": 10, "num_outputs": 8}},
    "rar": {"smoke": {"bits": 4, "max_items": 3, "min_item_length": 2, "max_item_length": 2}, "small": _SMALL_BITS},
    "rar-as-run": {"smoke": {"bits": 4, "max_item_length": 3}, "small": _SMALL_BITS},
    "nth-farthest": {"smoke": {"num_vectors": 4, "dim": 4}},
    "associative-retrieval-30": {"smoke": {"num_pairs": 3, "embedding_size": 8}},
    "associative-retrieval-50": {"smoke": {"num_pairs": 4, "embedding_size": 8}},
    "convex-hull": {"smoke": {"min_points": 3, "max_points": 5, "test_points": 4, "n_max": 5},
                    "small": {"max_points": 10, "test_points": 5, "n_max": 10}, "paper": _PAPER_TEST_LABELS},
    "tsp-5": {"smoke": {"num_cities": 4, "n_max": 5}, "paper": _PAPER_TEST_LABELS},
    "tsp-10": {"smoke": {"num_cities": 5, "n_max": 6}, "paper": _PAPER_TEST_LABELS},
    "shortest-path": {"smoke": _SMOKE_GRAPH},
    "mst": {"smoke": _SMOKE_GRAPH},
    "babi": {"smoke": {"embedding_size": 8, "max_sentences": 10}},
}

_NTM_RMSPROP = OptimizerConfig("rmsprop", lr=1e-4, momentum=0.9, clip_value=10.0)
PAPER_OPTIMIZERS: dict[str, OptimizerConfig] = {
    "copy": _NTM_RMSPROP, "priority-sort": _NTM_RMSPROP, "rar": _NTM_RMSPROP, "rar-as-run": _NTM_RMSPROP,
    "nth-farthest": OptimizerConfig("adam", lr=1e-4),
    "babi": OptimizerConfig("adam", lr=6e-4, betas=(0.9, 0.99), clip_norm=5.0),
}
"""The spec's paper settings; tasks not listed (paper silent) use Adam 1e-3 with gradient norm 10."""
PAPER_DATA_SIZES: dict[str, dict[str, int]] = {
    "associative-retrieval-30": {"train_size": 100_000, "valid_size": 10_000, "test_size": 20_000},
    "associative-retrieval-50": {"train_size": 100_000, "valid_size": 10_000, "test_size": 20_000},
    "babi": {"valid_size": 0, "test_size": 0},
}
SMALL_OPTIMIZER = OptimizerConfig("adam", lr=1e-3, clip_norm=10.0)


def resolve_config(task: str, model: str, preset: str, **overrides: Any) -> SupervisedConfig:
    """The preset's configuration for ``task`` and ``model`` with ``overrides`` (``None`` values ignored;
    ``task_options`` / ``model_options`` / ``optimizer`` overrides are merged key by key)."""
    if task not in TASKS:
        raise StmRlError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if preset not in PRESETS:
        raise StmRlError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    scale = PRESETS[preset]
    config = SupervisedConfig(
        task=task, model=model, preset=preset, iterations=scale.iterations, batch_size=scale.batch_size,
        eval_every=scale.eval_every, valid_size=scale.valid_size, test_size=scale.test_size,
        optimizer=dataclasses.replace(PAPER_OPTIMIZERS.get(task, OptimizerConfig(clip_norm=10.0))
                                      if preset == "paper" else SMALL_OPTIMIZER),
        task_options=dict(TASK_OPTIONS.get(task, {}).get(preset, {})),
        model_options=model_options(model, task, preset),
    )
    if preset == "paper":
        config = dataclasses.replace(config, **PAPER_DATA_SIZES.get(task, {}))
    if task == "babi" and preset == "small":
        config = dataclasses.replace(config, valid_size=2000, test_size=0)
    for key in ("task_options", "model_options"):
        getattr(config, key).update(overrides.pop(key, None) or {})
    optimizer_overrides = {k: v for k, v in (overrides.pop("optimizer", None) or {}).items() if v is not None}
    config.optimizer = dataclasses.replace(config.optimizer, **optimizer_overrides)
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    validate_config(config)
    return config


def validate_config(config: SupervisedConfig) -> None:
    """One-line errors for settings that cannot run."""
    for name in ("iterations", "batch_size", "eval_every", "eval_batch_size"):
        if getattr(config, name) <= 0:
            raise StmRlError(f"--{name.replace('_', '-')} must be > 0, got {getattr(config, name)}")
    if config.optimizer.name not in ("adam", "rmsprop"):
        raise StmRlError(f"optimizer must be adam or rmsprop, got {config.optimizer.name!r}")
    if not math.isfinite(config.optimizer.lr) or config.optimizer.lr <= 0:
        raise StmRlError(f"--lr must be a finite number > 0, got {config.optimizer.lr}")
    if config.seed < 0:
        raise StmRlError(f"--seed must be >= 0, got {config.seed}")
    if config.threads < 0:
        raise StmRlError(f"--threads must be >= 1, got {config.threads}")
    if config.device not in ("cpu", "cuda") and not config.device.startswith("cuda:"):
        raise StmRlError(f"--device must be cpu or cuda, got {config.device!r}")
    if not math.isfinite(config.time_limit_minutes) or config.time_limit_minutes < 0:
        raise StmRlError(f"--time-limit-minutes must be >= 0, got {config.time_limit_minutes}")


def config_from_dict(data: dict[str, Any]) -> SupervisedConfig:
    """Rebuild a config saved with ``to_jsonable`` (checkpoints, config.json)."""
    data = dict(data)
    optimizer = dict(data.pop("optimizer"))
    optimizer["betas"] = tuple(optimizer["betas"])
    return SupervisedConfig(optimizer=OptimizerConfig(**optimizer), **data)
