"""Adam whose moments and step counts live in shared memory, for Hogwild A3C.

Every worker process holds the same optimizer object (its tensors point to the same shared storage), so
an update by any worker moves the shared parameters and the shared moments that all others read next.
The update itself is PyTorch's Adam (fused kernel where available, else the foreach one): one pass over
all parameters instead of a Python loop, which makes the per-update cost several times smaller.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


class SharedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with its state created eagerly and moved to shared memory.

    Call :meth:`share_memory` again after :meth:`load_state_dict` (loading replaces the state tensors).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-4, betas=(0.9, 0.999),
                 eps: float = 1e-3, amsgrad: bool = True) -> None:
        params = list(params)
        fused = all(p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) for p in params)
        super().__init__(params, lr=lr, betas=betas, eps=eps, amsgrad=amsgrad,
                         fused=fused or None, foreach=None if fused else True)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.share_memory()

    def share_memory(self) -> "SharedAdam":
        for state in self.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.share_memory_()
        return self

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.share_memory()
