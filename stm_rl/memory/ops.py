"""The STM's four fused steps as PyTorch operators, each defined here by its reference implementation.

Every step of the STM cell (:mod:`stm_rl.memory.stm`) is built from four operations on its memories, declared
as ``torch.library`` operators in the ``stm_rl`` namespace:

- ``stm_rl::gated_write``: the gated write into the item memory (eq. 10 with the gates of Appendix D);
- ``stm_rl::sam_scores``: SAM's scores ``tanh(q_n * k_j)`` (eq. 2 with F = tanh);
- ``stm_rl::relational_read``: the read of the relational memory, ``v_r`` (eq. 11);
- ``stm_rl::relational_update``: ``M_r = alpha1 M_r_prev + SAM(M')`` (eq. 12, the authors' alpha1).

Each operator's kernel for every device is its ``*_reference`` function below, registered as
``CompositeImplicitAutograd``: plain PyTorch operations, differentiated by autograd. That is the definition,
and it is what runs on CUDA, in float64 and wherever nothing else is registered. A faster kernel for one
device (the optional :mod:`stm_rl.fastpath` registers CPU ones) replaces it for that device only and is tested
against it: changing an equation means changing its reference here and, where one exists, its fast kernel.
Nothing in this package imports the fast path.

The relational read and update compute in the dtype of the memory, their one large input: under autocast, or
with small inputs of another dtype, those are cast to it (no copy of the memory is made) and each gradient
returns in its input's dtype.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from stm_rl.memory.attention import outer_product_scores

NAMESPACE = "stm_rl"
Activation = Callable[[Tensor], Tensor]

_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")  # the definitions; fast kernels are registered elsewhere


def gated_write_reference(item: Tensor, u: Tensor, weight: Tensor, offset: Tensor,
                          tanh: Activation = torch.tanh) -> Tensor:
    """Eq. 10 with the gates of Appendix D: ``M' = I (.) tanh(u (x) u) + F (.) M_i_prev``, where
    ``[I, F] = sigmoid(tanh(M_i_prev) W_gate^T + offset)`` (``offset`` holds the gates' input half and all their
    biases, the same for every row of the memory). ``tanh``: the activation (a fast path may pass an equal one)."""
    preactivation = nn.functional.linear(tanh(item), weight)  # [B, d, 2d]
    input_gate, forget_gate = torch.sigmoid(preactivation + offset.unsqueeze(1)).chunk(2, dim=-1)
    return torch.addcmul(input_gate * tanh(u.unsqueeze(2) * u.unsqueeze(1)), forget_gate, item)


def sam_scores_reference(queries: Tensor, keys: Tensor, tanh: Activation = torch.tanh) -> Tensor:
    """SAM's scores, key-major: ``[B, N(key), N(query), d]`` with entry ``[j, n, a] = tanh(k_j[a] q_n[a])``."""
    return outer_product_scores(keys, queries, tanh)


def relational_read_reference(memory: Tensor, slot_weights: Tensor, key: Tensor) -> Tensor:
    """Eq. 11's read ``v_r[f] = sum_n p_n sum_e w_e M_r[n, e, f]``: the slots mixed first, then read with w."""
    batch, _, d, _ = memory.shape
    mixed = (slot_weights.unsqueeze(1) @ memory.flatten(2)).view(batch, d, d)  # sum_n p_n M_r[n]
    return (key.unsqueeze(1) @ mixed).squeeze(1)


def relational_update_reference(memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor) -> Tensor:
    """Eq. 12: ``alpha1 M_r_prev + A`` with ``A[n, a, c] = sum_j scores[j, n*d + a] values[j, c]`` (SAM's output
    from its scores, one ``[N*d, N] x [N, d]`` product per sample)."""
    batch, slots, d, _ = memory.shape
    updated = torch.baddbmm((memory * alpha).view(batch, slots * d, d), scores.transpose(1, 2), values)
    return updated.view(batch, slots, d, d)


_LIBRARY.define("gated_write(Tensor item, Tensor u, Tensor weight, Tensor offset) -> Tensor")
_LIBRARY.define("sam_scores(Tensor queries, Tensor keys) -> Tensor")
_LIBRARY.define("relational_read(Tensor memory, Tensor slot_weights, Tensor key) -> Tensor")
_LIBRARY.define("relational_update(Tensor memory, Tensor alpha, Tensor scores, Tensor values) -> Tensor")
REFERENCES: dict[str, Callable[..., Tensor]] = {
    "gated_write": gated_write_reference,
    "sam_scores": sam_scores_reference,
    "relational_read": relational_read_reference,
    "relational_update": relational_update_reference,
}
"""Each operator's reference implementation, by operator name."""
for _name, _reference in REFERENCES.items():
    _LIBRARY.impl(_name, _reference, "CompositeImplicitAutograd")


def gated_write(item: Tensor, u: Tensor, weight: Tensor, offset: Tensor) -> Tensor:
    """``M'`` (``[B, d, d]``) from the previous item memory and the gates' parameters and inputs (eq. 10).

    Args:
        item: ``M_i_prev``, ``[B, d, d]`` (may be expanded over the batch).
        u: the item written, f1(x), ``[B, d]``.
        weight: the gates' weight on ``tanh(M_i_prev)``, ``W_gate`` (``[2d, d]``: input gate rows first, then
            forget gate rows).
        offset: what every row's gates add to the product, ``[B, 2d]`` (``gate_in(u)`` and all biases).
    """
    batch, d = u.shape
    if item.shape != (batch, d, d) or weight.shape != (2 * d, d) or offset.shape != (batch, 2 * d):
        raise ValueError(f"gated_write: shapes {list(item.shape)}, {list(u.shape)}, {list(weight.shape)}, "
                         f"{list(offset.shape)} do not fit [B, d, d], [B, d], [2d, d], [B, 2d]")
    return torch.ops.stm_rl.gated_write(item, u, weight, offset)


def sam_scores(queries: Tensor, keys: Tensor) -> Tensor:
    """The scores ``[B, N(key), N(query), d]``, entry ``[j, n, a] = tanh(k_j[a] q_n[a])``.

    Args:
        queries: ``[B, N, d]``.
        keys: ``[B, N, d]``.
    """
    if queries.dim() != 3 or keys.shape != queries.shape:
        raise ValueError(f"sam_scores expects queries and keys of one shape [B, N, d], got "
                         f"{list(queries.shape)} and {list(keys.shape)}")
    return torch.ops.stm_rl.sam_scores(queries, keys)


def relational_read(memory: Tensor, slot_weights: Tensor, key: Tensor) -> Tensor:
    """``v_r`` (``[B, d]``) from ``M_r`` (``[B, N, d, d]``, may be expanded over the batch), slot weights p
    (``[B, N]``) and key w (``[B, d]``)."""
    batch, slots, d = memory.shape[0], memory.shape[1], memory.shape[-1]
    if memory.dim() != 4 or slot_weights.shape != (batch, slots) or key.shape != (batch, d):
        raise ValueError(f"relational_read: shapes {list(memory.shape)}, {list(slot_weights.shape)}, "
                         f"{list(key.shape)} do not fit [B, N, d, d], [B, N], [B, d]")
    with torch.autocast(memory.device.type, enabled=False):  # in the memory's dtype (module docstring)
        return torch.ops.stm_rl.relational_read(memory, slot_weights.to(memory.dtype), key.to(memory.dtype))


def relational_update(memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor) -> Tensor:
    """``alpha * memory + scores^T values`` per sample, reshaped like ``memory`` (eq. 12).

    Args:
        memory: ``M_r_prev``, ``[B, N, d, d]`` (may be expanded over the batch).
        alpha: alpha1, a 0-dimensional tensor.
        scores: ``[B, N(key), N*d]``, entry ``[j, n*d + a] = tanh(q_n[a] * k_j[a])``.
        values: ``[B, N, d]``.
    """
    if alpha.dim() != 0:
        raise ValueError(f"relational_update expects a 0-dimensional alpha, got shape {list(alpha.shape)}")
    batch, slots, d = values.shape
    if memory.shape != (batch, slots, d, d) or scores.shape != (batch, slots, slots * d):
        raise ValueError(f"relational_update: shapes {list(memory.shape)}, {list(scores.shape)}, "
                         f"{list(values.shape)} do not fit [B, N, d, d], [B, N, N*d], [B, N, d]")
    with torch.autocast(memory.device.type, enabled=False):  # in the memory's dtype (module docstring)
        return torch.ops.stm_rl.relational_update(memory, *(t.to(memory.dtype) for t in (alpha, scores, values)))
