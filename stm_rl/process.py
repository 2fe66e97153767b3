"""Per-process set-up for compute processes (A3C workers, benchmarks, supervised training).

Called explicitly at the start of a process; nothing here runs on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

from stm_rl.fp32_matmul import choose_fp32_matmul_library

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


def setup_compute_process(num_threads: int = 1) -> None:
    """One torch thread (the cores are shared by the processes of a run), malloc reuse, and fp32 matrix
    products through oneDNN where it computes them in fp32 (:mod:`stm_rl.fp32_matmul`)."""
    torch.set_num_threads(num_threads)
    keep_freed_memory_in_process()
    choose_fp32_matmul_library()
