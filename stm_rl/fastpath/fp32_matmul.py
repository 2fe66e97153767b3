"""Which library computes fp32 matrix products on the CPU: MKL (PyTorch's default) or oneDNN.

PyTorch's CPU wheels send fp32 ``mm``/``addmm``/``bmm`` to MKL, which on AMD processors runs a code path
that uses half the width of AVX-512 (about 103 GFLOP/s on one core of the AMD EPYC Zen 5 this package is
built on, against about 230 for oneDNN's AVX-512 kernels on the same shapes). PyTorch sends them to oneDNN
instead when ``torch.backends.mkldnn.matmul.fp32_precision`` is ``"bf16"``, a setting that *allows* oneDNN
to round the operands to bf16 where that is faster (it does so with AMX units, on recent Intel CPUs).
On CPUs with AVX512-BF16 but no AMX, oneDNN keeps fp32 arithmetic: the results are fp32 results.

:func:`use_onednn_for_fp32_matmul` turns the setting on only where a probe shows exact fp32 arithmetic,
so fp32 stays fp32 everywhere. :func:`mkl_matmul` switches it off around the few products oneDNN runs
slower (matrix-vector shapes: the relational read's, and dot products). The environment variable
``STM_RL_FP32_MATMUL=mkl`` keeps MKL in the processes that :func:`stm_rl.fastpath.enable`
sets up (``auto``, the default, probes): ``benchmarks/train_speed.py --fp32-matmul auto mkl`` compares both.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

_PROBE_SHAPES = ((64, 64, 64), (256, 1024, 96), (3072, 96, 192))
"""(m, k, n) of the probe's products: square, a G2-like reduction over d*d, the gates' tall product."""


def _onednn_setting_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.backends.mkldnn, "matmul")


def _products_are_fp32() -> bool:
    """Whether fp32 products under the current setting keep fp32's precision: ``1 + 2^-10`` (which bf16 rounds
    to 1) survives a product with 1, in ``mm``, ``addmm`` and ``bmm`` of several shapes."""
    exact = 1.0 + 2.0 ** -10
    for m, k, n in _PROBE_SHAPES:
        a = torch.full((m, k), exact)
        b = torch.zeros(k, n)
        b[0] = 1.0
        results = (a @ b, torch.addmm(torch.zeros(n), a, b), torch.bmm(a.expand(2, m, k), b.expand(2, k, n)))
        if any(not bool((r == exact).all()) for r in results):
            return False
    return True


CHOICE_VARIABLE = "STM_RL_FP32_MATMUL"
CHOICES = ("auto", "mkl")


def requested_library() -> str:
    """``STM_RL_FP32_MATMUL`` (``auto`` when unset); a one-line error naming the variable if it is neither."""
    choice = os.environ.get(CHOICE_VARIABLE, "auto")
    if choice not in CHOICES:
        raise ValueError(f"{CHOICE_VARIABLE}={choice!r}: choose one of {list(CHOICES)}")
    return choice


def cpu_capabilities() -> dict:
    """``torch.cpu.get_capabilities()`` (instruction-set features of this CPU), empty where torch lacks it."""
    return getattr(torch.cpu, "get_capabilities", lambda: {})()


def use_onednn_for_fp32_matmul() -> bool:
    """Send fp32 matrix products to oneDNN where it computes them in fp32 (module docstring).

    Returns whether they now go to oneDNN. Process-wide; called by :func:`stm_rl.fastpath.enable`.
    """
    if not _onednn_setting_available():
        return False
    if cpu_capabilities().get("amx_bf16", False):  # AMX: oneDNN would compute in bf16
        return False
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    if not _products_are_fp32():
        torch.backends.mkldnn.matmul.fp32_precision = previous
        return False
    return True


def choose_fp32_matmul_library() -> bool:
    """What a compute process does at start: oneDNN per :func:`use_onednn_for_fp32_matmul` unless
    ``STM_RL_FP32_MATMUL=mkl``. Returns whether fp32 products go to oneDNN."""
    return requested_library() == "auto" and use_onednn_for_fp32_matmul()


def onednn_fp32_matmul_enabled() -> bool:
    """Whether fp32 matrix products currently go to oneDNN."""
    return _onednn_setting_available() and torch.backends.mkldnn.matmul.fp32_precision == "bf16"


@contextlib.contextmanager
def mkl_matmul() -> Iterator[None]:
    """fp32 products inside go to MKL (PyTorch's default), whatever the process chose."""
    if not onednn_fp32_matmul_enabled():
        yield
        return
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
