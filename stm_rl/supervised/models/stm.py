"""The paper's model: the STM sequence module of ``stm_rl.memory`` with its output head.

``TASK_SETTINGS`` is the per-task table of ``../shared/spec/STM.md`` (slots N, item size d, n_r, gates,
alphas: ``None`` = learned from 0, a number = fixed); the ``paper`` preset uses it as it is, ``small``
and ``smoke`` keep the task's gates and alphas but shrink the sizes to fit 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from stm_rl.memory import STM, STMCell

DESCRIPTION = "STM (Le et al. 2020): item memory + SAM relational memory, per-task presets from STM.md"


_CELL_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(STMCell).parameters.items()}
"""The defaults of ``STMCell``'s keyword arguments: the one source of the defaults below."""


@dataclass(frozen=True)
class Options:
    """``--model-option`` settings of the STM: the keyword arguments of ``stm_rl.memory.STMCell``, with its defaults."""

    num_slots: int = _CELL_DEFAULTS["num_slots"]
    """N, relational memory slots, n_q = n_kv (paper: 8)."""
    d: int = _CELL_DEFAULTS["d"]
    """Side of the item memory M_i (paper: 96)."""
    rel_size: int = _CELL_DEFAULTS["rel_size"]
    """n_r, the width each slot is distilled to by G2 (paper: 96)."""
    attn_size: int = _CELL_DEFAULTS["attn_size"]
    """a, the width of the distilled output o produced by G3 (eq. 14)."""
    mlp_size: int = _CELL_DEFAULTS["mlp_size"]
    """m, the hidden width of the output head."""
    gated: bool = _CELL_DEFAULTS["gated"]
    """Input/forget gates of eq. 10; False is the paper's "w/o gates" ablation (eq. 9)."""
    alphas: tuple[Optional[float], Optional[float], Optional[float]] = _CELL_DEFAULTS["alphas"]
    """(alpha1, alpha2, alpha3): None = learned from 0, a number = fixed (a fixed 0 switches that path off)."""
    out_layernorm: bool = _CELL_DEFAULTS["out_layernorm"]
    """Layer norm on o before the head (the authors' RL agent has it)."""


LEARNED = (None, None, None)
DEFAULT = Options(num_slots=8, d=96, rel_size=96, gated=True, alphas=LEARNED)
TASK_SETTINGS: dict[str, Options] = {
    "copy": DEFAULT,
    "priority-sort": DEFAULT,
    "rar": Options(num_slots=16, d=72, rel_size=72, gated=True, alphas=(0.0, 0.0, None)),
    "nth-farthest": Options(num_slots=8, d=128, rel_size=96, gated=False, alphas=LEARNED),
    "associative-retrieval": Options(num_slots=2, d=96, rel_size=96, gated=True, alphas=LEARNED),
    "babi": Options(num_slots=20, d=90, rel_size=96, gated=True, alphas=(1.0, None, 0.0)),
}
"""The paper's per-task settings (STM.md); tasks not listed use :data:`DEFAULT`."""
SIZES_BY_PRESET: dict[str, dict[str, int]] = {
    "smoke": {"num_slots": 2, "d": 8, "rel_size": 8, "attn_size": 16, "mlp_size": 16},
    "small": {"num_slots": 4, "d": 32, "rel_size": 32, "attn_size": 64, "mlp_size": 128},
    "paper": {"attn_size": 64, "mlp_size": 128},
}


def task_family(task_name: str) -> str:
    """``"associative-retrieval-30"`` -> ``"associative-retrieval"``, ``"rar-as-run"`` -> ``"rar"``."""
    for family in TASK_SETTINGS:
        if task_name == family or task_name.startswith(family + "-"):
            return family
    return "default"


def preset_options(task_name: str, preset: str) -> Options:
    """The task's settings with the preset's sizes (the STM is the one model whose presets depend on the task)."""
    options = dataclasses.replace(TASK_SETTINGS.get(task_family(task_name), DEFAULT), **SIZES_BY_PRESET[preset])
    if preset == "small" and task_family(task_name) == "associative-retrieval":
        options = dataclasses.replace(options, num_slots=2, d=48)  # the paper's own small AR setting (STM.md)
    return options


class STMSequenceModel(nn.Module):
    def __init__(self, input_size: int, output_size: int, **cell_options) -> None:
        super().__init__()
        if "alphas" in cell_options:
            cell_options["alphas"] = tuple(cell_options["alphas"])
        self.stm = STM(input_size, output_size, **cell_options)

    def forward(self, x: Tensor) -> Tensor:
        return self.stm(x)[0]


CORE = STMSequenceModel
"""The core: ``STMSequenceModel(input_size, output_size, **fields of Options)``."""
