"""Sequence models for the supervised tasks: ``[B, T, ...]`` inputs -> ``[B, T, output_size]`` logits.

A model is a task's input encoder (:mod:`.encoders`) followed by a sequence *core* from the registry
``MODELS``: ``stm`` (the paper's) and the paper's baselines ``lstm``, ``attn-lstm``, ``ntm`` (Graves et al.
2014), ``dnc`` (Graves et al. 2016), ``rmc`` (Santoro et al. 2018) and ``tpr`` (Schlag & Schmidhuber 2018).
A core module defines ``DESCRIPTION``, its sizes per preset (``PRESETS``, a dict per preset name, or a
function ``preset_options(task_name, preset)`` where they depend on the task) and ``CORE``, the class whose
``CORE(input_size, output_size, **options)`` maps ``[B, T, I]`` to ``[B, T, O]`` (its keyword arguments are
the ``--model-option`` names); adding a model is one module and one line below.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

from torch import Tensor, nn

from stm_rl.run_dir import StmRlError
from stm_rl.supervised.models import attention_lstm, dnc, lstm, ntm, rmc, stm, tpr
from stm_rl.supervised.models.encoders import make_encoder
from stm_rl.supervised.tasks import option_names, unknown_options
from stm_rl.supervised.tasks.base import Task

MODELS: dict[str, ModuleType] = {
    "stm": stm, "lstm": lstm, "attn-lstm": attention_lstm, "ntm": ntm, "dnc": dnc, "rmc": rmc, "tpr": tpr,
}


class SequenceModel(nn.Module):
    """Input encoder + sequence core."""

    def __init__(self, encoder: nn.Module, core: nn.Module) -> None:
        super().__init__()
        self.encoder, self.core = encoder, core

    def forward(self, inputs: Tensor) -> Tensor:
        return self.core(self.encoder(inputs))


def model_options(name: str, task_name: str, preset: str) -> dict[str, Any]:
    """The preset options of model ``name`` for a task (sizes, gates, ...), before command-line overrides."""
    if name not in MODELS:
        raise StmRlError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    module = MODELS[name]
    if hasattr(module, "preset_options"):  # sizes that depend on the task (the STM's)
        return module.preset_options(task_name, preset)
    return dict(module.PRESETS[preset])


def build_model(name: str, task: Task, options: Mapping[str, Any]) -> SequenceModel:
    """The model ``name`` for ``task`` with the resolved ``options``."""
    if name not in MODELS:
        raise StmRlError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    module = MODELS[name]
    constructor = getattr(module, "OPTIONS_FROM", module.CORE)
    unknown = unknown_options(constructor, options)
    if unknown:
        raise StmRlError(f"model {name} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(option_names(constructor))}")
    try:
        core = module.CORE(task.input_size, task.output_size, **options)
    except (TypeError, ValueError) as error:
        raise StmRlError(f"model {name}: {error}") from None
    return SequenceModel(make_encoder(task.input_spec), core)


__all__ = ["MODELS", "SequenceModel", "build_model", "model_options"]
