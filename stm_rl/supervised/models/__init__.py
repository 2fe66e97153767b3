"""Sequence models for the supervised tasks: ``[B, T, ...]`` inputs -> ``[B, T, output_size]`` logits.

A model is a task's input encoder (:mod:`.encoders`) followed by a sequence *core* from the registry
``MODELS``: ``stm`` (the paper's) and the paper's baselines ``lstm``, ``attn-lstm``, ``ntm`` (Graves et al.
2014), ``dnc`` (Graves et al. 2016), ``rmc`` (Santoro et al. 2018) and ``tpr`` (Schlag & Schmidhuber 2018).
A core module defines ``DESCRIPTION``; ``Options``, a frozen dataclass of its settings with a docstring per
field (the ``--model-option`` names); its sizes per preset (``PRESETS``, an ``Options`` per preset name, or a
function ``preset_options(task_name, preset)`` where they depend on the task); and ``CORE``, the class (or the
function) whose ``CORE(input_size, output_size, **fields of Options)`` is a module mapping ``[B, T, I]`` to
``[B, T, O]``, optionally with a ``diagnostics()`` method (scalars logged during training). Adding a model is
one module and one line below.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Mapping, Optional

from torch import Tensor, nn

from stm_rl.config_cli import replace_typed
from stm_rl.run_dir import StmRlError
from stm_rl.supervised.models import attention_lstm, dnc, lstm, ntm, rmc, stm, tpr
from stm_rl.supervised.models.encoders import make_encoder
from stm_rl.supervised.tasks.base import Task

MODELS: dict[str, ModuleType] = {
    "stm": stm, "lstm": lstm, "attn-lstm": attention_lstm, "ntm": ntm, "dnc": dnc, "rmc": rmc, "tpr": tpr,
}


class SequenceModel(nn.Module):
    """Input encoder + sequence core."""

    def __init__(self, encoder: nn.Module, core: nn.Module) -> None:
        super().__init__()
        self.encoder, self.core = encoder, core

    def forward(self, inputs: Tensor, answer_steps: Optional[Tensor] = None) -> Tensor:
        """Outputs ``[B, T, O]``. ``answer_steps [T]`` (bool, optional): the steps any sample is scored at; a core
        that can skip its output elsewhere (``takes_answer_steps``, the STM) returns zeros there, the others
        compute every step."""
        encoded = self.encoder(inputs)
        if answer_steps is not None and getattr(self.core, "takes_answer_steps", False):
            return self.core(encoded, answer_steps=answer_steps)
        return self.core(encoded)

    def diagnostics(self) -> dict[str, float]:
        """Scalars the core reports about itself (the STM's learned alphas and gate biases), logged by training
        with the other metrics; ``{}`` for cores that report nothing."""
        report = getattr(self.core, "diagnostics", None)
        return report() if report is not None else {}


def model_module(name: str) -> ModuleType:
    """The registered module of model ``name`` (a one-line error listing the models otherwise)."""
    if name not in MODELS:
        raise StmRlError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def model_options(name: str, task_name: str, preset: str) -> Any:
    """The preset ``Options`` of model ``name`` for a task (sizes, gates, ...), before command-line overrides."""
    module = model_module(name)
    if hasattr(module, "preset_options"):  # sizes that depend on the task (the STM's)
        return module.preset_options(task_name, preset)
    return module.PRESETS[preset]


def with_model_options(name: str, options: Any, changes: Mapping[str, Any]) -> Any:
    """``options`` of model ``name`` with ``changes`` (``--model-option`` values or a saved config's JSON);
    unknown names and wrong types are one-line errors listing the model's options."""
    try:
        return replace_typed(options, changes, f"model {name}")
    except ValueError as error:
        raise StmRlError(str(error)) from None


def options_from_json(name: str, data: Mapping[str, Any]) -> Any:
    """The ``Options`` of model ``name`` saved as JSON (config.json, checkpoints; lists become tuples)."""
    module = model_module(name)
    defaults = {f.name: None for f in dataclasses.fields(module.Options)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = [key for key in defaults if key not in data]
    if missing:
        raise StmRlError(f"the saved options of model {name} lack {', '.join(missing)}")
    return with_model_options(name, module.Options(**{key: data[key] for key in defaults}), data)


def build_model(name: str, task: Task, options: Any) -> SequenceModel:
    """The model ``name`` for ``task`` with the resolved ``options`` (its ``Options``)."""
    module = model_module(name)
    if not isinstance(options, module.Options):
        raise StmRlError(f"model {name} takes {module.__name__}.Options, got {type(options).__name__}")
    try:
        core = module.CORE(task.input_size, task.output_size, **dataclasses.asdict(options))
    except (TypeError, ValueError) as error:
        raise StmRlError(f"model {name}: {error}") from None
    return SequenceModel(make_encoder(task.input_spec), core)


__all__ = ["MODELS", "SequenceModel", "build_model", "model_module", "model_options", "options_from_json",
           "with_model_options"]
