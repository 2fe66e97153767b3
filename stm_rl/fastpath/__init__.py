"""The optional CPU fast path: every speed device of this package, enabled by one call at process start-up.

The memory core (:mod:`stm_rl.memory`) and the agents (:mod:`agents`) are plain PyTorch: the memory's fused steps
are ``torch.library`` operators defined by reference implementations (:mod:`stm_rl.memory.ops`), and nothing there
imports this package. :func:`enable` makes a process faster on the CPU without changing what it
computes (the same numbers within float rounding; ``tests/test_fastpath.py`` holds each kernel to its reference):

- the compiled kernels (:mod:`.kernels`, built once per machine with the system C++ compiler) of the gated write,
  SAM's scores, the relational read and update, with their lazy gradient hand-off between steps
  (:mod:`.memory_kernels`), registered as those operators' CPU kernels; they run where PyTorch runs one thread
  (``STM_RL_FUSED_KERNELS``: ``auto``, ``portable``, ``off``);
- tanh through the sigmoid kernel (:mod:`.elementwise`) and CPU-shaped products for the same operators where the
  compiled kernels do not run (several threads, no compiler);
- fp32 matrix products through oneDNN where it keeps fp32 arithmetic (:mod:`.fp32_matmul`,
  ``STM_RL_FP32_MATMUL``);
- the thread count and glibc's malloc thresholds (freed blocks reused instead of unmapped).

:func:`enable` returns a report of what it enabled; every run writes :func:`report` into its config.json
(``compute``), so the path that computed a run's numbers is on record.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

import torch

import stm_rl.memory.ops  # noqa: F401  (defines the memory operators)
from stm_rl.fastpath import memory_kernels
from stm_rl.fastpath.fp32_matmul import CHOICE_VARIABLE, choose_fp32_matmul_library
from stm_rl.fastpath.kernels import SETTING_VARIABLE, fused_kernels_report, prepare_fused_kernels

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_registrations: list[torch.library.Library] = []  # the CPU kernels stay registered while this library lives


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


def register_cpu_kernels() -> bool:
    """Register the fast CPU kernels of the memory operators (once per process; later calls do nothing). Returns
    whether this call registered them."""
    if _registrations:
        return False
    library = torch.library.Library("stm_rl", "IMPL")
    memory_kernels.register(library)
    _registrations.append(library)
    return True


def enabled() -> bool:
    """Whether this process has registered the fast CPU kernels."""
    return bool(_registrations)


def enable(num_threads: int = 1, build_kernels: bool = True) -> dict[str, Any]:
    """Everything this package does to run faster on the CPU, for this process: ``num_threads`` PyTorch threads,
    malloc reuse, fp32 products through oneDNN where exact, and the fast kernels of the memory operators
    registered (the compiled ones built now with ``build_kernels``: a parent process builds them once for the
    processes it starts). Returns :func:`report`."""
    torch.set_num_threads(num_threads)
    keep_freed_memory_in_process()
    choose_fp32_matmul_library()
    register_cpu_kernels()
    if build_kernels:
        prepare_fused_kernels()
    return report(num_threads)


def report(threads_per_process: int) -> dict[str, Any]:
    """What computes the numbers of processes that :func:`enable` sets up on this machine, as a run's config.json
    records it (``compute``): torch's version, the threads of a compute process, the CPU's vector features, the
    fast path, the library of fp32 matrix products (probed as :func:`enable` does, which sets it in this process
    too), the compiled kernels (on or not, the compiler, which ones run vectorised) and the environment variables
    that choose them. Figures from runs on different machines compare only together with these."""
    capabilities = getattr(torch.cpu, "get_capabilities", lambda: {})()
    vector_features = sorted(name for name, present in capabilities.items()
                             if present and name.startswith(("avx", "amx", "fma")))
    return {"torch": torch.__version__, "threads_per_process": threads_per_process,
            "cpu_vector_features": vector_features, "fast_path": "on",
            "fp32_matmul": "onednn" if choose_fp32_matmul_library() else "mkl",
            "fused_kernels": fused_kernels_report(),
            "settings": {name: os.environ.get(name) for name in (CHOICE_VARIABLE, SETTING_VARIABLE)}}
