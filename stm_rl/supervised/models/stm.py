"""The paper's model: the STM sequence module of ``stm_rl.memory`` with its output head.

``TASK_SETTINGS`` is the per-task table of ``../shared/spec/STM.md`` (slots N, item size d, n_r, gates,
alphas: ``None`` = learned from 0, a number = fixed); the ``paper`` preset uses it as it is, ``small``
and ``smoke`` keep the task's gates and alphas but shrink the sizes to fit 2 CPU cores.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from stm_rl.memory import STM, STMCell

DESCRIPTION = "STM (Le et al. 2020): item memory + SAM relational memory, per-task presets from STM.md"

LEARNED = (None, None, None)
DEFAULT = {"num_slots": 8, "d": 96, "rel_size": 96, "gated": True, "alphas": LEARNED}
TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "copy": DEFAULT,
    "priority-sort": DEFAULT,
    "rar": {"num_slots": 16, "d": 72, "rel_size": 72, "gated": True, "alphas": (0.0, 0.0, None)},
    "nth-farthest": {"num_slots": 8, "d": 128, "rel_size": 96, "gated": False, "alphas": LEARNED},
    "associative-retrieval": {"num_slots": 2, "d": 96, "rel_size": 96, "gated": True, "alphas": LEARNED},
    "babi": {"num_slots": 20, "d": 90, "rel_size": 96, "gated": True, "alphas": (1.0, None, 0.0)},
}
SIZES_BY_PRESET: dict[str, dict[str, Any]] = {
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


def preset_options(task_name: str, preset: str) -> dict[str, Any]:
    options = dict(TASK_SETTINGS.get(task_family(task_name), DEFAULT))
    options.update(SIZES_BY_PRESET[preset])
    if preset == "small" and task_family(task_name) == "associative-retrieval":
        options.update(num_slots=2, d=48)  # the paper's own small AR setting (STM.md)
    return options


class STMSequenceModel(nn.Module):
    def __init__(self, input_size: int, output_size: int, **cell_options: Any) -> None:
        super().__init__()
        if "alphas" in cell_options:
            cell_options["alphas"] = tuple(cell_options["alphas"])
        self.stm = STM(input_size, output_size, **cell_options)

    def forward(self, x: Tensor) -> Tensor:
        return self.stm(x)[0]


CORE = STMSequenceModel
OPTIONS_FROM = STMCell
"""The model options are the keyword arguments of ``stm_rl.memory.STMCell`` (which ``STM`` takes)."""
"""The core: ``STMSequenceModel(input_size, output_size, **options)``."""
