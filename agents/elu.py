"""ELU (alpha = 1) for the small frame encoder, as the operator ``stm_rl::elu``.

Its definition is :func:`torch.nn.functional.elu`, registered as the operator's kernel for every device; the
optional fast path (:mod:`stm_rl.fastpath`) registers a faster CPU kernel for it. The module has no parameters:
checkpoints are those of :class:`torch.nn.ELU`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_LIBRARY = torch.library.Library("stm_rl", "FRAGMENT")
_LIBRARY.define("elu(Tensor x) -> Tensor")


def elu_reference(x: Tensor) -> Tensor:
    """The definition: :func:`torch.nn.functional.elu` with alpha 1."""
    return nn.functional.elu(x)


_LIBRARY.impl("elu", elu_reference, "CompositeImplicitAutograd")


class ELU(nn.Module):
    """``x`` where ``x > 0``, else ``exp(x) - 1``: :class:`torch.nn.ELU` with its default alpha of 1."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.stm_rl.elu(x)
