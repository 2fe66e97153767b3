"""TPR-RNN baseline (Schlag & Schmidhuber 2018, "Learning to Reason with Third-Order Tensor Products",
NeurIPS), the bAbI model the SAM paper compares with.

Each input step (a sentence vector on bAbI) goes through the *input module*: MLPs give two entity vectors
``e1, e2`` (size ``entity_size``) and three relation vectors ``r1, r2, r3`` (size ``relation_size``). The
*update module* keeps a third-order tensor ``F`` (``[entity, relation, entity]``) and, with
``w1 = F . e1 . r1``, ``w2 = F . e1 . r2``, ``w3 = F . e2 . r3`` (contractions over the first two modes),
applies (section 3.2)

    dF = (e1 x r1 x (e2 - w1)) + (e1 x r2 x (w1 - w2)) + (e2 x r3 x (e1 - w3)),
    F_t = (F_{t-1} + dF) / max(1, ||F_{t-1} + dF||),

i.e. it replaces the values bound to the pairs ``(e1, r1)``, ``(e1, r2)``, ``(e2, r3)``. The *inference
module* (section 3.3) answers from the same step's vectors: ``i1 = LN(F . e1 . r1)``, ``i2 = LN(F . i1 . r2)``,
``i3 = LN(F . i2 . r3)`` and the output is ``W_o (i1 + i2 + i3)``. In the paper a question is only read and
never written; here every step does both (the model does not know which steps are questions), which the
bAbI sequence (story sentences, then the question, answer read right after) tolerates.

Sizes: the paper's bAbI setting (entity 90, relation 20) in the ``paper`` preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from stm_rl.supervised.models.recurrent import RecurrentCore

DESCRIPTION = "TPR-RNN baseline (Schlag & Schmidhuber 2018): third-order tensor-product memory of entities/relations"


@dataclass(frozen=True)
class Options:
    """``--model-option`` settings of the TPR-RNN."""

    entity_size: int
    """Size of the entity vectors e1, e2 (paper bAbI: 90)."""
    relation_size: int
    """Size of the relation vectors r1, r2, r3 (paper bAbI: 20)."""
    hidden_size: int
    """Hidden units of the input module's MLPs."""


PRESETS: dict[str, Options] = {
    "smoke": Options(entity_size=6, relation_size=4, hidden_size=16),
    "small": Options(entity_size=32, relation_size=16, hidden_size=64),
    "paper": Options(entity_size=90, relation_size=20, hidden_size=90),
}


def bind(f: Tensor, entity: Tensor, relation: Tensor) -> Tensor:
    """``F . e . r``: contract ``F [B, E, R, E]`` with ``e [B, E]`` and ``r [B, R]`` -> ``[B, E]``."""
    pair = (entity.unsqueeze(2) * relation.unsqueeze(1)).flatten(1)  # [B, E*R]
    return (pair.unsqueeze(1) @ f.flatten(1, 2)).squeeze(1)


def outer3(entity: Tensor, relation: Tensor, value: Tensor) -> Tensor:
    """``e x r x v`` -> ``[B, E, R, E]``."""
    return (entity.unsqueeze(2) * relation.unsqueeze(1)).unsqueeze(-1) * value.view(value.shape[0], 1, 1, -1)


def tanh_mlp(input_size: int, hidden_size: int, output_size: int) -> nn.Module:
    """The input module's MLP: ``tanh(W2 tanh(W1 x + b1) + b2)``."""
    return nn.Sequential(nn.Linear(input_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, output_size), nn.Tanh())


def infer(unbind: Callable[[Tensor, Tensor], Tensor], entity: Tensor, relations: Sequence[Tensor],
          norms: Sequence[nn.Module]) -> Tensor:
    """The inference module (section 3.3): ``i1 = LN(unbind(e1, r1))``, ``i_{k+1} = LN(unbind(i_k, r_{k+1}))``;
    returns ``i1 + i2 + i3`` (one hop per relation). ``unbind(e, r)`` is ``F . e . r`` for the memory at hand."""
    total, hop = None, entity
    for relation, norm in zip(relations, norms):
        hop = norm(unbind(hop, relation))
        total = hop if total is None else total + hop
    return total


def tpr_update(f: Tensor, e1: Tensor, e2: Tensor, r1: Tensor, r2: Tensor, r3: Tensor) -> Tensor:
    """The update module: ``F_{t-1} -> F_t`` (dF above, then the norm bound)."""
    w1, w2, w3 = bind(f, e1, r1), bind(f, e1, r2), bind(f, e2, r3)
    updated = f + outer3(e1, r1, e2 - w1) + outer3(e1, r2, w1 - w2) + outer3(e2, r3, e1 - w3)
    norm = updated.flatten(1).norm(dim=-1).clamp_min(1.0)
    return updated / norm.view(-1, 1, 1, 1)


class TPRRNN(RecurrentCore):
    def __init__(self, input_size: int, output_size: int, entity_size: int, relation_size: int,
                 hidden_size: int) -> None:
        super().__init__()
        self.entity_size, self.relation_size = entity_size, relation_size

        self.entities = tanh_mlp(input_size, hidden_size, 2 * entity_size)
        self.relations = tanh_mlp(input_size, hidden_size, 3 * relation_size)
        self.norms = nn.ModuleList(nn.LayerNorm(entity_size) for _ in range(3))
        self.readout = nn.Linear(entity_size, output_size)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        e, r = self.entity_size, self.relation_size
        return torch.zeros(batch_size, e, r, e, device=device, dtype=dtype)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        e1, e2 = self.entities(x).chunk(2, dim=-1)
        r1, r2, r3 = self.relations(x).chunk(3, dim=-1)
        f = tpr_update(state, e1, e2, r1, r2, r3)
        return self.readout(infer(lambda e, r: bind(f, e, r), e1, (r1, r2, r3), self.norms)), f


CORE = TPRRNN
"""The core: ``TPRRNN(input_size, output_size, **fields of Options)``."""
