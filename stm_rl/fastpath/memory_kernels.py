"""CPU kernels for the memory core's operators (:mod:`stm_rl.memory.ops`): fused passes and cheaper gradients.

Registered for the ``AutogradCPU`` dispatch key by :func:`register` (called by :func:`stm_rl.fastpath.enable`),
each kernel computes its operator's reference (eqs. 10-12, the same numbers within float rounding) as one
autograd function:

- with the compiled kernels (:mod:`stm_rl.fastpath.kernels`: CPU, float32/64, one PyTorch thread) one pass each
  way over the ``B x d x d`` and ``B x N x d x d`` tensors where PyTorch's composition makes ten to twenty;
- otherwise PyTorch operations arranged for CPUs: tanh through the sigmoid kernel
  (:func:`stm_rl.fastpath.elementwise.tanh`), the relational read's vector-matrix products through MKL, and
  backward passes that avoid full-size temporaries, inner-size-1 batched products and batched products with one
  or N output columns (which run many times slower than their transposes at batch > 1 on CPUs: issue 10).

The lazy gradient (issue 10). On the kernels' path, the relational update's output ``M_r`` carries a
:class:`GradientLink`. The next step's read and update of that memory (each the first of its kind to claim the
link) do not form their gradients of it: their backward passes leave their shares in the link, ``alpha1 dM_r``
for the update and ``p (x) d mixed`` for the read, and the update that produced ``M_r``, whose backward pass runs
after both and reads ``dM_r`` anyway, adds them row by row while it reads, and takes the next step's alpha1
gradient ``<dM_r_next, M_r>`` in the same pass (returned as a gradient of its own alpha1: the claiming update
must use the same alpha1 tensor). A step's backward passes then read the relational memory's gradient about
twice instead of five times.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from stm_rl.fastpath.elementwise import tanh
from stm_rl.fastpath.fp32_matmul import mkl_matmul
from stm_rl.fastpath.kernels import FusedKernels, fused_kernels_for
from stm_rl.memory.ops import (gated_write_reference, relational_read_reference, relational_update_reference,
                               sam_scores_reference)


class CarriedGradient(NamedTuple):
    """What the next step leaves for the update that produced its ``M_r_prev`` (the lazy gradient, module
    docstring); read by :meth:`~stm_rl.fastpath.kernels.FusedKernels.update_backward`."""

    next: Tensor
    """``dM_r`` of the next step (its update's output gradient, in full)."""
    alpha: Tensor
    """That update's alpha1 (0-dimensional): ``dM_r_prev += alpha1 * next + p (x) grad_mixed``."""
    slot_weights: Optional[Tensor]
    """p of the next step's read, ``[B, N]`` (None without a read)."""
    grad_mixed: Optional[Tensor]
    """``w (x) d v_r`` of the next step's read, ``[B, d, d]`` (None without a read)."""
    memory: Optional[Tensor]
    """``M_r_prev`` where alpha1's gradient ``<next, M_r_prev>`` is wanted, else None."""


class GradientLink:
    """Joins an update's output ``M_r`` to the next step's read and update of it (the lazy gradient, module
    docstring). Made by the update's kernel and found on its output by :func:`link_of`; one read and one update
    (with the producer's alpha1) may claim it; their backward passes leave their shares, which the producing
    update's backward pass takes."""

    __slots__ = ("alpha", "read_claimed", "update_claimed", "update_share", "read_share")
    ATTRIBUTE = "_stm_gradient_link"

    def __init__(self, alpha: Tensor) -> None:
        self.alpha = alpha
        self.read_claimed = self.update_claimed = False
        self.update_share: Optional[tuple[Tensor, Tensor, Optional[Tensor]]] = None
        self.read_share: Optional[tuple[Tensor, Tensor]] = None

    def claim_read(self) -> bool:
        first, self.read_claimed = not self.read_claimed, True
        return first

    def claim_update(self, alpha: Tensor) -> bool:
        if self.update_claimed or alpha is not self.alpha:
            return False
        self.update_claimed = True
        return True

    def take(self, like: Tensor) -> Optional[CarriedGradient]:
        """The shares left since the last take, as one :class:`CarriedGradient` (None if nothing was left)."""
        update_share, read_share = self.update_share, self.read_share
        self.update_share = self.read_share = None
        if update_share is None and read_share is None:
            return None
        if update_share is None:  # only a read claimed the memory: nothing to scale
            update_share = (torch.zeros_like(like), like.new_zeros(()), None)
        following, alpha, memory = update_share
        slot_weights, grad_mixed = read_share if read_share is not None else (None, None)
        return CarriedGradient(following, alpha, slot_weights, grad_mixed, memory)


def link_of(memory: Tensor) -> Optional[GradientLink]:
    """The :class:`GradientLink` of an update's output, None for any other tensor (a reset, a detached state)."""
    return getattr(memory, GradientLink.ATTRIBUTE, None)


def _same_dtype(*tensors: Tensor) -> bool:
    return all(t.dtype == tensors[0].dtype for t in tensors)


# ---------------------------------------------------------------------------------------------- gated write (eq. 10)

class _GatedWrite(torch.autograd.Function):
    """The whole gated write: ``tanh(M_i_prev)`` and the elementwise parts by the kernels, the gates' matrix
    products (forward, and the two of the backward pass) by BLAS in between. The kernels make one pass before the
    product and one after it, each way, recomputing the sigmoids and the tanh backward instead of saving them."""

    @staticmethod
    def forward(ctx, item: Tensor, u: Tensor, weight: Tensor, offset: Tensor, kernels: FusedKernels) -> Tensor:
        batch, d = u.shape
        ctx.kernels = kernels
        u, offset = u.contiguous(), offset.contiguous()
        squashed = kernels.tanh(item)  # tanh(M_i_prev), [B, d, d]
        preactivation = (squashed.view(batch * d, d) @ weight.t()).view(batch, d, 2 * d)
        ctx.save_for_backward(item, u, weight, offset, squashed, preactivation)
        return kernels.gated_write_forward(item, u, preactivation, offset)

    @staticmethod
    def backward(ctx, grad: Tensor):
        item, u, weight, offset, squashed, preactivation = ctx.saved_tensors
        need_item, need_u, need_weight, need_offset = ctx.needs_input_grad[:4]
        batch, d = u.shape
        grad_item, grad_u, grad_pre, grad_offset = ctx.kernels.gated_write_backward(
            grad.contiguous(), item, u, preactivation, offset, need_item, need_u,
            need_item or need_weight or need_offset)
        grad_weight = None
        if need_weight:  # transposed, [d, B*d] x [B*d, 2d]: oneDNN runs it ~20% faster than [2d, B*d] x [B*d, d]
            grad_weight = (squashed.view(batch * d, d).t() @ grad_pre.view(batch * d, 2 * d)).t()
        if need_item:  # the path through tanh(M_i_prev) and the gates, added to the direct one in place
            upstream = (grad_pre.view(batch * d, 2 * d) @ weight).view(batch, d, d)
            ctx.kernels.tanh_backward_add(grad_item, upstream, squashed)
        return grad_item, grad_u, grad_weight, grad_offset if need_offset else None, None


def gated_write_cpu(item: Tensor, u: Tensor, weight: Tensor, offset: Tensor) -> Tensor:
    """``stm_rl::gated_write`` on the CPU."""
    kernels = fused_kernels_for(item)
    if kernels is not None and _same_dtype(item, u, weight, offset):
        return _GatedWrite.apply(item, u, weight, offset, kernels)
    return gated_write_reference(item, u, weight, offset, tanh=tanh)


# ------------------------------------------------------------------------------------------ SAM's scores (eq. 2)

class _SamScores(torch.autograd.Function):
    """The scores in one pass each way (the two readers' gradients arrive summed by autograd)."""

    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor, kernels: FusedKernels) -> Tensor:
        ctx.kernels = kernels
        queries, keys = queries.contiguous(), keys.contiguous()
        scores = kernels.scores_forward(queries, keys)
        ctx.save_for_backward(queries, keys, scores)
        return scores

    @staticmethod
    def backward(ctx, grad: Tensor):
        queries, keys, scores = ctx.saved_tensors
        grad_queries, grad_keys = ctx.kernels.scores_backward(grad.contiguous(), None, scores, queries, keys)
        return grad_queries, grad_keys, None


def sam_scores_cpu(queries: Tensor, keys: Tensor) -> Tensor:
    """``stm_rl::sam_scores`` on the CPU."""
    kernels = fused_kernels_for(queries)
    if kernels is not None and _same_dtype(queries, keys):
        return _SamScores.apply(queries, keys, kernels)
    return sam_scores_reference(queries, keys, tanh=tanh)


# ---------------------------------------------------------------------------------------- relational read (eq. 11)

class _RelationalRead(torch.autograd.Function):
    """``v_r = w^T (sum_n p_n M_r[n])``: the slots mixed first (one ``[1, N] x [N, d*d]`` product per sample),
    then read with w. Autograd would differentiate the slot mix with a batched product of inner size 1
    (``p (x) d mixed``, ``B x N x d x d`` outputs), about 10x slower than the equivalent broadcast multiply used
    here; p's gradient is one row-vector product per sample (one output column is about 13x slower). With the
    kernels the forward pass reads ``M_r`` once for the slot mix and the per-slot reads ``w^T M_r[n]``, which give
    p's gradient without reading ``M_r`` again."""

    @staticmethod
    def forward(ctx, memory: Tensor, slot_weights: Tensor, key: Tensor, kernels: Optional[FusedKernels],
                link: Optional[GradientLink]) -> Tensor:
        batch, _, d, _ = memory.shape
        ctx.kernels, ctx.link = kernels, link
        slot_weights, key = slot_weights.contiguous(), key.contiguous()
        with torch.autocast("cpu", enabled=False):
            if kernels is not None:
                mixed, reads = kernels.read_forward(memory, slot_weights, key)
                ctx.save_for_backward(memory, slot_weights, key, mixed, reads)
                return (slot_weights.unsqueeze(1) @ reads).squeeze(1)  # v_r = sum_n p_n w^T M_r[n]
            with mkl_matmul():  # a vector-matrix product: MKL's shape (stm_rl.fastpath.fp32_matmul)
                mixed = (slot_weights.unsqueeze(1) @ memory.flatten(2)).view(batch, d, d)  # sum_n p_n M_r[n]
            ctx.save_for_backward(memory, slot_weights, key, mixed)
            return (key.unsqueeze(1) @ mixed).squeeze(1)  # v_r = w^T mixed

    @staticmethod
    def backward(ctx, grad_read: Tensor):
        memory, slot_weights, key, mixed, *fused = ctx.saved_tensors
        batch, slots, d, _ = memory.shape
        grad_memory = grad_weights = grad_key = None
        grad_mixed = (key.unsqueeze(2) * grad_read.unsqueeze(1)).contiguous()  # w (x) d v_r: [B, d, d]
        if ctx.needs_input_grad[1]:
            if fused:  # d p_n = <w^T M_r[n], d v_r>, as the row d v_r^T reads^T
                grad_weights = (grad_read.unsqueeze(1) @ fused[0].transpose(1, 2)).squeeze(1)
            else:  # d p_n = <M_r[n], d mixed>, as a row vector times M_r^T
                with mkl_matmul():
                    grad_weights = (grad_mixed.view(batch, 1, d * d) @ memory.flatten(2).transpose(1, 2)).squeeze(1)
        if ctx.needs_input_grad[0]:
            if ctx.link is not None:  # the update that produced M_r adds p (x) d mixed (module docstring)
                ctx.link.read_share = (slot_weights, grad_mixed)
            elif ctx.kernels is not None:
                grad_memory = ctx.kernels.memory_backward(None, memory, memory.new_zeros(()), slot_weights, grad_mixed,
                                                          True, False, False)[0]
            else:  # p_n * d mixed for every slot
                grad_memory = (slot_weights.unsqueeze(2) * grad_mixed.view(batch, 1, d * d)).view(batch, slots, d, d)
        if ctx.needs_input_grad[2]:  # d w = mixed d v_r, as the row d v_r^T mixed^T (one output column is ~8x slower)
            grad_key = (grad_read.unsqueeze(1) @ mixed.transpose(1, 2)).squeeze(1)
        return grad_memory, grad_weights, grad_key, None, None


def relational_read_cpu(memory: Tensor, slot_weights: Tensor, key: Tensor) -> Tensor:
    """``stm_rl::relational_read`` on the CPU."""
    if not _same_dtype(memory, slot_weights, key):
        return relational_read_reference(memory, slot_weights, key)
    kernels = fused_kernels_for(memory)
    link = link_of(memory) if kernels is not None and torch.is_grad_enabled() else None
    if link is not None and not link.claim_read():
        link = None
    return _RelationalRead.apply(memory, slot_weights, key, kernels, link)


# -------------------------------------------------------------------------------------- relational update (eq. 12)

class _RelationalUpdate(torch.autograd.Function):
    """``M_r = alpha1 M_r_prev + scores^T V`` as one batched ``baddbmm`` (or one kernel pass). Autograd would
    differentiate it into products whose output has only N columns (``dA V^T``), which oneDNN/MKL run at a fraction
    of their speed; this backward computes the same gradient transposed, ``V dA^T``. alpha1's gradient is one dot
    product of ``dM_r`` with ``M_r_prev``. With the kernels, one pass over ``dM_r`` gives the gradients of the scores
    and the values, adds what the next step left in this output's :class:`GradientLink`, and takes that step's
    alpha1 gradient."""

    @staticmethod
    def forward(ctx, memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor, kernels: Optional[FusedKernels],
                link: Optional[GradientLink], output_link: Optional[GradientLink]) -> Tensor:
        ctx.set_materialize_grads(False)  # an output nothing reads directly gets no (zero-filled) gradient
        ctx.kernels, ctx.link, ctx.output_link = kernels, link, output_link
        scores, values = scores.contiguous(), values.contiguous()
        with torch.autocast("cpu", enabled=False):
            if kernels is not None:
                updated = kernels.update_forward(memory, alpha, scores, values)
            else:
                batch, slots, d, _ = memory.shape
                updated = memory * alpha
                updated.view(batch, slots * d, d).baddbmm_(scores.transpose(1, 2), values)
        ctx.save_for_backward(memory, alpha, scores, values)
        return updated

    @staticmethod
    def backward(ctx, grad: Optional[Tensor]):
        carried = ctx.output_link.take(ctx.saved_tensors[0]) if ctx.output_link is not None else None
        if grad is None and carried is None:  # no gradient flows
            return None, None, None, None, None, None, None
        memory, alpha, scores, values = ctx.saved_tensors
        need_memory, need_alpha, need_scores, need_values = ctx.needs_input_grad[:4]
        grad_memory = grad_alpha = grad_scores = grad_values = None
        grad = None if grad is None else grad.contiguous()
        if ctx.kernels is not None:  # dM_r = grad + carried, read once for both products
            grad_scores, grad_values, full, grad_alpha = ctx.kernels.update_backward(
                grad, scores, values, need_scores, need_values, carried, need_full=need_memory or need_alpha)
            if ctx.link is not None and full is not None:  # its producer forms its gradient and alpha1's
                ctx.link.update_share = (full, alpha, memory if need_alpha else None)
            elif full is not None:
                grad_memory, _, own_alpha = ctx.kernels.memory_backward(full, memory, alpha, None, None,
                                                                        need_memory, False, need_alpha)
                grad_alpha = own_alpha if grad_alpha is None else grad_alpha + own_alpha
        else:
            batch, slots, d, _ = memory.shape
            flat_grad = grad.view(batch, slots * d, d)
            if need_scores:  # d scores = V dA^T: [N, d] x [d, N*d] per sample
                grad_scores = torch.bmm(values, flat_grad.transpose(1, 2))
            if need_values:  # d V = scores dA: [N, N*d] x [N*d, d] per sample
                grad_values = torch.bmm(scores, flat_grad)
            if need_memory:
                grad_memory = grad * alpha
            if need_alpha:
                grad_alpha = memory_dot(grad, memory)
        return grad_memory, grad_alpha, grad_scores, grad_values, None, None, None


def memory_dot(grad: Tensor, memory: Tensor) -> Tensor:
    """``<dM_r, M_r_prev>`` (alpha1's gradient; ``memory`` may be expanded over the batch), 0-dimensional: BLAS dot
    through MKL (oneDNN runs a dot product as a ``[1, L] x [L, 1]`` product, ~5x slower)."""
    with mkl_matmul():
        return torch.dot(grad.reshape(-1), memory.expand_as(grad).reshape(-1))


def relational_update_cpu(memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor) -> Tensor:
    """``stm_rl::relational_update`` on the CPU; on the kernels' path its output carries a :class:`GradientLink`
    for the next step (module docstring)."""
    if not _same_dtype(memory, alpha, scores, values):
        return relational_update_reference(memory, alpha, scores, values)
    kernels = fused_kernels_for(memory)
    link = link_of(memory) if kernels is not None and torch.is_grad_enabled() else None
    if link is not None and not link.claim_update(alpha):
        link = None
    output_link = GradientLink(alpha) if kernels is not None and torch.is_grad_enabled() else None
    updated = _RelationalUpdate.apply(memory, alpha, scores, values, kernels, link, output_link)
    if output_link is not None:
        setattr(updated, GradientLink.ATTRIBUTE, output_link)
    return updated


KERNELS = {"gated_write": gated_write_cpu, "sam_scores": sam_scores_cpu,
           "relational_read": relational_read_cpu, "relational_update": relational_update_cpu}
"""The CPU kernel of each operator of :mod:`stm_rl.memory.ops`."""


def register(library: torch.library.Library) -> None:
    """Register :data:`KERNELS` for ``AutogradCPU`` in ``library`` (an ``IMPL`` library of the ``stm_rl``
    namespace, kept alive by the caller: the registrations last as long as it does)."""
    for name, kernel in KERNELS.items():
        library.impl(name, kernel, "AutogradCPU")
