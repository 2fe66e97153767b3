"""The relational memory's update, ``M_r = alpha1 * M_r_prev + SAM(M')`` (spec section 3 step 6, paper
eq. 12 with the authors' alpha1), as one autograd function.

SAM's output is the rank-N product ``A[n] = sum_j tanh(q_n * k_j) (x) v_j``, stored as
``scores^T V`` with ``scores [B, N(key), N*d]`` and ``V [B, N, d]``, so the update is one batched
``baddbmm`` over ``[B, N*d, d]``. Autograd would differentiate it into products whose output has only N
columns (``dA V^T``, ``[B, N*d, d] x [B, d, N]``), which oneDNN/MKL run at a fraction of their speed
(about 8 GFLOP/s at batch 16 here); this backward computes the same gradient transposed,
``V dA^T`` (``[N, d] x [d, N*d]`` per sample, already in the layout of ``scores``). alpha1's gradient
is one dot product of the output gradient with ``M_r_prev`` (no full-size temporary), and
``M_r_prev``'s gradient is ``alpha1 * dM_r``: returned here, or, with a
:class:`~stm_rl.memory.relational_read.MemoryGradientHandoff` shared with the step's relational read,
left to the read's backward, which sums it with its own gradient for ``M_r_prev`` in one tensor.

The function computes in the dtype of the memory (the recurrence's dtype, fp32 also under bf16
autocast, see :mod:`stm_rl.memory.stm`) and returns each gradient in its input's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from stm_rl.fp32_matmul import mkl_matmul
from stm_rl.memory.relational_read import MemoryGradientHandoff


class _RelationalUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor,
                handoff: Optional[MemoryGradientHandoff]) -> Tensor:
        batch, n, d, _ = memory.shape
        ctx.handoff = handoff
        ctx.input_dtypes = (alpha.dtype, scores.dtype, values.dtype)
        alpha, scores, values = (t.to(memory.dtype) for t in (alpha, scores, values))
        with torch.autocast(memory.device.type, enabled=False):
            updated = memory * alpha
            updated.view(batch, n * d, d).baddbmm_(scores.transpose(1, 2), values)
        ctx.save_for_backward(memory, alpha, scores, values)
        return updated

    @staticmethod
    def backward(ctx, grad: Tensor):
        memory, alpha, scores, values = ctx.saved_tensors
        batch, n, d, _ = memory.shape
        alpha_dtype, scores_dtype, values_dtype = ctx.input_dtypes
        grad = grad.to(memory.dtype).contiguous()
        flat_grad = grad.view(batch, n * d, d)
        grad_memory = grad_alpha = grad_scores = grad_values = None
        if ctx.needs_input_grad[0]:
            if ctx.handoff is not None:  # alpha1 * dM_r is formed by the read's backward, with its own term
                ctx.handoff.leave(grad, alpha)
            else:
                grad_memory = grad * alpha
        if ctx.needs_input_grad[1]:  # <dM_r, M_r_prev>; M_r_prev may be expanded over the batch
            grad_alpha = _dot(grad.view(-1), memory.expand_as(grad).reshape(-1)).reshape(alpha.shape).to(alpha_dtype)
        if ctx.needs_input_grad[2]:  # d scores = V dA^T: [N, d] x [d, N*d] per sample
            grad_scores = torch.bmm(values, flat_grad.transpose(1, 2)).to(scores_dtype)
        if ctx.needs_input_grad[3]:  # d V = scores dA: [N, N*d] x [N*d, d] per sample
            grad_values = torch.bmm(scores, flat_grad).to(values_dtype)
        return grad_memory, grad_alpha, grad_scores, grad_values, None


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_i a_i b_i`` of two flat tensors: BLAS dot in fp32/fp64; for bf16/fp16 (whose BLAS dot is not
    vectorised) a multiply and an fp32-accumulated sum. A ``[1, L] x [L, 1]`` product is ~9x slower."""
    if a.dtype in (torch.float32, torch.float64):
        with mkl_matmul():  # oneDNN runs a dot product as a [1, L] x [L, 1] product, ~5x slower
            return torch.dot(a, b)
    return (a * b).sum(dtype=torch.float32)


def relational_update(memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor,
                      handoff: Optional[MemoryGradientHandoff] = None) -> Tensor:
    """``alpha * memory + scores^T values`` per sample, reshaped like ``memory``.

    Args:
        memory: ``M_r_prev``, ``[B, N, d, d]`` (may be expanded over the batch).
        alpha: alpha1, a 0-dimensional tensor.
        scores: ``[B, N(key), N*d]``, entry ``[j, n*d + a] = tanh(q_n[a] * k_j[a])``.
        values: ``[B, N, d]``.
        handoff: shared with the same step's relational read of ``memory``, which then returns
            ``memory``'s gradient for both (module docstring).
    """
    if alpha.dim() != 0:
        raise ValueError(f"relational_update expects a 0-dimensional alpha, got shape {list(alpha.shape)}")
    return _RelationalUpdate.apply(memory, alpha, scores, values, handoff)
