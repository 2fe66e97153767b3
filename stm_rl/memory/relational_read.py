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
Where the fused CPU kernels run (:mod:`stm_rl.memory.fused_kernels`) those two come from one pass over
``dM_r`` and ``M_r_prev``, and the forward pass reads ``M_r_prev`` once for the slot mix and the per-slot reads
``w^T M_r_prev[n]``, which give p's gradient (``d p_n = <w^T M_r_prev[n], d v_r>``) without reading
``M_r_prev`` again.

The lazy gradient (issue 10): where ``M_r_prev`` is the previous step's updated memory itself (every step of
a rollout but the first), even that pass is saved. The read's backward pass leaves its share of ``dM_r_prev``,
``alpha1 * dM_r + p (x) d mixed``, in a :class:`GradientLink` instead of forming it, and the previous step's
update, whose backward pass runs next and reads that gradient anyway, adds it row by row while it reads
``dM_r`` and its readout's part, and takes alpha1's gradient ``<dM_r, M_r_prev>`` in the same pass. A step's
backward passes then read ``dM_r`` once instead of twice (about 1.5 of the 5 passes over ``B x N x d x d``
tensors).

Under autocast (bf16 mixed precision) the function computes in the dtype of the memory, the one large
input, and casts the small ones (p, w) to it: no copy of ``M_r`` is made, and the backward pass, which
autocast does not cover, meets no mixed dtypes. Each gradient is returned in its input's dtype.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from stm_rl.fp32_matmul import mkl_matmul
from stm_rl.memory.fused_kernels import FusedKernels, fused_kernels_for


class MemoryGradientHandoff:
    """Carries the update's gradient ``dM_r`` to the read's backward, which forms the gradients of
    ``M_r_prev`` and alpha1 from it.

    Made by the cell for one step with that step's alpha1 and given to both :func:`relational_read` and
    :func:`~stm_rl.memory.relational_update.relational_update`, which must read the same ``M_r_prev``;
    the update's output must depend on the read's (it does through SAM), so that the update's backward
    runs first. ``dM_r`` is kept as the update's two output gradients (through ``M_r`` and through the
    readout's view or bf16 copy of it, either may be None), summed where they are read; with the fused
    kernels the update leaves their sum. Holds nothing between backward passes.
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


class CarriedGradient(NamedTuple):
    """A read's share of ``dM_r_prev`` and of alpha1's gradient, left for the update that produced ``M_r_prev``
    (the lazy gradient, module docstring); read by :meth:`~stm_rl.memory.fused_kernels.FusedKernels.update_backward`."""

    next: Tensor
    """``dM_r`` of the read's step (its update's output gradient, in full)."""
    alpha: Tensor
    """alpha1 (0-dimensional): ``dM_r_prev = alpha1 * next + p (x) grad_mixed``."""
    slot_weights: Tensor
    """p of the read's step, ``[B, N]``."""
    grad_mixed: Tensor
    """``w (x) d v_r`` of the read's step, ``[B, d, d]``."""
    memory: Optional[Tensor]
    """``M_r_prev`` (or its bf16 copy) where alpha1's gradient ``<next, M_r_prev>`` is wanted, else None."""


class GradientLink:
    """Joins an update's output ``M_r`` (the fused path's) to the next step's read of it (the lazy gradient,
    module docstring). The update makes it and :func:`link_of` finds it on its output; one read may claim it;
    that read's backward pass leaves a :class:`CarriedGradient` in it, which the update's backward pass takes.

    Under bf16 autocast it also knows the bf16 copy of ``M_r`` the readout read: alpha1's gradient
    ``<dM_r_next, M_r>`` is then taken from it, half the bytes of ``M_r`` (a weak reference: the link lives on
    ``M_r`` and the copy's graph leads back to the update that holds the link).
    """

    __slots__ = ("claimed", "carried", "_copy")
    ATTRIBUTE = "_stm_gradient_link"

    def __init__(self) -> None:
        self.claimed = False
        self.carried: Optional[CarriedGradient] = None
        self._copy: Optional[weakref.ref] = None

    def attach(self, memory: Tensor, bf16_copy: Optional[Tensor] = None) -> None:
        setattr(memory, self.ATTRIBUTE, self)
        self._copy = None if bf16_copy is None else weakref.ref(bf16_copy)

    def bf16_copy(self) -> Optional[Tensor]:
        """The bf16 copy of the linked ``M_r`` (None without one, or once nothing else keeps it)."""
        return None if self._copy is None else self._copy()

    def claim(self) -> bool:
        """True for the first reader only (a second reader forms its gradient itself)."""
        first, self.claimed = not self.claimed, True
        return first

    def carry(self, carried: CarriedGradient) -> None:
        self.carried = carried

    def take(self) -> Optional[CarriedGradient]:
        carried, self.carried = self.carried, None
        return carried


def link_of(memory: Tensor) -> Optional[GradientLink]:
    """The :class:`GradientLink` of an update's output, None for any other tensor (a reset, a detached state)."""
    return getattr(memory, GradientLink.ATTRIBUTE, None)


class _RelationalRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memory: Tensor, slot_weights: Tensor, key: Tensor,
                handoff: Optional[MemoryGradientHandoff], alpha: Optional[Tensor],
                kernels: Optional[FusedKernels], link: Optional[GradientLink]) -> Tensor:
        batch, n, d, _ = memory.shape
        ctx.input_dtypes = (slot_weights.dtype, key.dtype, None if alpha is None else alpha.dtype)
        ctx.handoff, ctx.link = handoff, link
        ctx.kernels = kernels
        slot_weights, key = slot_weights.to(memory.dtype).contiguous(), key.to(memory.dtype).contiguous()
        alpha = memory.new_zeros(()) if alpha is None else alpha.to(memory.dtype)
        with torch.autocast(memory.device.type, enabled=False):  # explicit dtypes instead (module docstring)
            if kernels is not None:  # one pass: the slot mix and the per-slot reads, which give p's gradient
                mixed, reads = kernels.read_forward(memory, slot_weights, key)
                # alpha1's gradient on the lazy path reads M_r_prev's bf16 copy where the readout made one
                low = link.bf16_copy() if link is not None else None
                ctx.save_for_backward(memory, slot_weights, key, mixed, alpha, reads,
                                      *(() if low is None else (low,)))
                return (slot_weights.unsqueeze(1) @ reads).squeeze(1)  # v_r = sum_n p_n w^T M_r[n]
            with mkl_matmul():  # a vector-matrix product: MKL's shape (stm_rl.fp32_matmul)
                mixed = (slot_weights.unsqueeze(1) @ memory.flatten(2)).view(batch, d, d)  # sum_n p_n M_r[n]
            ctx.save_for_backward(memory, slot_weights, key, mixed, alpha)
            return (key.unsqueeze(1) @ mixed).squeeze(1)  # v_r = w^T mixed

    @staticmethod
    def backward(ctx, grad_read: Tensor):
        memory, slot_weights, key, mixed, alpha, *fused = ctx.saved_tensors
        reads, bf16_copy = (fused + [None, None])[:2]  # the fused path's per-slot reads and M_r_prev's bf16 copy
        batch, n, d, _ = memory.shape
        grad_read = grad_read.to(memory.dtype)
        weights_dtype, key_dtype, alpha_dtype = ctx.input_dtypes
        grad_memory = grad_weights = grad_key = grad_alpha = None
        grad_mixed = (key.unsqueeze(2) * grad_read.unsqueeze(1)).contiguous()  # w (x) d v_r: [B, d, d]
        update_grad, update_grad_readout = ctx.handoff.take() if ctx.handoff is not None else (None, None)
        need_alpha = ctx.needs_input_grad[4] and (update_grad is not None or update_grad_readout is not None)
        if ctx.kernels is not None:
            if ctx.needs_input_grad[1]:  # d p_n = <w^T M_r[n], d v_r>, as the row d v_r^T reads^T
                grad_weights = (grad_read.unsqueeze(1) @ reads.transpose(1, 2)).squeeze(1)
            lazy = ctx.link is not None and update_grad is not None and update_grad_readout is None
            if lazy:  # the previous step's update forms dM_r_prev and alpha1's gradient (module docstring)
                memory_for_alpha = memory if bf16_copy is None else bf16_copy
                ctx.link.carry(CarriedGradient(update_grad, alpha, slot_weights, grad_mixed,
                                               memory_for_alpha if need_alpha else None))
            else:  # everything that reads M_r_prev or dM_r, in one pass
                grad_memory, _, grad_alpha = ctx.kernels.memory_backward(
                    update_grad, update_grad_readout, memory, alpha, slot_weights, grad_mixed,
                    ctx.needs_input_grad[0], False, need_alpha)
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
        return grad_memory, grad_weights, grad_key, None, grad_alpha, None, None


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
    then returned here, or, where ``memory`` is the previous step's updated memory (the fused path's lazy
    gradient), formed by that update's backward pass.
    """
    kernels = fused_kernels_for(memory)
    link = link_of(memory) if handoff is not None and kernels is not None else None
    if link is not None and not link.claim():
        link = None
    alpha = None if handoff is None else handoff.alpha
    return _RelationalRead.apply(memory, slot_weights, key, handoff, alpha, kernels, link)
