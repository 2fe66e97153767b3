"""Numeric precision of an agent's forward and backward passes: fp32, or bf16 mixed precision.

``bf16`` runs the model under :func:`torch.autocast` with ``torch.bfloat16``: matrix products and
convolutions (the bulk of the work: the encoder and G2's readout of the relational memory) run in bf16,
reductions such as layer norm and softmax stay in fp32 (autocast's own op lists), the LSTM and the STM's
recurrence (eqs. 9-13) run in fp32, and the parameters, the optimizer and the losses stay in fp32. Only
worth it where the hardware has native bf16 arithmetic: elsewhere bf16 products are emulated, often many
times slower than fp32, so
:func:`check_precision_supported` refuses them with a one-line message instead.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal, Optional

import torch


Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

_NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
"""Capability keys (:func:`cpu_capabilities`) of native bf16 arithmetic (x86 AVX-512 BF16 / AMX, Arm BF16)."""


def cpu_capabilities() -> dict:
    """``torch.cpu.get_capabilities()`` (instruction-set features of this CPU), empty where torch lacks it."""
    return getattr(torch.cpu, "get_capabilities", lambda: {})()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products natively (not by emulation)."""
    capabilities = cpu_capabilities()
    return any(capabilities.get(feature, False) for feature in _NATIVE_BF16_CPU_FEATURES)


def unsupported_reason(precision: str, device_type: str = "cpu") -> Optional[str]:
    """Why ``precision`` cannot run fast on ``device_type`` (one line naming the flag), or None if it can."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}"
    if precision != "bf16":
        return None
    if device_type == "cpu" and not cpu_has_native_bf16():
        return ("--precision bf16 needs a CPU with native bf16 arithmetic (AVX512-BF16, AMX or Arm BF16); "
                "this CPU would emulate it, many times slower than fp32: use --precision fp32")
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return "--precision bf16 needs a GPU with bf16 support; use --precision fp32"
    return None


def check_precision_supported(precision: str, device_type: str = "cpu") -> None:
    """Raise ``ValueError`` (one line, naming the flag) if ``precision`` cannot run fast on ``device_type``."""
    reason = unsupported_reason(precision, device_type)
    if reason:
        raise ValueError(reason)


def playing_precision(precision: str, device_type: str = "cpu") -> tuple[str, Optional[str]]:
    """The precision to play a saved agent in, and a one-line notice if it is not the trained one.

    Training refuses a precision the hardware would emulate; playing falls back to fp32 instead, which is
    always possible because the weights are fp32 in every precision (bf16 only changes the arithmetic).
    """
    if precision == "bf16" and unsupported_reason(precision, device_type):
        return "fp32", (f"this {device_type.upper()} has no native bf16 arithmetic: the agent, trained with "
                        "--precision bf16, plays in fp32 (the same weights; only the rounding differs)")
    return precision, None


def autocast(precision: str, device_type: str) -> ContextManager:
    """The autocast region of ``precision`` on ``device_type``: a no-op context for fp32, and inside a bf16
    region already open (a rollout's region around its steps' own), so that nested regions cost nothing."""
    if precision == "bf16" and not (torch.is_autocast_enabled(device_type)
                                    and torch.get_autocast_dtype(device_type) == torch.bfloat16):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
