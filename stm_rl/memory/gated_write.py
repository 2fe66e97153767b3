"""The gated write into the item memory (paper eq. 10 with the gates of Appendix D; spec STM.md section 3
steps 2-4) as one autograd function.

``M' = I (.) tanh(u (x) u) + F (.) M_i_prev`` with the input and forget gates
``[I, F] = sigmoid(tanh(M_i_prev) W_gate^T + offset)``, where ``offset`` (``[B, 2d]``, the same for every row
of the memory) holds the gates' input half ``gate_in(u)`` and all their biases. The gate's matrix product
(``[B*d, d] x [d, 2d]``) stays a BLAS product outside this function; everything after it is elementwise
over ``[B, d, d]`` and ``[B, d, 2d]`` tensors, which PyTorch runs as about ten passes forward (a broadcast
add, the sigmoid, the outer product, its tanh, two products and a sum) and about twenty backward. On the
CPU (one PyTorch thread, the A3C workers' setting) the fused kernels (:mod:`stm_rl.memory.fused_kernels`)
do each direction in one pass, recomputing the sigmoids and the tanh in the backward pass instead of
saving them (issue 10). Elsewhere the same values come from PyTorch operations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stm_rl.memory.activations import tanh
from stm_rl.memory.fused_kernels import fused_kernels_for


class _GatedWrite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, item: Tensor, u: Tensor, preactivation: Tensor, offset: Tensor, kernels) -> Tensor:
        ctx.kernels = kernels
        u, preactivation, offset = (t.contiguous() for t in (u, preactivation, offset))
        ctx.save_for_backward(item, u, preactivation, offset)
        return kernels.gated_write_forward(item, u, preactivation, offset)

    @staticmethod
    def backward(ctx, grad: Tensor):
        item, u, preactivation, offset = ctx.saved_tensors
        need_item, need_u, need_pre, need_offset = ctx.needs_input_grad[:4]
        grad_item, grad_u, grad_pre, grad_offset = ctx.kernels.gated_write_backward(
            grad.contiguous(), item, u, preactivation, offset, need_item, need_u, need_pre or need_offset)
        return grad_item, grad_u, grad_pre, grad_offset, None


def gated_write(item: Tensor, u: Tensor, preactivation: Tensor, offset: Tensor) -> Tensor:
    """``M'`` (``[B, d, d]``) from the previous item memory and the gates' inputs.

    Args:
        item: ``M_i_prev``, ``[B, d, d]`` (may be expanded over the batch).
        u: the item written, f1(x), ``[B, d]``.
        preactivation: the gates' matrix product ``tanh(M_i_prev) W_gate^T``, ``[B, d, 2d]`` (input gate
            first, then forget gate), without bias.
        offset: what every row's gates add to it, ``[B, 2d]`` (``gate_in(u)`` and the biases).
    """
    batch, d = u.shape
    if item.shape != (batch, d, d) or preactivation.shape != (batch, d, 2 * d) or offset.shape != (batch, 2 * d):
        raise ValueError(f"gated_write: shapes {list(item.shape)}, {list(u.shape)}, {list(preactivation.shape)}, "
                         f"{list(offset.shape)} do not fit [B, d, d], [B, d], [B, d, 2d], [B, 2d]")
    kernels = fused_kernels_for(item)
    if kernels is not None and all(t.dtype == item.dtype for t in (u, preactivation, offset)):
        return _GatedWrite.apply(item, u, preactivation, offset, kernels)
    input_gate, forget_gate = torch.sigmoid(preactivation + offset.unsqueeze(1)).chunk(2, dim=-1)
    return torch.addcmul(input_gate * tanh(u.unsqueeze(2) * u.unsqueeze(1)), forget_gate, item)
