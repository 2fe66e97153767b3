"""Outer-product attention (paper eq. 2) and the SAM operator (paper section 2.2).

Shapes use B for the batch, N for the number of relational slots (n_q = n_kv = N) and d for the side of
the d x d item memory. See ``../shared/spec/STM.md`` sections 1 and 2.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

Activation = Callable[[Tensor], Tensor]


def outer_product_scores(q: Tensor, k: Tensor, activation: Activation = torch.tanh) -> Tensor:
    """The elementwise scores F(q_i * k_j) of outer-product attention.

    Args:
        q: queries ``[..., n_q, d_qk]``.
        k: keys ``[..., n_kv, d_qk]``.
        activation: the elementwise F of eq. 2 (tanh in the paper).

    Returns:
        ``[..., n_q, n_kv, d_qk]`` with entry ``[i, j, a] = F(q_i[a] * k_j[a])``. This is small
        (N x N x d per sample); the N x N x d x d tensor of the original implementation is never built.
    """
    return activation(q.unsqueeze(-2) * k.unsqueeze(-3))


def outer_product_attention(
    q: Tensor, k: Tensor, v: Tensor, activation: Activation = torch.tanh
) -> Tensor:
    """Outer-product attention, paper eq. 2, batched over any leading dimensions.

    ``A(q_i, K, V) = sum_j F(q_i * k_j) (x) v_j``: each query yields a ``d_qk x d_v`` matrix, where
    dot-product attention would yield a vector.

    Args:
        q: queries ``[..., n_q, d_qk]``.
        k: keys ``[..., n_kv, d_qk]``.
        v: values ``[..., n_kv, d_v]``.
        activation: elementwise F (tanh in the paper; the identity recovers Proposition 1).

    Returns:
        ``[..., n_q, d_qk, d_v]``.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys must share their last size, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values must be as many, got {k.shape[-2]} and {v.shape[-2]}")
    scores = outer_product_scores(q, k, activation)  # [..., n_q, n_kv, d_qk]
    # sum_j scores[i, j, a] v[j, c]: one batched matmul per query, no n_q x n_kv x d_qk x d_v tensor.
    return scores.transpose(-1, -2) @ v.unsqueeze(-3)


class SAM(nn.Module):
    """Self-attentive associative memory operator (spec section 2, paper eqs. 3-5).

    Turns a batch of item memories ``S`` (``B x d x d``) into relational memories ``B x N x d x d``:
    a linear layer ``d -> 3N`` applied to every row of S gives ``P`` (``d x 3N``), one layer norm over
    all of P's entries normalises it, and its columns are read as N queries, N keys and N values in
    R^d. Then ``SAM(S)[i] = sum_j tanh(q_i * k_j) (x) v_j`` (no softmax, no scaling, j = i included).
    """

    def __init__(self, d: int, num_slots: int) -> None:
        super().__init__()
        _check_positive(d=d, num_slots=num_slots)
        self.d = d
        self.num_slots = num_slots
        self.qkv_proj = nn.Linear(d, 3 * num_slots)
        self.qkv_norm = nn.LayerNorm([d, 3 * num_slots])

    def queries_keys_values(self, memory: Tensor,
                            rank_one: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 1-3 of the operator: ``(q, k, v)``, each ``[B, N, d]`` (slot-major, contiguous rows).

        ``rank_one = (a, b)`` (each ``[B, d]``) runs the operator on ``memory + a (x) b`` without forming that
        sum: the projection is linear, ``(S + a (x) b) W^T = S W^T + a (x) (W b)``, and the rank-1 term is
        added to the ``[B, d, 3N]`` projection instead of the ``[B, d, d]`` memory (the STM's relational read
        enters so, eq. 11). P is transposed into one contiguous ``[B, 3N, d]`` copy (small: 3N*d numbers per
        sample), so that the products built from q, k and v get plain row-major layouts.
        """
        if memory.shape[-2:] != (self.d, self.d):
            raise ValueError(f"SAM expects memories of shape [B, {self.d}, {self.d}], got {list(memory.shape)}")
        projected = self.qkv_proj(memory)  # [B, d, 3N]
        if rank_one is not None:
            left, right = rank_one
            projected = torch.baddbmm(projected, left.unsqueeze(-1),
                                      nn.functional.linear(right, self.qkv_proj.weight).unsqueeze(-2))
        p = self.qkv_norm(projected)  # [B, d, 3N]: column i is the i-th query/key/value
        q, k, v = p.transpose(-1, -2).contiguous().split(self.num_slots, dim=-2)
        return q, k, v

    def forward(self, memory: Tensor) -> Tensor:
        q, k, v = self.queries_keys_values(memory)
        return outer_product_attention(q, k, v)


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
