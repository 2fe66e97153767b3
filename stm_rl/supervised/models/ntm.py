"""Neural Turing Machine baseline (Graves, Wayne & Danihelka 2014, "Neural Turing Machines", arXiv:1410.5401).

An LSTM controller reads the input and the previous read vectors; from its output, each head emits a key
``k``, a key strength ``beta``, an interpolation gate ``g``, a shift distribution ``s`` over
``{-1, 0, +1}`` and a sharpening ``gamma``; the write head also an erase vector ``e`` and an add vector
``a``. Addressing, per head (section 3.3):

* eq. 5-6: content weights ``w^c_i = softmax_i(beta * cos(k, M_i))``;
* eq. 7: interpolation ``w^g = g w^c + (1 - g) w_{t-1}``;
* eq. 8: circular convolution ``w~_i = sum_j w^g_j s_{(i - j) mod N}``;
* eq. 9: sharpening ``w_i = w~_i^gamma / sum_j w~_j^gamma``.

Memory (section 3.1-3.2): read ``r = sum_i w_i M_i`` (eq. 2), erase ``M~ = M * (1 - w e^T)`` (eq. 3), add
``M = M~ + w a^T`` (eq. 4). The write happens before the read within a step; the output is a linear map
of the controller's output and the new read vectors.

Sizes: the NTM paper's copy setting (one read and one write head, 128 x 20 memory, 100-unit LSTM
controller) in the ``paper`` preset; the SAM paper reports NTM on copy, priority sort and RAR without
listing its sizes (see docs/supervised.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stm_rl.supervised.models.recurrent import (ControllerMemoryOptions, RecurrentCore, content_weights, oneplus,
                                                split_sizes)

DESCRIPTION = "NTM baseline (Graves et al. 2014): LSTM controller, content + location addressing, 1 read/1 write head"


Options = ControllerMemoryOptions
"""``--model-option`` settings of the NTM."""
PRESETS: dict[str, Options] = {
    "smoke": Options(hidden_size=16, num_slots=8, slot_size=8, read_heads=1),
    "small": Options(hidden_size=100, num_slots=32, slot_size=20, read_heads=1),
    "paper": Options(hidden_size=100, num_slots=128, slot_size=20, read_heads=1),
}
SHIFTS = 3  # shifts -1, 0, +1


@dataclass
class NTMState:
    """Controller (h, c), memory ``[B, N, W]``, head weights ``[B, R+1, N]`` (R read heads, then the write
    head) and read vectors ``[B, R, W]``."""

    h: Tensor
    c: Tensor
    memory: Tensor
    weights: Tensor
    reads: Tensor


def shift_weights(weights: Tensor, shift: Tensor) -> Tensor:
    """Eq. 8, circular convolution with a shift distribution over (-1, 0, +1): ``[B, H, N], [B, H, 3]``."""
    rolled = torch.stack([torch.roll(weights, offset, dims=-1) for offset in (-1, 0, 1)], dim=-1)
    return (rolled * shift.unsqueeze(-2)).sum(-1)


def address(memory: Tensor, previous: Tensor, head: dict[str, Tensor]) -> Tensor:
    """Eqs. 5-9 for every head at once: ``[B, N, W], [B, H, N]`` and the heads' parameters -> ``[B, H, N]``."""
    content = content_weights(memory, head["key"], oneplus(head["strength"]).squeeze(-1))
    gate = torch.sigmoid(head["gate"])
    interpolated = gate * content + (1 - gate) * previous
    shifted = shift_weights(interpolated, torch.softmax(head["shift"], dim=-1))
    sharpened = shifted.clamp_min(1e-12) ** oneplus(head["sharpen"])
    return sharpened / sharpened.sum(-1, keepdim=True)


class NTM(RecurrentCore):
    def __init__(self, input_size: int, output_size: int, hidden_size: int, num_slots: int, slot_size: int,
                 read_heads: int = 1) -> None:
        super().__init__()
        self.num_slots, self.slot_size, self.read_heads = num_slots, slot_size, read_heads
        self.controller = nn.LSTMCell(input_size + read_heads * slot_size, hidden_size)
        self.head_sizes = {"key": slot_size, "strength": 1, "gate": 1, "shift": SHIFTS, "sharpen": 1}
        self.heads = nn.Linear(hidden_size, (read_heads + 1) * sum(self.head_sizes.values()))
        self.write_vectors = nn.Linear(hidden_size, 2 * slot_size)  # erase, add
        self.readout = nn.Linear(hidden_size + read_heads * slot_size, output_size)
        self.initial_memory = nn.Parameter(torch.full((num_slots, slot_size), 1e-6))

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> NTMState:
        zeros = torch.zeros(batch_size, self.controller.hidden_size, device=device, dtype=dtype)
        weights = torch.zeros(batch_size, self.read_heads + 1, self.num_slots, device=device, dtype=dtype)
        weights[..., 0] = 1.0  # every head starts on slot 0
        return NTMState(zeros, zeros.clone(), self.initial_memory.expand(batch_size, -1, -1),
                        weights, torch.zeros(batch_size, self.read_heads, self.slot_size, device=device, dtype=dtype))

    def step(self, x: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        h, c = self.controller(torch.cat([x, state.reads.flatten(1)], dim=-1), (state.h, state.c))
        heads = self.heads(h).view(x.shape[0], self.read_heads + 1, -1)
        weights = address(state.memory, state.weights, split_sizes(heads, self.head_sizes))
        erase, add = self.write_vectors(h).chunk(2, dim=-1)
        write = weights[:, -1:].transpose(1, 2)  # [B, N, 1]
        memory = state.memory * (1 - write * torch.sigmoid(erase).unsqueeze(1)) + write * add.unsqueeze(1)
        reads = weights[:, :-1] @ memory  # eq. 2, [B, R, W]
        output = self.readout(torch.cat([h, reads.flatten(1)], dim=-1))
        return output, NTMState(h, c, memory, weights, reads)


CORE = NTM
"""The core: ``NTM(input_size, output_size, **fields of Options)``."""
