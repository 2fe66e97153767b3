"""The compiled CPU kernels of the fast path (``kernels.cpp``; issue 10): their build, and typed calls on tensors.

On CPUs the STM step is bound by passes over the ``B x N x d x d`` relational memory, not by arithmetic:
the PyTorch composition of eqs. 11-12 and their gradients reads or writes that tensor about twenty times
per step (``alpha1 * M_r_prev``, the rank-N product added to it, the sum of the step's gradients, the products of
the update's backward, the read's gradient, alpha1's dot product). The three kernels here do the same arithmetic in
one pass each:

- :meth:`FusedKernels.update_forward`: ``M_r = alpha1 M_r_prev + scores^T V``;
- :meth:`FusedKernels.update_backward`: the gradients of the scores and the values from ``dM_r``, read
  as the gradient of ``M_r`` plus what the next step's read and update leave for it
  (:class:`~stm_rl.fastpath.memory_kernels.CarriedGradient`) without forming their sum;
- :meth:`FusedKernels.memory_backward`: ``dM_r_prev = alpha1 dM_r + p (x) d mixed``, ``d p`` and
  ``d alpha1`` in one pass over ``dM_r`` and ``M_r_prev``.
- :meth:`FusedKernels.gated_write_forward` and :meth:`FusedKernels.gated_write_backward`: eq. 10's gates
  and written item after the gates' matrix product (:func:`stm_rl.fastpath.memory_kernels.gated_write_cpu`), one pass each over
  the ``B x d x d`` and ``B x d x 2d`` tensors where PyTorch makes about ten forward and twenty backward;
  on AVX-512 CPUs with a vectorised exp.
- :meth:`FusedKernels.scores_forward` and :meth:`FusedKernels.scores_backward`: SAM's scores
  ``tanh(q_n * k_j)`` (:func:`stm_rl.fastpath.memory_kernels.sam_scores_cpu`), one pass each, the two readers' gradients summed
  where they are read.

Outputs too large to stay in the last-level cache until they are read again (``M_r`` and
``dM_r_prev`` at batch 128) are written with streaming stores.

They are compiled once per machine with the system C++ compiler (``$CXX``, else ``g++``, about one
second; ``-O3 -march=native``) into ``$STM_RL_CACHE_DIR`` (default ``~/.cache/stm_rl``), and called
through ctypes on CPU tensors in float32 or float64. They run single-threaded, so they are used only
when PyTorch runs one intra-op thread (the A3C workers' setting); with more threads, on CUDA, or where
no compiler is found, the kernels of :mod:`stm_rl.fastpath.memory_kernels` compute the same values with
PyTorch operations (a one-line note
says why, once per process). ``STM_RL_FUSED_KERNELS=off`` keeps the PyTorch path everywhere;
``STM_RL_FUSED_KERNELS=portable`` builds the kernels without AVX-512 (the loops any CPU runs).
``benchmarks/train_speed.py --fused-kernels auto off`` and ``STM_RL_FUSED_KERNELS=off python
benchmarks/stm_speed.py`` measure what they bring.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    from stm_rl.fastpath.memory_kernels import CarriedGradient

SOURCE = Path(__file__).with_name("kernels.cpp")
SETTING_VARIABLE = "STM_RL_FUSED_KERNELS"
TWIN_FAMILIES = {"gated-write": ("gated_write_forward", "gated_write_backward"), "tanh": ("tanh_forward",)}
"""The hand-written AVX-512 versions ("twins") by family, as ``stm_vectorised_paths`` names them; what each pays
in the STM agent's training step, measured with ``no-<family>-twin``: gated write 9%, tanh 3.4%. The twins of the
relational update's backward pass (0.6%) and of the encoder's ELU (0.9%; the ELU kernel went with it, the encoder
uses PyTorch's ELU) were deleted."""
SETTINGS = ("auto", "portable", "loops", "off", *(f"no-{family}-twin" for family in TWIN_FAMILIES))
"""``STM_RL_FUSED_KERNELS``: ``auto`` the kernels compiled for this CPU (``-march=native``: their hand-written AVX-512
versions where it has AVX-512); ``portable`` the same kernels compiled without AVX-512, i.e. the loops every CPU
runs (to test or time them on an AVX-512 machine); ``loops`` the portable loops compiled for this CPU without the
hand-written versions (what one kernel body per operation would give: the compiler vectorises the loops);
``off`` PyTorch operations everywhere; ``no-<family>-twin`` (``gated-write``, ``tanh``) the ``auto`` build without
that one family's hand-written versions (its portable loops instead), to measure what each family pays
(``benchmarks/train_speed.py --fused-kernels auto no-gated-write-twin ...``)."""
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-std=c++17")
PORTABLE_FLAGS = ("-mno-avx512f",) if platform.machine().lower() in ("x86_64", "amd64") else ()
"""Added for ``portable``: no AVX-512 instructions (every AVX-512 subset depends on AVX-512F)."""
SETTING_FLAGS = {"portable": PORTABLE_FLAGS, "loops": ("-DSTM_RL_NO_TWINS",),
                 **{f"no-{family}-twin": (f"-DSTM_RL_NO_TWIN_{family.upper().replace('-', '_')}",)
                    for family in TWIN_FAMILIES}}


def compile_flags() -> tuple[str, ...]:
    """The compiler flags of the setting in force."""
    return COMPILE_FLAGS + SETTING_FLAGS.get(fused_kernels_setting(), ())


MAX_SIDE, MAX_SLOTS = 1024, 256  # d and N; kMaxSide and kMaxSlots in the source
_ABI_VERSION = 11
# The bits of ``stm_vectorised_paths()`` in order: the kernels whose AVX-512 version this build runs (float32).
VECTORISED_PATHS = ("gated_write_forward", "gated_write_backward", "tanh_forward")


class _Calls(NamedTuple):
    """The C functions of one dtype (``stm_<name>_f32`` or ``_f64``), by name."""

    update_forward: Callable[..., None]
    update_backward: Callable[..., None]
    memory_backward: Callable[..., None]
    gated_write_forward: Callable[..., None]
    gated_write_backward: Callable[..., None]
    tanh_forward: Callable[..., None]
    tanh_backward_add: Callable[..., None]
    scores_forward: Callable[..., None]
    scores_backward: Callable[..., None]
    read_forward: Callable[..., None]


_FourGradients = tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]


class FusedKernelsError(RuntimeError):
    """The kernels cannot be built or loaded here (the message says why)."""


def fused_kernels_setting() -> str:
    """``STM_RL_FUSED_KERNELS`` (``auto`` unless set); a bad value raises ``ValueError`` with one line."""
    value = os.environ.get(SETTING_VARIABLE, "auto").strip().lower() or "auto"
    if value not in SETTINGS:
        raise ValueError(f"{SETTING_VARIABLE}={os.environ[SETTING_VARIABLE]!r}: choose one of {list(SETTINGS)}")
    return value


def cache_dir() -> Path:
    """Where the compiled library is kept: ``$STM_RL_CACHE_DIR``, else ``$XDG_CACHE_HOME/stm_rl``, else
    ``~/.cache/stm_rl`` (with neither variable set, the temporary directory where that cannot be written)."""
    if os.environ.get("STM_RL_CACHE_DIR"):
        return Path(os.environ["STM_RL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stm_rl"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (``-march=native`` builds differ by CPU; a shared home may span several)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{sys.platform}-{os.uname().machine}"
    wanted = [line for line in text.splitlines() if line.split(":")[0].strip() in ("model name", "flags")]
    return "\n".join(sorted(set(wanted)))


def _compiler() -> str:
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise FusedKernelsError(f"no C++ compiler ({name!r} not found; set CXX)")
    return path


def build(directory: Optional[Path] = None) -> Path:
    """Compile the kernels for this machine (once: later calls find the library); returns its path.

    The file name carries a hash of the source, the flags, the compiler and the CPU, so an edited source
    or another machine gets its own build. Written to a temporary name and renamed into place, so
    processes building at the same time (the A3C workers) never load a half-written file.
    """
    compiler = _compiler()
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), " ".join(compile_flags()).encode(), compiler.encode(),
                    _cpu_signature().encode()])
    ).hexdigest()[:16]
    name = f"stm_rl_fused_kernels_{key}.so"
    if directory is not None or os.environ.get("STM_RL_CACHE_DIR"):
        candidates = [directory or cache_dir()]
    else:  # a read-only home (some clusters) falls back to the temporary directory
        candidates = [cache_dir(), Path(tempfile.gettempdir()) / f"stm_rl-{os.getuid()}"]
    for candidate in candidates:
        if (candidate / name).exists():
            return candidate / name
    failure = None
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=candidate, prefix=Path(name).stem, suffix=".tmp.so")
            os.close(handle)
        except OSError as error:
            failure = failure or f"cannot write to {candidate} ({error.strerror}; set STM_RL_CACHE_DIR)"
            continue
        _compile(compiler, temporary, candidate / name)
        return candidate / name
    raise FusedKernelsError(failure)


def _compile(compiler: str, temporary: str, target: Path) -> None:
    try:
        result = subprocess.run([compiler, *compile_flags(), str(SOURCE), "-o", temporary],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no message"])[0]
            raise FusedKernelsError(f"{Path(compiler).name} failed: {first}")
        os.replace(temporary, target)
    except subprocess.TimeoutExpired:
        raise FusedKernelsError(f"{Path(compiler).name} took over 300 s") from None
    except OSError as error:
        raise FusedKernelsError(f"cannot run {compiler} ({error.strerror})") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


_POINTER, _INT, _DOUBLE = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


class FusedKernels:
    """The loaded library: typed calls on tensors (shapes as in :mod:`stm_rl.memory.ops`)."""

    def __init__(self, path: Path) -> None:
        try:
            self.library = ctypes.CDLL(str(path))
        except OSError as error:
            raise FusedKernelsError(f"cannot load {path}: {error}") from None
        if self.library.stm_abi_version() != _ABI_VERSION:
            raise FusedKernelsError(f"{path} is from another version of stm_rl (delete it to rebuild)")
        self.library.stm_vectorised_paths.restype = ctypes.c_int64
        self.functions = {}
        for suffix in ("f32", "f64"):
            update_forward = getattr(self.library, f"stm_update_forward_{suffix}")
            update_forward.argtypes = [_INT, _INT, _INT, _POINTER, _INT, _DOUBLE, _POINTER, _POINTER, _POINTER]
            update_backward = getattr(self.library, f"stm_update_backward_{suffix}")
            update_backward.argtypes = [_INT, _INT, _INT, _POINTER, _POINTER, _DOUBLE, _POINTER, _POINTER, _POINTER,
                                        _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER]
            memory_backward = getattr(self.library, f"stm_memory_backward_{suffix}")
            memory_backward.argtypes = [_INT, _INT, _INT, _POINTER, _POINTER, _INT, _DOUBLE, _POINTER, _POINTER,
                                        _POINTER, _POINTER, _POINTER]
            gated_write_forward = getattr(self.library, f"stm_gated_write_forward_{suffix}")
            gated_write_forward.argtypes = [_INT, _INT, _POINTER, _INT, _POINTER, _POINTER, _POINTER, _POINTER]
            gated_write_backward = getattr(self.library, f"stm_gated_write_backward_{suffix}")
            gated_write_backward.argtypes = [_INT, _INT, _POINTER, _POINTER, _INT, _POINTER, _POINTER, _POINTER,
                                             _POINTER, _POINTER, _POINTER, _POINTER]
            tanh_forward = getattr(self.library, f"stm_tanh_forward_{suffix}")
            tanh_forward.argtypes = [_INT, _INT, _POINTER, _INT, _POINTER]
            tanh_backward_add = getattr(self.library, f"stm_tanh_backward_add_{suffix}")
            tanh_backward_add.argtypes = [_INT, _POINTER, _POINTER, _POINTER]
            scores_forward = getattr(self.library, f"stm_scores_forward_{suffix}")
            scores_forward.argtypes = [_INT, _INT, _INT, _POINTER, _POINTER, _POINTER]
            scores_backward = getattr(self.library, f"stm_scores_backward_{suffix}")
            scores_backward.argtypes = [_INT, _INT, _INT, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER,
                                        _POINTER]
            read_forward = getattr(self.library, f"stm_read_forward_{suffix}")
            read_forward.argtypes = [_INT, _INT, _INT, _POINTER, _INT, _POINTER, _POINTER, _POINTER, _POINTER]
            calls = _Calls(update_forward, update_backward, memory_backward, gated_write_forward, gated_write_backward,
                           tanh_forward, tanh_backward_add, scores_forward, scores_backward, read_forward)
            for function in calls:
                function.restype = None
            self.functions[suffix] = calls

    @property
    def vectorised_paths(self) -> frozenset[str]:
        """The kernels (names in :data:`VECTORISED_PATHS`) that run their AVX-512 version in this build; the
        rest run portable loops, with the same values and more time."""
        bits = self.library.stm_vectorised_paths()
        return frozenset(name for i, name in enumerate(VECTORISED_PATHS) if bits >> i & 1)

    def _calls(self, dtype: torch.dtype) -> _Calls:
        return self.functions["f32" if dtype == torch.float32 else "f64"]

    def update_forward(self, memory: Tensor, alpha: Tensor, scores: Tensor, values: Tensor) -> Tensor:
        """``alpha * memory + scores^T values`` (``[B, N, d, d]``; ``memory`` may be expanded over the batch)."""
        memory, stride = _memory_operand(memory)
        batch, slots, d = values.shape
        out = torch.empty(batch, slots, d, d, dtype=memory.dtype)
        self._calls(memory.dtype).update_forward(batch, slots, d, memory.data_ptr(), stride, float(alpha),
                                                 _ptr(scores), _ptr(values), out.data_ptr())
        return out

    def update_backward(self, grad: Optional[Tensor], scores: Tensor, values: Tensor, need_scores: bool,
                        need_values: bool, carried: Optional["CarriedGradient"] = None,
                        need_full: bool = False) -> _FourGradients:
        """Gradients of the scores and the values from ``dM_r = grad`` (None: no gradient reached ``M_r``
        directly) plus what ``carried`` brings from the next step's read and update
        (:class:`~stm_rl.fastpath.memory_kernels.CarriedGradient`); every tensor in the memory's dtype.

        Returns ``(d scores, d values, dM_r, d alpha1)``: ``dM_r`` as a tensor with ``need_full``, and the carried
        alpha1 gradient where ``carried.memory`` is given (else None)."""
        grad_scores = torch.empty_like(scores) if need_scores else None
        grad_values = torch.empty_like(values) if need_values else None
        batch, slots, d = values.shape
        full = torch.empty(batch, slots, d, d, dtype=values.dtype) if need_full else None
        carried_alpha = ctypes.c_double(0.0)
        want_alpha = carried is not None and carried.memory is not None
        if carried is None:
            carried_pointers = (None, 0.0, None, None, None)
        else:
            carried_pointers = (_ptr(carried.next, values.dtype), float(carried.alpha),
                                _ptr(carried.slot_weights, values.dtype), _ptr(carried.grad_mixed, values.dtype),
                                _ptr(carried.memory, values.dtype))
        self._calls(values.dtype).update_backward(
            batch, slots, d, _ptr(grad, values.dtype), *carried_pointers, _ptr(scores), _ptr(values),
            _ptr(grad_scores), _ptr(grad_values), _ptr(full), ctypes.byref(carried_alpha) if want_alpha else None)
        grad_alpha = values.new_tensor(carried_alpha.value) if want_alpha else None
        return grad_scores, grad_values, full, grad_alpha

    def read_forward(self, memory: Tensor, slot_weights: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """The slot mix ``sum_n p_n M_r_prev[n]`` (``[B, d, d]``) and the per-slot reads ``w^T M_r_prev[n]``
        (``[B, N, d]``) in one pass over ``memory`` (may be expanded over the batch); p, w contiguous."""
        memory, stride = _memory_operand(memory)
        batch, slots, d = memory.shape[0], memory.shape[1], memory.shape[-1]
        mixed = torch.empty(batch, d, d, dtype=memory.dtype)
        reads = torch.empty(batch, slots, d, dtype=memory.dtype)
        self._calls(memory.dtype).read_forward(batch, slots, d, memory.data_ptr(), stride, _ptr(slot_weights),
                                               _ptr(key), mixed.data_ptr(), reads.data_ptr())
        return mixed, reads

    def memory_backward(self, grad: Optional[Tensor], memory: Tensor, alpha: Tensor, slot_weights: Optional[Tensor],
                        grad_mixed: Optional[Tensor], need_memory: bool, need_weights: bool,
                        need_alpha: bool) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(alpha dM_r + p (x) d mixed, <M_r_prev[n], d mixed>, <dM_r, M_r_prev>)`` in one pass, ``dM_r = grad``
        (None: zero, a memory only read) in the memory's dtype.

        ``memory`` may be expanded over the batch (its gradient is then per sample, as autograd expects
        from the expanded tensor). Without ``slot_weights`` and ``grad_mixed`` (no relational read) the
        read's terms are left out."""
        batch, slots, d = memory.shape[0], memory.shape[1], memory.shape[2]
        memory, stride = _memory_operand(memory)
        grad_memory = torch.empty(batch, slots, d, d, dtype=memory.dtype) if need_memory else None
        need_weights = need_weights and grad_mixed is not None
        grad_weights = torch.empty(batch, slots, dtype=memory.dtype) if need_weights else None
        alpha_total = ctypes.c_double(0.0)
        self._calls(memory.dtype).memory_backward(
            batch, slots, d, _ptr(grad, memory.dtype), memory.data_ptr(), stride, float(alpha),
            _ptr(slot_weights, memory.dtype), _ptr(grad_mixed, memory.dtype), _ptr(grad_memory), _ptr(grad_weights),
            ctypes.byref(alpha_total) if need_alpha else None)
        grad_alpha = alpha.new_tensor(alpha_total.value) if need_alpha else None
        return grad_memory, grad_weights, grad_alpha

    def tanh(self, item: Tensor) -> Tensor:
        """``tanh(item)`` (as ``2 sigmoid(2x) - 1``, :func:`stm_rl.fastpath.elementwise.tanh`), per sample also where
        ``item`` is expanded over the batch."""
        item, stride = _memory_operand(item)
        out = torch.empty(item.shape, dtype=item.dtype)
        self._calls(item.dtype).tanh_forward(item.shape[0], item[0].numel(), item.data_ptr(), stride, out.data_ptr())
        return out

    def tanh_backward_add(self, grad: Tensor, upstream: Tensor, output: Tensor) -> None:
        """``grad += upstream * (1 - output^2)`` in place: tanh's backward pass added to ``grad``."""
        self._calls(grad.dtype).tanh_backward_add(grad.numel(), _ptr(grad), _ptr(upstream), _ptr(output))

    def gated_write_forward(self, item: Tensor, u: Tensor, preactivation: Tensor, offset: Tensor) -> Tensor:
        """The gated write ``M'`` (``[B, d, d]``) from ``M_i_prev`` (``item``, may be expanded over the batch),
        ``u`` (``[B, d]``), the gates' matrix product ``preactivation`` (``[B, d, 2d]``) and ``offset``
        (``[B, 2d]``); see :func:`stm_rl.fastpath.memory_kernels.gated_write_cpu`."""
        item, stride = _memory_operand(item)
        batch, d = u.shape
        out = torch.empty(batch, d, d, dtype=item.dtype)
        self._calls(item.dtype).gated_write_forward(batch, d, item.data_ptr(), stride, _ptr(u), _ptr(preactivation),
                                                    _ptr(offset), out.data_ptr())
        return out

    def gated_write_backward(self, grad: Tensor, item: Tensor, u: Tensor, preactivation: Tensor, offset: Tensor,
                             need_item: bool, need_u: bool, need_gates: bool) -> _FourGradients:
        """Gradients of :meth:`gated_write_forward` from ``dM'``: ``(d item, d u, d preactivation, d offset)``;
        ``d item`` is the direct path only (``dM' * forget gate``). ``need_gates`` asks for the last two."""
        item, stride = _memory_operand(item)
        batch, d = u.shape
        grad_item = torch.empty(batch, d, d, dtype=item.dtype) if need_item else None
        grad_u = torch.empty_like(u) if need_u else None
        grad_pre = torch.empty_like(preactivation) if need_gates else None
        grad_offset = torch.empty_like(offset) if need_gates else None
        self._calls(item.dtype).gated_write_backward(
            batch, d, _ptr(grad), item.data_ptr(), stride, _ptr(u), _ptr(preactivation), _ptr(offset),
            _ptr(grad_item), _ptr(grad_u), _ptr(grad_pre), _ptr(grad_offset))
        return grad_item, grad_u, grad_pre, grad_offset


    def scores_forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """SAM's scores ``[B, N(key), N(query), d]``, entry ``[j, n, a] = tanh(k_j[a] q_n[a])``, from queries and
        keys (each ``[B, N, d]``, contiguous); see :func:`stm_rl.fastpath.memory_kernels.sam_scores_cpu`."""
        batch, slots, d = queries.shape
        out = torch.empty(batch, slots, slots, d, dtype=queries.dtype)
        self._calls(queries.dtype).scores_forward(batch, slots, d, _ptr(queries), _ptr(keys), out.data_ptr())
        return out

    def scores_backward(self, grad: Optional[Tensor], grad_other: Optional[Tensor], scores: Tensor, queries: Tensor,
                        keys: Tensor) -> tuple[Tensor, Tensor]:
        """Gradients of the queries and the keys from the scores' gradient ``grad + grad_other`` (one may be None)."""
        batch, slots, d = queries.shape
        grad_queries, grad_keys = torch.empty_like(queries), torch.empty_like(keys)
        self._calls(queries.dtype).scores_backward(batch, slots, d, _ptr(grad), _ptr(grad_other), _ptr(scores),
                                                   _ptr(queries), _ptr(keys), _ptr(grad_queries), _ptr(grad_keys))
        return grad_queries, grad_keys


def _ptr(tensor: Optional[Tensor], dtype: Optional[torch.dtype] = None) -> Optional[int]:
    """The tensor's data pointer (None for None); with ``dtype``, the tensor must be in it (the kernel reads it so)."""
    if tensor is None:
        return None
    if not tensor.is_contiguous():
        raise ValueError("fused STM kernels need contiguous operands")  # callers make them so
    if dtype is not None and tensor.dtype != dtype:
        raise ValueError(f"fused STM kernels: a {tensor.dtype} operand where {dtype} is expected")
    return tensor.data_ptr()


def _memory_operand(memory: Tensor) -> tuple[Tensor, int]:
    """``memory`` with contiguous samples, and its sample stride (0 when it is expanded over the batch)."""
    if memory.shape[0] > 1 and memory.stride(0) == 0 and memory[0].is_contiguous():
        return memory, 0
    memory = memory.contiguous()
    return memory, memory[0].numel()


_loaded: dict[str, object] = {}  # per process: the FusedKernels, or the reason they are unavailable


def load_fused_kernels() -> FusedKernels:
    """The kernels, built on first use; raises :class:`FusedKernelsError` (and again on later calls) if they
    cannot be."""
    if "kernels" not in _loaded and "error" not in _loaded:
        try:
            _loaded["kernels"] = FusedKernels(build())
        except FusedKernelsError as error:
            _loaded["error"] = error
    if "error" in _loaded:
        raise _loaded["error"]  # type: ignore[misc]
    return _loaded["kernels"]  # type: ignore[return-value]


def prepare_fused_kernels() -> bool:
    """Build (or find) the kernels now, in a parent process, so that the processes it starts load the cached
    library instead of each compiling it; reports as :func:`fused_kernels_for` does. Returns whether they load."""
    if fused_kernels_setting() == "off":
        return False
    try:
        load_fused_kernels()
        return True
    except FusedKernelsError as error:
        _report_unavailable(error)
        return False


def describe_fused_kernels() -> str:
    """One line for benchmark headers: whether the kernels run here, and which of them are vectorised."""
    if fused_kernels_setting() == "off":
        return f"fused STM kernels: off ({SETTING_VARIABLE}=off)"
    try:
        kernels = load_fused_kernels()
    except FusedKernelsError as error:
        return f"fused STM kernels: unavailable ({error})"
    fast = kernels.vectorised_paths
    return (f"fused STM kernels: on (one PyTorch thread); AVX-512 versions: {', '.join(sorted(fast)) or 'none'}"
            + ("" if fast else " (portable loops: same numbers, slower)"))


def fused_kernels_report() -> dict[str, Any]:
    """The kernels as a run records them (its config.json's ``compute``): ``state`` (on, off, or unavailable with
    the reason), the compiler, and the kernels that run their vectorised (AVX-512) versions here."""
    if fused_kernels_setting() == "off":
        return {"state": "off", "setting": f"{SETTING_VARIABLE}=off"}
    try:
        kernels = load_fused_kernels()
        compiler = _compiler()
    except FusedKernelsError as error:
        return {"state": f"unavailable: {error}"}
    return {"state": "on", "compiler": Path(compiler).name, "vectorised": sorted(kernels.vectorised_paths),
            "portable": sorted(set(VECTORISED_PATHS) - kernels.vectorised_paths)}


def _report_unavailable(error: FusedKernelsError) -> None:
    if not _loaded.get("reported"):
        _loaded["reported"] = True
        print(f"stm_rl: fused STM kernels unavailable ({error}); using PyTorch operations (slower)", file=sys.stderr)


def fused_kernels_for(memory: Tensor) -> Optional[FusedKernels]:
    """The kernels if they serve this memory, else None: CPU, float32/64, one PyTorch thread, ``d <= 1024``, and
    for a relational memory (``[B, N, d, d]``) ``N <= 256``; an item memory is ``[B, d, d]``.

    The first time they cannot be built, one line on stderr says why (the PyTorch path is then used)."""
    if (memory.dtype not in (torch.float32, torch.float64)
            or memory.shape[-1] > MAX_SIDE or (memory.dim() == 4 and memory.shape[-3] > MAX_SLOTS)):
        return None
    return _kernels_on_this_thread(memory)


def _kernels_on_this_thread(tensor: Tensor) -> Optional[FusedKernels]:
    """The kernels for a CPU tensor when PyTorch runs one thread and the setting allows them (else None)."""
    if tensor.device.type != "cpu" or torch.get_num_threads() != 1 or fused_kernels_setting() == "off":
        return None
    try:
        return load_fused_kernels()
    except FusedKernelsError as error:
        _report_unavailable(error)
        return None
