"""The paper's model: the STM sequence module of ``stm_rl.memory`` with its read-out.

Two read-outs (``Options.readout``): ``head``, the distilled relational memory (eq. 14) through the output MLP
at every step (the authors' vector tasks and associative retrieval); ``unbind``, the paper's bAbI model (section
3.4), where the relational memory before each step is unbound with vectors derived from that step's input, TPR
style (:mod:`.unbinding_readout`): the answer read at the question is the story's memory unbound with the
question, and the question is never written before it is read.

``TASK_SETTINGS`` is the per-task table of ``../shared/spec/STM.md`` (slots N, item size d, n_r, gates,
alphas: ``None`` = learned from 0, a number = fixed; bAbI's read-out); the ``paper`` preset uses it as it is,
``small`` and ``smoke`` keep the task's gates, alphas and read-out but shrink the sizes to fit 2 CPU cores.
Both cores report the cell's learned alphas and gate biases (:func:`cell_diagnostics`), which training logs.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from stm_rl.memory import STM, STMCell
from stm_rl.memory.stm import InputProjection
from stm_rl.supervised.models.unbinding_readout import UnbindingReadout

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
    readout: Literal["head", "unbind"] = "head"
    """head: o (eq. 14) through the output MLP at every step; unbind: the paper's bAbI read-out, the relational
    memory before the step unbound with vectors derived from the step's input (TPR style, section 3.4)."""
    question_hidden_size: int = 80
    """Hidden units of the two MLPs that derive the unbinding vectors from the question (unbind read-out only;
    authors' bAbI: 80)."""


LEARNED = (None, None, None)
DEFAULT = Options(num_slots=8, d=96, rel_size=96, gated=True, alphas=LEARNED)
TASK_SETTINGS: dict[str, Options] = {
    "copy": DEFAULT,
    "priority-sort": DEFAULT,
    "rar": Options(num_slots=16, d=72, rel_size=72, gated=True, alphas=(0.0, 0.0, None)),
    "nth-farthest": Options(num_slots=8, d=128, rel_size=96, gated=False, alphas=LEARNED),
    "associative-retrieval": Options(num_slots=2, d=96, rel_size=96, gated=True, alphas=LEARNED),
    "babi": Options(num_slots=20, d=90, rel_size=96, gated=True, alphas=(1.0, None, 0.0), readout="unbind"),
}
"""The paper's per-task settings (STM.md; bAbI: the authors' ``qamodel.py``, N = 20 roles, d = 90 entities);
tasks not listed use :data:`DEFAULT`."""
SIZES_BY_PRESET: dict[str, dict[str, int]] = {
    "smoke": {"num_slots": 2, "d": 8, "rel_size": 8, "attn_size": 16, "mlp_size": 16, "question_hidden_size": 16},
    "small": {"num_slots": 4, "d": 32, "rel_size": 32, "attn_size": 64, "mlp_size": 128, "question_hidden_size": 64},
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


def cell_diagnostics(cell: STMCell) -> dict[str, float]:
    """The cell's learned scalars: ``stm/alpha1..3`` (those not fixed) and, with gates, ``stm/input_bias`` and
    ``stm/forget_bias`` (Appendix D)."""
    names = [f"alpha{i}" for i in (1, 2, 3) if i not in cell.fixed_alphas]
    names += ["input_bias", "forget_bias"] if cell.gated else []
    return {f"stm/{name}": float(getattr(cell, name).detach()) for name in names}


class STMSequenceModel(nn.Module):
    """The ``head`` read-out: ``stm_rl.memory.STM`` with its output head, one output per step (or only at the
    answer steps: the same outputs there, without the read-out's products elsewhere)."""

    takes_answer_steps = True

    def __init__(self, input_size: int, output_size: int, **cell_options) -> None:
        super().__init__()
        self.stm = STM(input_size, output_size, **cell_options)

    def forward(self, x: Tensor, answer_steps: Optional[Tensor] = None) -> Tensor:
        return self.stm(x, output_steps=answer_steps)[0]

    def diagnostics(self) -> dict[str, float]:
        return cell_diagnostics(self.stm.cell)


class STMQuestionAnswering(nn.Module):
    """The ``unbind`` read-out (the paper's bAbI model): output t is the relational memory after steps < t
    unbound with the vectors of input t (:class:`~.unbinding_readout.UnbindingReadout`); then input t is written.

    Causal by construction; on a bAbI sample (story sentences, then the question) the output at the question is
    the story's final relational memory unbound with the question, as in the authors' ``qamodel.py``.
    """

    def __init__(self, input_size: int, output_size: int, question_hidden_size: int, **cell_options) -> None:
        super().__init__()
        self.cell = STMCell(input_size, None, **cell_options)
        self.answer = UnbindingReadout(input_size, output_size, self.cell.d, self.cell.num_slots,
                                       question_hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        per_step = [[None] * x.shape[1] if p is None else p.unbind(1) for p in self.cell.project_input(x)]
        state = self.cell.initial_state(x.shape[0])
        outputs = []
        for t in range(x.shape[1]):
            outputs.append(self.answer(x[:, t], state.relational))
            if t + 1 < x.shape[1]:  # the last input is read, never written
                state = self.cell.update_memory_projected(InputProjection(*(p[t] for p in per_step)), state)
        return torch.stack(outputs, dim=1)

    def diagnostics(self) -> dict[str, float]:
        return cell_diagnostics(self.cell)


def build_core(input_size: int, output_size: int, readout: str = "head", question_hidden_size: int = 80,
               **cell_options) -> nn.Module:
    """The STM core of an ``Options``' fields: :class:`STMSequenceModel` or :class:`STMQuestionAnswering`."""
    if "alphas" in cell_options:
        cell_options["alphas"] = tuple(cell_options["alphas"])
    if readout == "head":
        return STMSequenceModel(input_size, output_size, **cell_options)
    if readout == "unbind":
        return STMQuestionAnswering(input_size, output_size, question_hidden_size, **cell_options)
    raise ValueError(f"readout must be head or unbind, got {readout!r}")


CORE = build_core
"""The core: ``build_core(input_size, output_size, **fields of Options)``."""
