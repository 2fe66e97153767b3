"""SAM's scores ``tanh(q_n * k_j)`` (paper eq. 2 with F = tanh; spec STM.md section 2) as one autograd function.

Every step of the STM computes ``scores[j, n, a] = tanh(k_j[a] q_n[a])`` (``[B, N(key), N(query), d]``) and
reads them twice: the relational update (eq. 12) and the transfer to item memory (eq. 13). Composed of
PyTorch operations that is a product, the tanh (itself three operations, :mod:`stm_rl.memory.activations`)
and, backward, the sum of the two readers' gradients, tanh's derivative, two broadcast products and two
reductions: about a dozen passes. Where the fused CPU kernels run (:mod:`stm_rl.memory.fused_kernels`) it is
one pass each way: the function returns the scores twice (an alias for each reader), so that the two
gradients arrive apart and are summed where they are read (issue 10). Elsewhere the same values come from
:func:`stm_rl.memory.attention.outer_product_scores`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stm_rl.memory.activations import tanh
from stm_rl.memory.attention import outer_product_scores
from stm_rl.memory.fused_kernels import fused_kernels_for


class _TanhScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, kernels) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # a reader that is not used sends no (zero-filled) gradient
        ctx.kernels = kernels
        queries, keys = queries.contiguous(), keys.contiguous()
        scores = kernels.scores_forward(queries, keys)
        ctx.save_for_backward(queries, keys, scores)
        return scores, scores.view_as(scores)

    @staticmethod
    def backward(ctx, grad: Tensor, grad_other: Tensor):
        if grad is None and grad_other is None:
            return None, None, None
        queries, keys, scores = ctx.saved_tensors
        grad, grad_other = (None if g is None else g.contiguous() for g in (grad, grad_other))
        grad_queries, grad_keys = ctx.kernels.scores_backward(grad, grad_other, scores, queries, keys)
        return grad_queries, grad_keys, None


def tanh_scores(queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """The scores ``[B, N(key), N(query), d]``, entry ``[j, n, a] = tanh(k_j[a] q_n[a])``, once for each of
    their two readers (the same values; see the module docstring).

    Args:
        queries: ``[B, N, d]``.
        keys: ``[B, N, d]``.
    """
    if queries.dim() != 3 or keys.shape != queries.shape:
        raise ValueError(f"tanh_scores expects queries and keys of one shape [B, N, d], got "
                         f"{list(queries.shape)} and {list(keys.shape)}")
    kernels = fused_kernels_for(queries)
    if kernels is not None and keys.dtype == queries.dtype:
        return _TanhScores.apply(queries, keys, kernels)
    scores = outer_product_scores(keys, queries, tanh)
    return scores, scores
