"""``alpha * x`` for a scalar tensor alpha and a large x, without a temporary for alpha's gradient.

Autograd's ``alpha * x`` computes alpha's gradient as ``(grad * x).sum()``, which materialises a
tensor of x's size only to sum it. For the relational memory of the STM (``alpha1 * M_r_prev``, spec
section 3 step 6 / paper eq. 12; ``B x N x d x d``, 38 MB per step at batch 128) that temporary and
its extra pass are a visible share of the backward pass. Here the gradient is a dot product per
sample (one batched matrix product over the flattened tensors), which reads ``grad`` and ``x`` once and
allocates only B numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(x, alpha)
        return x * alpha

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, alpha = ctx.saved_tensors
        grad_x = grad * alpha if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            batch = x.shape[0] if x.dim() > 1 else 1
            # sum_i grad_i x_i as B dot products of length numel / B (the batch dimension may be
            # expanded, e.g. the initial memory, so x is broadcast against grad rather than viewed).
            flat_grad = grad.reshape(batch, 1, -1)
            flat_x = x.expand_as(grad).reshape(batch, -1, 1)
            grad_alpha = torch.bmm(flat_grad, flat_x).sum().reshape(alpha.shape)
        return grad_x, grad_alpha


def scale(x: Tensor, alpha: Tensor) -> Tensor:
    """``x * alpha`` for a 0-dimensional tensor ``alpha``, differentiable in both."""
    if alpha.dim() != 0:
        raise ValueError(f"scale expects a 0-dimensional alpha, got shape {list(alpha.shape)}")
    return _Scale.apply(x, alpha)
