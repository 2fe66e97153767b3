"""ELU (alpha = 1) for the small frame encoder, one vectorised pass each way on CPUs (issue 10).

PyTorch's CPU ELU evaluates ``expm1`` with a high-accuracy routine that takes about 1 ns per number on the
CPUs this package is built for, in fp32 and in bf16: at 128 games per worker the small encoder's four ELUs
and their backward passes took about 3.5 ms of a 50 ms rollout step of the LSTM agent. Where the fused CPU
kernels run (:mod:`stm_rl.memory.fused_kernels`: CPU, one PyTorch thread) forward and backward are one pass
each over the activations, in their dtype (float32, or bf16 under autocast) and layout (channels-last),
with an exp accurate to about 1e-7 relative and ``exp(x) - 1`` formed without cancellation near 0.
Elsewhere :func:`torch.nn.functional.elu` computes it. The module has no parameters: checkpoints are
those of :class:`torch.nn.ELU`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stm_rl.memory.fused_kernels import elementwise_kernels_for


class _FusedELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernels) -> Tensor:
        ctx.kernels = kernels
        ctx.save_for_backward(x)  # the slope exp(x) from the input, as accurate as PyTorch's
        return kernels.elu_forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return ctx.kernels.elu_backward(grad, x), None


class ELU(nn.Module):
    """``x`` where ``x > 0``, else ``exp(x) - 1``: :class:`torch.nn.ELU` with its default alpha of 1."""

    def forward(self, x: Tensor) -> Tensor:
        kernels = elementwise_kernels_for(x)
        if kernels is None:
            return nn.functional.elu(x)
        return _FusedELU.apply(x, kernels)
