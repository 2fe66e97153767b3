"""Differentiable Neural Computer baseline (Graves et al. 2016, "Hybrid computing using a neural network
with dynamic external memory", Nature 538; equations of its Methods section).

An LSTM controller sees the input and the previous read vectors and emits the interface vector: R read
keys ``k^r`` and strengths ``beta^r``, a write key ``k^w`` and strength ``beta^w``, an erase vector ``e``,
a write vector ``v``, R free gates ``f``, an allocation gate ``g^a``, a write gate ``g^w`` and R read
modes ``pi`` (softmax over backward, content, forward). Per step:

* retention ``psi = prod_i (1 - f^i w^{r,i}_{t-1})``; usage ``u = (u_{t-1} + w^w_{t-1} - u_{t-1} w^w_{t-1}) psi``;
* allocation: with ``phi`` the slots sorted by increasing usage,
  ``a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]``;
* write weights ``w^w = g^w (g^a a + (1 - g^a) C(M_{t-1}, k^w, beta^w))``;
* memory ``M = M_{t-1} * (E - w^w e^T) + w^w v^T``;
* temporal links ``L[i, j] = (1 - w^w[i] - w^w[j]) L_{t-1}[i, j] + w^w[i] p_{t-1}[j]``, ``L[i, i] = 0``;
  precedence ``p = (1 - sum_i w^w[i]) p_{t-1} + w^w``;
* forward ``f^i = L w^{r,i}_{t-1}``, backward ``b^i = L^T w^{r,i}_{t-1}``; read weights
  ``w^{r,i} = pi^i_1 b^i + pi^i_2 C(M, k^{r,i}, beta^{r,i}) + pi^i_3 f^i``; reads ``r^i = M^T w^{r,i}``.

The output is a linear map of the controller's output and the new read vectors (the paper's
``y = W_y [h; r]``). Gradients flow through the sort's values as through any gather (the paper does not
differentiate the ordering either).

Sizes: the ``paper`` preset uses the DNC paper's bAbI setting (256 x 64 memory, 4 read heads, 256-unit
LSTM controller); the SAM paper reports DNC on the geometry and graph tasks without listing its sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stm_rl.supervised.models.recurrent import (ControllerMemoryOptions, RecurrentCore, content_weights, oneplus,
                                                split_sizes)

DESCRIPTION = "DNC baseline (Graves et al. 2016): content + temporal-link addressing, usage-based allocation"


Options = ControllerMemoryOptions
"""``--model-option`` settings of the DNC."""
PRESETS: dict[str, Options] = {
    "smoke": Options(hidden_size=16, num_slots=6, slot_size=8, read_heads=2),
    "small": Options(hidden_size=128, num_slots=16, slot_size=32, read_heads=2),
    "paper": Options(hidden_size=256, num_slots=256, slot_size=64, read_heads=4),
}


@dataclass
class DNCState:
    """Controller (h, c); memory ``[B, N, W]``; usage ``[B, N]``; links ``[B, N, N]``; precedence ``[B, N]``;
    write weights ``[B, N]``; read weights ``[B, R, N]``; read vectors ``[B, R, W]``."""

    h: Tensor
    c: Tensor
    memory: Tensor
    usage: Tensor
    links: Tensor
    precedence: Tensor
    write_weights: Tensor
    read_weights: Tensor
    reads: Tensor


def allocation_weights(usage: Tensor) -> Tensor:
    """``a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]`` with ``phi`` sorting usage upwards: ``[B, N]``."""
    sorted_usage, order = torch.sort(usage, dim=-1)
    before = torch.cumprod(torch.cat([torch.ones_like(sorted_usage[:, :1]), sorted_usage[:, :-1]], dim=-1), dim=-1)
    return torch.zeros_like(usage).scatter(-1, order, (1 - sorted_usage) * before)


def update_links(links: Tensor, precedence: Tensor, write: Tensor) -> Tensor:
    """``L[i, j] = (1 - w[i] - w[j]) L[i, j] + w[i] p[j]`` with a zero diagonal: ``[B, N, N]``."""
    kept = (1 - write.unsqueeze(2) - write.unsqueeze(1)) * links + write.unsqueeze(2) * precedence.unsqueeze(1)
    return kept * (1 - torch.eye(links.shape[-1], device=links.device, dtype=links.dtype))


class DNC(RecurrentCore):
    def __init__(self, input_size: int, output_size: int, hidden_size: int, num_slots: int, slot_size: int,
                 read_heads: int) -> None:
        super().__init__()
        self.num_slots, self.slot_size, self.read_heads = num_slots, slot_size, read_heads
        self.controller = nn.LSTMCell(input_size + read_heads * slot_size, hidden_size)
        self.interface_sizes = {
            "read_keys": read_heads * slot_size, "read_strengths": read_heads, "write_key": slot_size,
            "write_strength": 1, "erase": slot_size, "write_vector": slot_size, "free_gates": read_heads,
            "allocation_gate": 1, "write_gate": 1, "read_modes": 3 * read_heads,
        }
        self.interface = nn.Linear(hidden_size, sum(self.interface_sizes.values()))
        self.readout = nn.Linear(hidden_size + read_heads * slot_size, output_size)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> DNCState:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch_size, *shape, device=device, dtype=dtype)

        n, w, r, h = self.num_slots, self.slot_size, self.read_heads, self.controller.hidden_size
        return DNCState(zeros(h), zeros(h), zeros(n, w), zeros(n), zeros(n, n), zeros(n), zeros(n),
                        zeros(r, n), zeros(r, w))

    def step(self, x: Tensor, state: DNCState) -> tuple[Tensor, DNCState]:
        batch, r = x.shape[0], self.read_heads
        h, c = self.controller(torch.cat([x, state.reads.flatten(1)], dim=-1), (state.h, state.c))
        io = split_sizes(self.interface(h), self.interface_sizes)
        free = torch.sigmoid(io["free_gates"]).unsqueeze(-1)  # [B, R, 1]
        retention = torch.prod(1 - free * state.read_weights, dim=1)
        usage = (state.usage + state.write_weights - state.usage * state.write_weights) * retention
        write_content = content_weights(state.memory, io["write_key"].unsqueeze(1),
                                        oneplus(io["write_strength"]))[:, 0]
        allocation_gate, write_gate = torch.sigmoid(io["allocation_gate"]), torch.sigmoid(io["write_gate"])
        write = write_gate * (allocation_gate * allocation_weights(usage) + (1 - allocation_gate) * write_content)
        erase = torch.sigmoid(io["erase"])
        memory = (state.memory * (1 - write.unsqueeze(2) * erase.unsqueeze(1))
                  + write.unsqueeze(2) * io["write_vector"].unsqueeze(1))
        links = update_links(state.links, state.precedence, write)
        precedence = (1 - write.sum(-1, keepdim=True)) * state.precedence + write
        forward = state.read_weights @ links.transpose(1, 2)  # f^i = L w^{r,i}
        backward = state.read_weights @ links  # b^i = L^T w^{r,i}
        read_content = content_weights(memory, io["read_keys"].view(batch, r, -1), oneplus(io["read_strengths"]))
        modes = torch.softmax(io["read_modes"].view(batch, r, 3), dim=-1)
        read_weights = modes[..., 0:1] * backward + modes[..., 1:2] * read_content + modes[..., 2:3] * forward
        reads = read_weights @ memory
        output = self.readout(torch.cat([h, reads.flatten(1)], dim=-1))
        return output, DNCState(h, c, memory, usage, links, precedence, write, read_weights, reads)


CORE = DNC
"""The core: ``DNC(input_size, output_size, **fields of Options)``."""
