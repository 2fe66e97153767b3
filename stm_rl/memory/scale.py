"""``alpha * x`` for a scalar tensor alpha and a large x, without a temporary for alpha's gradient.

Autograd's ``alpha * x`` computes alpha's gradient as ``(grad * x).sum()``, which materialises a
tensor of x's size only to sum it. For the relational memory of the STM (``alpha1 * M_r_prev``, spec
section 3 step 6 / paper eq. 12; ``B x N x d x d``, 38 MB per step at batch 128) that temporary and
its extra pass are a visible share of the backward pass. Here the gradient is one dot product over
the flattened tensors (BLAS ``dot``), which reads ``grad`` and ``x`` once and allocates nothing. (A batched
``[1, L] x [L, 1]`` product, the earlier form, runs about 9x slower at batch 16 on oneDNN/MKL CPUs.)
For bf16 and fp16, whose BLAS dot is not vectorised, it is a multiply and an fp32-accumulated sum.

The product keeps x's dtype (under bf16 autocast a bf16 memory stays bf16, scaled by an fp32 alpha),
and alpha's gradient is returned in alpha's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(x, alpha)
        return x * alpha.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, alpha = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = grad * alpha.to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # sum_i grad_i x_i (x may be expanded over the batch, e.g. the initial memory: broadcast it).
            flat_grad, flat_x = grad.reshape(-1), x.expand_as(grad).reshape(-1)
            if grad.dtype in (torch.float32, torch.float64):
                grad_alpha = torch.dot(flat_grad, flat_x)
            else:
                grad_alpha = (flat_grad * flat_x).sum(dtype=torch.float32)
            grad_alpha = grad_alpha.reshape(alpha.shape).to(alpha.dtype)
        return grad_x, grad_alpha


def scale(x: Tensor, alpha: Tensor) -> Tensor:
    """``x * alpha`` for a 0-dimensional tensor ``alpha``, differentiable in both."""
    if alpha.dim() != 0:
        raise ValueError(f"scale expects a 0-dimensional alpha, got shape {list(alpha.shape)}")
    return _Scale.apply(x, alpha)
