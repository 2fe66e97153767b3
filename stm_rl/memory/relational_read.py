"""The relational read of the STM (spec section 3 step 5, paper eq. 11) as one autograd function.

``v_r[f] = sum_n p_n sum_e w_e M_r[n, e, f]`` is computed by mixing the slots first
(``mixed = sum_n p_n M_r[n]``, one ``[1, N] x [N, d*d]`` product per sample) and then reading the
``d x d`` mix with w. Autograd would differentiate the slot mix with a batched matrix product of inner
size 1 (``p (x) d mixed``, ``B x N x d x d`` outputs), which BLAS runs far slower than the equivalent
broadcast multiply (about 10x at batch 1 here); this function's backward uses the multiply, and gets
p's gradient from one vector-matrix product per sample, reading ``M_r`` once. That product is written
``d mixed^T [d*d] x M_r^T [d*d, N]`` (one output row) rather than ``M_r x d mixed`` (one output column):
batched products with a single output column run about 13x slower at batch 16 on oneDNN/MKL CPUs.

One gradient for ``M_r_prev`` per step: the same step's update (:mod:`stm_rl.memory.relational_update`)
also reads ``M_r_prev`` (``alpha1 * M_r_prev``), and left to autograd the two gradients would be two
full-size tensors plus a third for their sum. With a :class:`MemoryGradientHandoff` shared by the two
functions, the update's backward (which always runs first: the update consumes what the read produced)
leaves its gradient there instead of returning it, and this backward returns
``alpha1 * dM_r + p (x) d mixed`` built in one tensor (issue 10: two fewer passes over ``B x N x d x d``
per step).

Under autocast (bf16 mixed precision) the function computes in the dtype of the memory, the one large
input, and casts the small ones (p, w) to it: no copy of ``M_r`` is made, and the backward pass, which
autocast does not cover, meets no mixed dtypes. Each gradient is returned in its input's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from stm_rl.fp32_matmul import mkl_matmul


class MemoryGradientHandoff:
    """Carries the update's gradient for ``M_r_prev`` (``dM_r`` and alpha1) to the read's backward pass.

    Made by the cell for one step and given to both :func:`relational_read` and
    :func:`~stm_rl.memory.relational_update.relational_update` of that step, which must read the same
    ``M_r_prev``; the update's output must depend on the read's (it does through SAM), so that the
    update's backward runs first. Holds nothing between backward passes.
    """

    __slots__ = ("grad", "alpha")

    def __init__(self) -> None:
        self.grad: Optional[Tensor] = None
        self.alpha: Optional[Tensor] = None

    def leave(self, grad: Tensor, alpha: Tensor) -> None:
        """The update's backward: ``M_r_prev`` gets ``alpha * grad`` (added by the read's backward)."""
        self.grad, self.alpha = grad, alpha

    def take(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        grad, alpha = self.grad, self.alpha
        self.grad = self.alpha = None
        return grad, alpha


class _RelationalRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memory: Tensor, slot_weights: Tensor, key: Tensor,
                handoff: Optional[MemoryGradientHandoff]) -> Tensor:
        batch, n, d, _ = memory.shape
        ctx.input_dtypes = (slot_weights.dtype, key.dtype)
        ctx.handoff = handoff
        slot_weights, key = slot_weights.to(memory.dtype), key.to(memory.dtype)
        with torch.autocast(memory.device.type, enabled=False):  # explicit dtypes instead (module docstring)
            with mkl_matmul():  # a vector-matrix product: MKL's shape (stm_rl.fp32_matmul)
                mixed = (slot_weights.unsqueeze(1) @ memory.flatten(2)).view(batch, d, d)  # sum_n p_n M_r[n]
            ctx.save_for_backward(memory, slot_weights, key, mixed)
            return (key.unsqueeze(1) @ mixed).squeeze(1)  # v_r = w^T mixed

    @staticmethod
    def backward(ctx, grad_read: Tensor):
        memory, slot_weights, key, mixed = ctx.saved_tensors
        batch, n, d, _ = memory.shape
        grad_read = grad_read.to(memory.dtype)
        weights_dtype, key_dtype = ctx.input_dtypes
        grad_memory = grad_weights = grad_key = None
        grad_mixed = key.unsqueeze(2) * grad_read.unsqueeze(1)  # w (x) d v_r: [B, d, d]
        if ctx.needs_input_grad[0]:  # p_n * d mixed for every slot (+ the update's alpha1 * dM_r)
            update_grad, alpha = ctx.handoff.take() if ctx.handoff is not None else (None, None)
            slots, mix = slot_weights.unsqueeze(2), grad_mixed.view(batch, 1, d * d)
            if update_grad is None:
                grad_memory = (slots * mix).view(batch, n, d, d)
            else:  # one new tensor: alpha1 * dM_r, then p (x) d mixed added in place
                grad_memory = update_grad * alpha.to(update_grad.dtype)
                grad_memory.view(batch, n, d * d).addcmul_(slots, mix)
        if ctx.needs_input_grad[1]:  # d p_n = <M_r[n], d mixed>, as a row vector times M_r^T
            with mkl_matmul():
                grad_weights = (grad_mixed.view(batch, 1, d * d) @ memory.flatten(2).transpose(1, 2)).squeeze(1)
            grad_weights = grad_weights.to(weights_dtype)
        if ctx.needs_input_grad[2]:  # d w = mixed d v_r
            grad_key = (mixed @ grad_read.unsqueeze(2)).squeeze(2).to(key_dtype)
        return grad_memory, grad_weights, grad_key, None


def relational_read(memory: Tensor, slot_weights: Tensor, key: Tensor,
                    handoff: Optional[MemoryGradientHandoff] = None) -> Tensor:
    """``v_r`` (``[B, d]``) from ``M_r`` (``[B, N, d, d]``), slot weights p (``[B, N]``) and key w (``[B, d]``).

    ``handoff``: shared with the same step's :func:`~stm_rl.memory.relational_update.relational_update`
    (module docstring); its gradient for ``memory`` is then returned here, summed with this one.
    """
    return _RelationalRead.apply(memory, slot_weights, key, handoff)
