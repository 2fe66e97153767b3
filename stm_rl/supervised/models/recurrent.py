"""Shared pieces of the step-by-step baselines (NTM, DNC, RMC, TPR-RNN).

A :class:`RecurrentCore` defines ``initial_state(batch, device, dtype)`` and ``step(x_t, state) -> (y_t,
state)``; ``forward`` runs it over a ``[B, T, I]`` sequence. Tests call ``step`` directly to check one step
of a model against a slow reference written from its paper's equations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ControllerMemoryOptions:
    """Sizes of a slot memory driven by an LSTM controller (the NTM's and the DNC's ``--model-option`` names)."""

    hidden_size: int
    """Units of the LSTM controller."""
    num_slots: int
    """Memory slots N."""
    slot_size: int
    """Size W of a memory slot."""
    read_heads: int = 1
    """Read heads R."""


class RecurrentCore(nn.Module):
    """``[B, T, I] -> [B, T, O]`` by applying :meth:`step` at every time step."""

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        state = self.initial_state(x.shape[0], x.device, x.dtype)
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, dim=1)


def oneplus(x: Tensor) -> Tensor:
    """``1 + log(1 + e^x)``: strengths and sharpenings in ``[1, inf)`` (DNC Methods; NTM eq. 9's gamma >= 1)."""
    return 1 + F.softplus(x)


def content_weights(memory: Tensor, keys: Tensor, strengths: Tensor, eps: float = 1e-6) -> Tensor:
    """Content addressing (NTM eqs. 5-6, DNC's C(M, k, beta)): ``softmax_i(beta * cos(k, M[i]))``.

    ``memory [B, N, W]``, ``keys [B, H, W]``, ``strengths [B, H]`` -> weights ``[B, H, N]`` (each row a
    distribution over the N slots).
    """
    similarity = F.normalize(keys, dim=-1, eps=eps) @ F.normalize(memory, dim=-1, eps=eps).transpose(1, 2)
    return torch.softmax(strengths.unsqueeze(-1) * similarity, dim=-1)


def split_sizes(vector: Tensor, sizes: dict[str, int]) -> dict[str, Tensor]:
    """Cut the last dimension of ``vector`` into named pieces of the given sizes (an interface vector)."""
    return dict(zip(sizes, torch.split(vector, list(sizes.values()), dim=-1)))
