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
leaves ``dM_r`` there instead, and this backward returns ``alpha1 * dM_r + p (x) d mixed`` built in one
tensor, and alpha1's gradient ``<dM_r, M_r_prev>`` (issue 10: fewer passes over ``B x N x d x d``).
Where the fused CPU kernels run (:mod:`stm_rl.memory.fused_kernels`) those two and p's gradient come
from one pass over ``dM_r`` and ``M_r_prev``.

Under autocast (bf16 mixed precision) the function computes in the dtype of the memory, the one large
input, and casts the small ones (p, w) to it: no copy of ``M_r`` is made, and the backward pass, which
autocast does not cover, meets no mixed dtypes. Each gradient is returned in its input's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from stm_rl.fp32_matmul import mkl_matmul
from stm_rl.memory.fused_kernels import fused_kernels_for


class MemoryGradientHandoff:
    """Carries the update's gradient ``dM_r`` to the read's backward, which forms the gradients of
    ``M_r_prev`` and alpha1 from it.

    Made by the cell for one step with that step's alpha1 and given to both :func:`relational_read` and
    :func:`~stm_rl.memory.relational_update.relational_update`, which must read the same ``M_r_prev``;
    the update's output must depend on the read's (it does through SAM), so that the update's backward
    runs first. ``dM_r`` is kept as the update's two output gradients (through ``M_r`` and through the
    readout's view or bf16 copy of it, either may be None), summed where they are read. Holds nothing
    between backward passes.
    """

    __slots__ = ("alpha", "grad", "grad_readout")

    def __init__(self, alpha: Tensor) -> None:
        self.alpha = alpha
        self.grad: Optional[Tensor] = None
        self.grad_readout: Optional[Tensor] = None

    def leave(self, grad: Optional[Tensor], grad_readout: Optional[Tensor]) -> None:
        """The update's backward: ``dM_r = grad + grad_readout`` for the read's backward to use."""
        self.grad, self.grad_readout = grad, grad_readout

    def take(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        grads = self.grad, self.grad_readout
        self.grad = self.grad_readout = None
        return grads


class _RelationalRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memory: Tensor, slot_weights: Tensor, key: Tensor,
                handoff: Optional[MemoryGradientHandoff], alpha: Optional[Tensor]) -> Tensor:
        batch, n, d, _ = memory.shape
        ctx.input_dtypes = (slot_weights.dtype, key.dtype, None if alpha is None else alpha.dtype)
        ctx.handoff = handoff
        ctx.kernels = fused_kernels_for(memory)
        slot_weights, key = slot_weights.to(memory.dtype).contiguous(), key.to(memory.dtype)
        alpha = memory.new_zeros(()) if alpha is None else alpha.to(memory.dtype)
        with torch.autocast(memory.device.type, enabled=False):  # explicit dtypes instead (module docstring)
            with mkl_matmul():  # a vector-matrix product: MKL's shape (stm_rl.fp32_matmul)
                mixed = (slot_weights.unsqueeze(1) @ memory.flatten(2)).view(batch, d, d)  # sum_n p_n M_r[n]
            ctx.save_for_backward(memory, slot_weights, key, mixed, alpha)
            return (key.unsqueeze(1) @ mixed).squeeze(1)  # v_r = w^T mixed

    @staticmethod
    def backward(ctx, grad_read: Tensor):
        memory, slot_weights, key, mixed, alpha = ctx.saved_tensors
        batch, n, d, _ = memory.shape
        grad_read = grad_read.to(memory.dtype)
        weights_dtype, key_dtype, alpha_dtype = ctx.input_dtypes
        grad_memory = grad_weights = grad_key = grad_alpha = None
        grad_mixed = (key.unsqueeze(2) * grad_read.unsqueeze(1)).contiguous()  # w (x) d v_r: [B, d, d]
        update_grad, update_grad_readout = ctx.handoff.take() if ctx.handoff is not None else (None, None)
        need_alpha = ctx.needs_input_grad[4] and (update_grad is not None or update_grad_readout is not None)
        if ctx.kernels is not None:  # everything that reads M_r_prev or dM_r, in one pass
            grad_memory, grad_weights, grad_alpha = ctx.kernels.memory_backward(
                update_grad, update_grad_readout, memory, alpha, slot_weights, grad_mixed,
                ctx.needs_input_grad[0], ctx.needs_input_grad[1], need_alpha)
        else:
            if update_grad_readout is not None:
                update_grad = update_grad_readout.to(memory.dtype) + (0 if update_grad is None else update_grad)
            if ctx.needs_input_grad[0]:  # p_n * d mixed for every slot (+ the update's alpha1 * dM_r)
                slots, mix = slot_weights.unsqueeze(2), grad_mixed.view(batch, 1, d * d)
                if update_grad is None:
                    grad_memory = (slots * mix).view(batch, n, d, d)
                else:  # one new tensor: alpha1 * dM_r, then p (x) d mixed added in place
                    grad_memory = update_grad * alpha
                    grad_memory.view(batch, n, d * d).addcmul_(slots, mix)
            if ctx.needs_input_grad[1]:  # d p_n = <M_r[n], d mixed>, as a row vector times M_r^T
                with mkl_matmul():
                    grad_weights = (grad_mixed.view(batch, 1, d * d) @ memory.flatten(2).transpose(1, 2)).squeeze(1)
            if need_alpha:
                grad_alpha = memory_dot(update_grad, memory)
        if ctx.needs_input_grad[2]:  # d w = mixed d v_r, as the row d v_r^T mixed^T (one output column is ~8x slower)
            grad_key = (grad_read.unsqueeze(1) @ mixed.transpose(1, 2)).squeeze(1).to(key_dtype)
        grad_weights = None if grad_weights is None else grad_weights.to(weights_dtype)
        grad_alpha = None if grad_alpha is None else grad_alpha.to(alpha_dtype)
        return grad_memory, grad_weights, grad_key, None, grad_alpha


def memory_dot(grad: Tensor, memory: Tensor) -> Tensor:
    """``<dM_r, M_r_prev>`` (alpha1's gradient; ``memory`` may be expanded over the batch), 0-dimensional."""
    return _dot(grad.reshape(-1), memory.expand_as(grad).reshape(-1))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_i a_i b_i`` of two flat tensors: BLAS dot in fp32/fp64; for bf16/fp16 (whose BLAS dot is not
    vectorised) a multiply and an fp32-accumulated sum. A ``[1, L] x [L, 1]`` product is ~9x slower."""
    if a.dtype in (torch.float32, torch.float64):
        with mkl_matmul():  # oneDNN runs a dot product as a [1, L] x [L, 1] product, ~5x slower
            return torch.dot(a, b)
    return (a * b).sum(dtype=torch.float32)


def relational_read(memory: Tensor, slot_weights: Tensor, key: Tensor,
                    handoff: Optional[MemoryGradientHandoff] = None) -> Tensor:
    """``v_r`` (``[B, d]``) from ``M_r`` (``[B, N, d, d]``), slot weights p (``[B, N]``) and key w (``[B, d]``).

    ``handoff``: shared with the same step's :func:`~stm_rl.memory.relational_update.relational_update`
    (module docstring); the gradients of ``memory`` and of the handoff's alpha1 for both functions are
    then returned here.
    """
    return _RelationalRead.apply(memory, slot_weights, key, handoff, None if handoff is None else handoff.alpha)
