"""Relational Memory Core baseline (Santoro et al. 2018, "Relational recurrent neural networks", NeurIPS).

The memory is ``N`` slots of size ``d = heads * head_size``. At each step (section 3 of the paper):

* multi-head dot-product attention of the memory over itself and the (projected) input,
  ``M~ = softmax(M W^q ([M; x] W^k)^T / sqrt(head_size)) [M; x] W^v`` per head (the paper's eqs. 1-2 with
  the input appended to the memory), with a residual connection and layer normalisation;
* a row-wise MLP with a residual connection and layer normalisation, giving the candidate ``M'``;
* LSTM-style gating per slot (section 3.3): input and forget gates
  ``i, f = sigma(W x + U tanh(M_{t-1}) + b)`` (forget bias +1), ``M_t = i * tanh(M') + f * M_{t-1}``.

The output at each step is a linear map of the flattened ``M_t``. The initial memory is the identity
(padded with zeros), as in the authors' release. Sizes: our choice in every preset (the ``paper`` preset:
8 slots, 8 heads of 16), not taken from the SAM or RMC papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stm_rl.supervised.models.recurrent import RecurrentCore

DESCRIPTION = "RMC baseline (Santoro et al. 2018): multi-head attention over memory slots + input, gated updates"


@dataclass(frozen=True)
class Options:
    """``--model-option`` settings of the RMC."""

    num_slots: int
    """Memory slots N."""
    heads: int
    """Attention heads; a slot has heads * head_size units."""
    head_size: int
    """Size of one head's queries, keys and values."""
    mlp_layers: int = 2
    """Layers of the row-wise MLP after the attention."""


PRESETS: dict[str, Options] = {
    "smoke": Options(num_slots=2, heads=2, head_size=4, mlp_layers=1),
    "small": Options(num_slots=4, heads=2, head_size=32, mlp_layers=2),
    "paper": Options(num_slots=8, heads=8, head_size=16, mlp_layers=2),
}


@dataclass
class RMCState:
    """Memory ``[B, N, d]`` and the last attention weights ``[B, heads, N, N + 1]`` (for tests)."""

    memory: Tensor
    attention: Tensor


class RelationalMemoryCore(RecurrentCore):
    def __init__(self, input_size: int, output_size: int, num_slots: int, heads: int, head_size: int,
                 mlp_layers: int = 2) -> None:
        super().__init__()
        self.num_slots, self.heads, self.head_size = num_slots, heads, head_size
        size = heads * head_size
        self.input_projection = nn.Linear(input_size, size)
        self.query, self.key, self.value = (nn.Linear(size, size, bias=False) for _ in range(3))
        self.attention_norm, self.mlp_norm = nn.LayerNorm(size), nn.LayerNorm(size)
        layers: list[nn.Module] = []
        for _ in range(mlp_layers):
            layers += [nn.Linear(size, size), nn.ReLU()]
        self.mlp = nn.Sequential(*layers[:-1]) if layers else nn.Identity()
        self.gate_input = nn.Linear(size, 2 * size)
        self.gate_memory = nn.Linear(size, 2 * size, bias=False)
        self.readout = nn.Linear(num_slots * size, output_size)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RMCState:
        size = self.heads * self.head_size
        memory = torch.eye(self.num_slots, size, device=device, dtype=dtype).expand(batch_size, -1, -1)
        attention = torch.zeros(batch_size, self.heads, self.num_slots, self.num_slots + 1, device=device, dtype=dtype)
        return RMCState(memory, attention)

    def attend(self, memory: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Multi-head attention of the slots over ``[M; x]``: the attended memory and the weights."""
        batch = memory.shape[0]
        both = torch.cat([memory, x.unsqueeze(1)], dim=1)  # [B, N+1, d]

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, t.shape[1], self.heads, self.head_size).transpose(1, 2)

        q, k, v = heads(self.query(memory)), heads(self.key(both)), heads(self.value(both))
        weights = torch.softmax(q @ k.transpose(-1, -2) / self.head_size ** 0.5, dim=-1)  # [B, H, N, N+1]
        attended = (weights @ v).transpose(1, 2).reshape(batch, self.num_slots, -1)
        return attended, weights

    def step(self, x: Tensor, state: RMCState) -> tuple[Tensor, RMCState]:
        x = self.input_projection(x)
        attended, weights = self.attend(state.memory, x)
        candidate = self.attention_norm(state.memory + attended)
        candidate = self.mlp_norm(candidate + self.mlp(candidate))
        gates = self.gate_input(x).unsqueeze(1) + self.gate_memory(torch.tanh(state.memory))
        input_gate, forget_gate = gates.chunk(2, dim=-1)
        memory = torch.sigmoid(input_gate) * torch.tanh(candidate) + torch.sigmoid(forget_gate + 1.0) * state.memory
        return self.readout(memory.flatten(1)), RMCState(memory, weights)


CORE = RelationalMemoryCore
"""The core: ``RelationalMemoryCore(input_size, output_size, **fields of Options)``."""
