"""tanh through the sigmoid kernel, faster than PyTorch's tanh on CPUs.

The STM applies tanh to ``d x d`` and ``N x N x d`` tensors three times per step (the written item and the
memory fed to the gates, eq. 10, and SAM's scores, eq. 12). On the x86 CPUs this package is built for, PyTorch's
fp32 tanh kernel runs about 4-10x slower than its sigmoid kernel (0.5 G elements/s against 4.7 on AMD Zen 5,
torch 2.13); ``tanh(x) = 2 sigmoid(2x) - 1`` is exact in real arithmetic and in fp32 stays within 2e-7 of the true
value (torch.tanh: 3e-8), far below what the learning notices. The backward pass is the usual
``grad * (1 - y^2)`` from the saved output. Elsewhere (CUDA, float64, bf16) :func:`tanh` is :func:`torch.tanh`.

The small encoder's ELU had a compiled kernel here until its AVX-512 version was found to pay under 1% of an
agent's training step; the encoder now uses PyTorch's ELU.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _SigmoidTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: Tensor) -> Tensor:
    """``torch.tanh(x)``, through the sigmoid kernel for fp32 tensors on the CPU (module docstring)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return _SigmoidTanh.apply(x)
    return torch.tanh(x)
