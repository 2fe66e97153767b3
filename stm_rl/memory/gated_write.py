"""The gated write into the item memory (paper eq. 10 with the gates of Appendix D; spec STM.md section 3
steps 2-4) as one autograd function.

``M' = I (.) tanh(u (x) u) + F (.) M_i_prev`` with the input and forget gates
``[I, F] = sigmoid(tanh(M_i_prev) W_gate^T + offset)``, where ``offset`` (``[B, 2d]``, the same for every row
of the memory) holds the gates' input half ``gate_in(u)`` and all their biases. The gates' matrix product
(``[B*d, d] x [d, 2d]``) is a BLAS product; everything around it is elementwise over ``[B, d, d]`` and
``[B, d, 2d]`` tensors, which PyTorch runs as about fifteen passes forward (tanh, a broadcast add, the
sigmoid, the outer product, its tanh, two products and a sum) and about twenty-five backward. On the CPU
(one PyTorch thread, the A3C workers' setting) the fused kernels (:mod:`stm_rl.memory.fused_kernels`) make
one pass before the product and one after it, each way, recomputing the sigmoids and the tanh in the
backward pass instead of saving them (issue 10). Elsewhere the same values come from PyTorch operations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stm_rl.memory.activations import tanh
from stm_rl.memory.fused_kernels import fused_kernels_for


class _GatedWrite(torch.autograd.Function):
    """The whole gated write: ``tanh(M_i_prev)`` and the elementwise parts by the kernels, the gates' matrix
    products (forward, and the two of the backward pass) by BLAS in between."""

    @staticmethod
    def forward(ctx, item: Tensor, u: Tensor, weight: Tensor, offset: Tensor, kernels) -> Tensor:
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


def gated_write(item: Tensor, u: Tensor, weight: Tensor, offset: Tensor) -> Tensor:
    """``M'`` (``[B, d, d]``) from the previous item memory and the gates' parameters and inputs.

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
    kernels = fused_kernels_for(item)
    if kernels is not None and all(t.dtype == item.dtype for t in (u, weight, offset)):
        return _GatedWrite.apply(item, u, weight, offset, kernels)
    preactivation = nn.functional.linear(tanh(item), weight)  # [B, d, 2d]
    input_gate, forget_gate = torch.sigmoid(preactivation + offset.unsqueeze(1)).chunk(2, dim=-1)
    return torch.addcmul(input_gate * tanh(u.unsqueeze(2) * u.unsqueeze(1)), forget_gate, item)
