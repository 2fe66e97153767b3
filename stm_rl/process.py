"""Per-process set-up for compute processes (A3C workers, benchmarks, supervised training).

Called explicitly at the start of a process; nothing here runs on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

import torch

from stm_rl.fp32_matmul import CHOICE_VARIABLE, choose_fp32_matmul_library, cpu_capabilities
from stm_rl.memory.fused_kernels import SETTING_VARIABLE, fused_kernels_report

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory_in_process(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to reuse freed blocks instead of returning them to the kernel.

    PyTorch's CPU tensors come straight from malloc. Blocks above glibc's mmap threshold (128 KiB by
    default; a 96 x 96 x 8 float memory is 288 KiB) are mapped fresh for every tensor and unmapped
    when it dies, so each step pays page faults for every large temporary. Raising the thresholds
    keeps those blocks in the heap for reuse (about 10-15% of an STM training step at batch 1 here).
    Returns False where the C library is not glibc (nothing changes there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):
        return False


def compute_report(threads_per_process: int) -> dict[str, Any]:
    """What computes a run's numbers on this machine, as its config.json records it (``compute``): torch's
    version and the threads of a compute process, the CPU's vector features, the library of fp32 matrix
    products (:mod:`stm_rl.fp32_matmul`), the fused STM kernels (on or not, the compiler, which ones run
    vectorised; :mod:`stm_rl.memory.fused_kernels`) and the environment variables that choose them. Figures from
    runs on different machines compare only together with these."""
    capabilities = cpu_capabilities()
    vector_features = sorted(name for name, present in capabilities.items()
                             if present and name.startswith(("avx", "amx", "fma")))
    return {"torch": torch.__version__, "threads_per_process": threads_per_process, "cpu_vector_features": vector_features,
            "fp32_matmul": "onednn" if choose_fp32_matmul_library() else "mkl",
            "fused_kernels": fused_kernels_report(),
            "settings": {name: os.environ.get(name) for name in (CHOICE_VARIABLE, SETTING_VARIABLE)}}


def setup_compute_process(num_threads: int = 1) -> None:
    """One torch thread (the cores are shared by the processes of a run), malloc reuse, and fp32 matrix
    products through oneDNN where it computes them in fp32 (:mod:`stm_rl.fp32_matmul`)."""
    torch.set_num_threads(num_threads)
    keep_freed_memory_in_process()
    choose_fp32_matmul_library()
