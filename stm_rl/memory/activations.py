"""tanh for the STM's recurrence, computed as ``2 sigmoid(2x) - 1`` on CPUs in fp32.

The STM applies tanh three times per step to ``d x d`` and ``N x N x d`` tensors (the written item of
eq. 10, the memory fed to the forget/input gates, and the SAM scores of eq. 12). On the x86 CPUs this
package is built for, PyTorch's fp32 tanh kernel runs about 4-10x slower than its sigmoid kernel
(0.5 G elements/s against 4.7 on AMD Zen 5, torch 2.13); ``tanh(x) = 2 sigmoid(2x) - 1`` is exact in
real arithmetic and in fp32 stays within 2e-7 of the true value (torch.tanh: 3e-8), far below what the
learning notices. The backward pass is the usual ``grad * (1 - y^2)`` from the saved output.

Elsewhere (CUDA, float64 as in gradcheck, bf16) this is plain :func:`torch.tanh`.
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
