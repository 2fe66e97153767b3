"""Numeric precision of an agent's forward and backward passes: fp32, or bf16 mixed precision.

``bf16`` runs the model under :func:`torch.autocast` with ``torch.bfloat16``: matrix products and
convolutions (the bulk of the work: the encoder, G2's readout of the relational memory, the LSTM's
products) run in bf16, reductions such as layer norm and softmax stay in fp32 (autocast's own op lists),
and the parameters, the optimizer and the losses stay in fp32. Only worth it where the hardware has
native bf16 arithmetic: elsewhere bf16 products are emulated, often many times slower than fp32, so
:func:`check_precision_supported` refuses them with a one-line message instead.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

import torch

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

_NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
"""``torch.cpu.get_capabilities()`` keys of native bf16 arithmetic (x86 AVX-512 BF16 / AMX, Arm BF16)."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products natively (not by emulation)."""
    capabilities = getattr(torch.cpu, "get_capabilities", lambda: {})()
    return any(capabilities.get(feature, False) for feature in _NATIVE_BF16_CPU_FEATURES)


def check_precision_supported(precision: str, device_type: str = "cpu") -> None:
    """Raise ``ValueError`` (one line, naming the flag) if ``precision`` cannot run fast on ``device_type``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision != "bf16":
        return
    if device_type == "cpu" and not cpu_has_native_bf16():
        raise ValueError("--precision bf16 needs a CPU with native bf16 arithmetic (AVX512-BF16, AMX or Arm BF16); "
                         "this CPU would emulate it, many times slower than fp32: use --precision fp32")
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16 needs a GPU with bf16 support; use --precision fp32")


def autocast(precision: str, device_type: str) -> ContextManager:
    """The autocast region of ``precision`` on ``device_type`` (a no-op context for fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
