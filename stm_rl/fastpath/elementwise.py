"""Elementwise functions faster than PyTorch's on CPUs: tanh through the sigmoid kernel, and the encoder's ELU.

tanh: the STM applies tanh to ``d x d`` and ``N x N x d`` tensors three times per step (the written item and the
memory fed to the gates, eq. 10, and SAM's scores, eq. 12). On the x86 CPUs this package is built for, PyTorch's
fp32 tanh kernel runs about 4-10x slower than its sigmoid kernel (0.5 G elements/s against 4.7 on AMD Zen 5,
torch 2.13); ``tanh(x) = 2 sigmoid(2x) - 1`` is exact in real arithmetic and in fp32 stays within 2e-7 of the true
value (torch.tanh: 3e-8), far below what the learning notices. The backward pass is the usual
``grad * (1 - y^2)`` from the saved output. Elsewhere (CUDA, float64, bf16) :func:`tanh` is :func:`torch.tanh`.

ELU (``stm_rl::elu``, :mod:`agents.elu`): PyTorch's CPU ELU evaluates ``expm1`` with a high-accuracy routine that
takes about 1 ns per number, in fp32 and in bf16: at 128 games per worker the small encoder's four ELUs and their
backward passes took about 3.5 ms of a 50 ms rollout step of the LSTM agent. The compiled kernel
(:mod:`stm_rl.fastpath.kernels`) makes one pass each way over the activations, in their dtype (float32, or bf16
under autocast) and layout (channels-last), with an exp accurate to about 1e-7 relative and ``exp(x) - 1`` formed
without cancellation near 0. It is used only where its AVX-512 version is compiled in: PyTorch's own ELU is
vectorised on every CPU, the portable loop is not (4x slower alone on a CPU without AVX-512).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stm_rl.fastpath.kernels import FusedKernels, elementwise_kernels_for


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


class _FusedELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernels: FusedKernels) -> Tensor:
        ctx.kernels = kernels
        ctx.save_for_backward(x)  # the slope exp(x) from the input, as accurate as PyTorch's
        return kernels.elu_forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return ctx.kernels.elu_backward(grad, x), None


def elu_cpu(x: Tensor) -> Tensor:
    """``stm_rl::elu`` on the CPU: the compiled kernel where its vectorised version serves ``x``, else PyTorch's."""
    kernels = elementwise_kernels_for(x)
    if kernels is None:
        return nn.functional.elu(x)
    return _FusedELU.apply(x, kernels)


def register(library: torch.library.Library) -> None:
    """Register :func:`elu_cpu` for ``AutogradCPU`` in ``library`` (an ``IMPL`` library of ``stm_rl``)."""
    library.impl("elu", elu_cpu, "AutogradCPU")
