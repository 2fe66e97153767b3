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
both are left to the read's backward, which forms them together with its own gradient for ``M_r_prev``.
With the fused kernels, where the next step's read left its share of this step's ``dM_r`` in the output's
:class:`~stm_rl.memory.relational_read.GradientLink` (the lazy gradient), this backward pass adds it while it
reads ``dM_r``, and returns the next step's alpha1 gradient, taken in the same pass.

Where the fused CPU kernels run (:mod:`stm_rl.memory.fused_kernels`: CPU, one PyTorch thread), the
forward pass is one kernel that also writes the bf16 copy of ``M_r`` that the readout reads under bf16
autocast (:func:`relational_update_with_readout`), and the backward pass one kernel that reads ``dM_r`` as
the fp32 gradient plus that copy's bf16 gradient, without forming their sum.

The function computes in the dtype of the memory (the recurrence's dtype, fp32 also under bf16
autocast, see :mod:`stm_rl.memory.stm`) and returns each gradient in its input's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from stm_rl.memory.fused_kernels import FusedKernels, fused_kernels_for
from stm_rl.memory.relational_read import GradientLink, MemoryGradientHandoff, memory_dot


class _RelationalUpdate(torch.autograd.Function):
    """Returns ``M_r`` and the readout's view of it: under bf16 with the fused kernels a bf16 copy, else an
    alias of ``M_r``. Either way the readout's gradient arrives here apart from the recurrent one, and the
    two are summed where ``dM_r`` is read (by the kernels, without a full-size sum)."""

    @staticmethod
    def forward(ctx, memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor,
                handoff: Optional[MemoryGradientHandoff], bf16_readout: bool, kernels: Optional[FusedKernels],
                link: Optional[GradientLink]):
        ctx.set_materialize_grads(False)  # an output nothing reads gets no (zero-filled) gradient
        ctx.handoff, ctx.link = handoff, link
        ctx.input_dtypes = (alpha.dtype, scores.dtype, values.dtype)
        alpha, scores, values = (t.to(memory.dtype).contiguous() for t in (alpha, scores, values))
        ctx.kernels = kernels
        copy = None
        with torch.autocast(memory.device.type, enabled=False):
            if kernels is not None:  # one pass, the bf16 copy made from the same registers
                updated, copy = kernels.update_forward(memory, alpha, scores, values,
                                                       bf16_readout and memory.dtype == torch.float32)
            else:
                batch, n, d, _ = memory.shape
                updated = memory * alpha
                updated.view(batch, n * d, d).baddbmm_(scores.transpose(1, 2), values)
        ctx.save_for_backward(memory, alpha, scores, values)
        ctx.bf16_copy = copy is not None
        return updated, updated.view_as(updated) if copy is None else copy

    @staticmethod
    def backward(ctx, grad: Optional[Tensor], grad_readout: Optional[Tensor]):
        carried = ctx.link.take() if ctx.link is not None else None  # the next step's read's share (lazy gradient)
        if grad is None and grad_readout is None and carried is None:  # no gradient flows
            return None, None, None, None, None, None, None, None
        memory, alpha, scores, values = ctx.saved_tensors
        alpha_dtype, scores_dtype, values_dtype = ctx.input_dtypes
        grad_memory = grad_alpha = grad_scores = grad_values = None
        grad = None if grad is None else grad.to(memory.dtype).contiguous()
        grad_readout = None if grad_readout is None else grad_readout.contiguous()
        if ctx.kernels is not None:  # dM_r = grad + grad_readout (+ carried), read once for both products
            # dM_r in full for the read: in bf16 under bf16 autocast (where the readout's share already is)
            grad_scores, grad_values, full, grad_alpha = ctx.kernels.update_backward(
                grad, grad_readout, scores, values, ctx.needs_input_grad[2], ctx.needs_input_grad[3], carried,
                need_full=ctx.handoff is not None or carried is not None,
                full_dtype=torch.bfloat16 if ctx.bf16_copy else None)
            if full is not None:  # dM_r in one tensor, for the read (or the memory gradient below)
                grad, grad_readout = full, None
        else:
            if grad_readout is not None:
                readout = grad_readout.to(memory.dtype)
                grad = readout if grad is None else grad + readout
                grad_readout = None
            batch, n, d, _ = memory.shape
            flat_grad = grad.view(batch, n * d, d)
            if ctx.needs_input_grad[2]:  # d scores = V dA^T: [N, d] x [d, N*d] per sample
                grad_scores = torch.bmm(values, flat_grad.transpose(1, 2))
            if ctx.needs_input_grad[3]:  # d V = scores dA: [N, N*d] x [N*d, d] per sample
                grad_values = torch.bmm(scores, flat_grad)
        if ctx.handoff is not None:  # M_r_prev's and alpha1's gradients are formed by the read's backward
            ctx.handoff.leave(grad, grad_readout)
        elif ctx.kernels is not None:
            grad_memory, _, own_alpha = ctx.kernels.memory_backward(
                grad, grad_readout, memory, alpha, None, None, ctx.needs_input_grad[0], False, ctx.needs_input_grad[1])
            grad_alpha = own_alpha if grad_alpha is None or own_alpha is None else grad_alpha + own_alpha
        else:
            if ctx.needs_input_grad[0]:
                grad_memory = grad * alpha
            if ctx.needs_input_grad[1]:
                grad_alpha = memory_dot(grad, memory)
        return (grad_memory, _cast(grad_alpha, alpha_dtype), _cast(grad_scores, scores_dtype),
                _cast(grad_values, values_dtype), None, None, None, None)


def _cast(tensor: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if tensor is None else tensor.to(dtype)


def relational_update(memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor,
                      handoff: Optional[MemoryGradientHandoff] = None) -> Tensor:
    """``alpha * memory + scores^T values`` per sample, reshaped like ``memory``.

    Args:
        memory: ``M_r_prev``, ``[B, N, d, d]`` (may be expanded over the batch).
        alpha: alpha1, a 0-dimensional tensor.
        scores: ``[B, N(key), N*d]``, entry ``[j, n*d + a] = tanh(q_n[a] * k_j[a])``.
        values: ``[B, N, d]``.
        handoff: shared with the same step's relational read of ``memory``, which then returns the
            gradients of ``memory`` and ``alpha`` (module docstring); made with this ``alpha``.
    """
    return relational_update_with_readout(memory, alpha, scores, values, handoff)[0]


def relational_update_with_readout(memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor,
                                   handoff: Optional[MemoryGradientHandoff] = None,
                                   bf16_readout: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`relational_update` and the tensor the readout (eq. 14) should read ``M_r`` from.

    The readout tensor is a view of ``M_r``, or, with ``bf16_readout`` where the fused kernels run, a bf16
    copy of it made in the same pass (the readout's input under bf16 autocast, same values as autocast's
    cast). Its gradient then reaches this function's backward apart from ``M_r``'s, and the two are added
    where ``dM_r`` is read, rather than by autograd into a new full-size tensor (and a cast).
    """
    if alpha.dim() != 0:
        raise ValueError(f"relational_update expects a 0-dimensional alpha, got shape {list(alpha.shape)}")
    if handoff is not None and handoff.alpha is not alpha:
        raise ValueError("relational_update: the handoff must be made with the same alpha")
    # The fused path's output gets a GradientLink for the next step's read (its lazy gradient).
    kernels = fused_kernels_for(memory)
    link = GradientLink() if kernels is not None and torch.is_grad_enabled() else None
    updated, readout = _RelationalUpdate.apply(memory, alpha, scores, values, handoff, bf16_readout, kernels, link)
    if link is not None:
        link.attach(updated, readout if readout.dtype != updated.dtype else None)
    return updated, readout
