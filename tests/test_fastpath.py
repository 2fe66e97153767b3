"""The CPU fast path (stm_rl/fastpath): the compiled kernels and the CPU kernels of the memory operators.

They replace the operators' references (stm_rl/memory/ops.py), so every test compares them with the reference or
the definition written out, in float64 or in float32 at the agents' sizes (d = 96, and d = 101 for a vectorised
path with a tail), with the tolerance stated. Each kernel test runs on the build for this CPU and on the portable
build (no AVX-512), so a CPU without AVX-512 is covered. They need a C++ compiler; without one they are skipped
(the package then runs the references and the PyTorch paths, which the rest of the suite covers).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

import stm_rl.fastpath.kernels as fused_kernels
from stm_rl import fastpath
from stm_rl.fastpath.memory_kernels import CarriedGradient, GradientLink, link_of
from stm_rl.memory import STM
from stm_rl.memory.ops import (gated_write, gated_write_reference, relational_read, relational_read_reference,
                               relational_update, relational_update_reference, sam_scores, sam_scores_reference)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="no C++ compiler: the fused kernels cannot be built here")


@pytest.fixture(params=["auto", "portable"])
def kernels(request, monkeypatch, tmp_path_factory):
    """The kernels, built into a per-session directory, with one PyTorch thread (where the package uses them):
    each test runs on the build for this CPU (its AVX-512 versions where it has them) and on the portable build
    (the loops a CPU without AVX-512 runs), so both are tested on any machine."""
    monkeypatch.setenv("STM_RL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stm_rl_cache"))
    monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, request.param)
    monkeypatch.setattr(fused_kernels, "_loaded", {})
    fastpath.register_cpu_kernels()  # the memory operators' CPU kernels (once per process)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield fused_kernels.load_fused_kernels()
    torch.set_num_threads(threads)


def _memory_inputs(dtype, batch=3, slots=4, d=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, slots, d, d, dtype=dtype, generator=generator),
            torch.tensor(0.7, dtype=dtype),
            torch.randn(batch, slots, slots * d, dtype=dtype, generator=generator),
            torch.randn(batch, slots, d, dtype=dtype, generator=generator))


@pytest.mark.parametrize("shape", [(4, 5), (3, 32), (2, 96), (2, 101)], ids=["N4-d5", "N3-d32", "N2-d96", "N2-d101"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_forward_is_the_definition(kernels, dtype, shape):
    """Eq. 11 against its definition in float64 (float32 inputs cast up; float32 within torch's float32 tolerance)."""
    memory, alpha, scores, values = _memory_inputs(dtype, slots=shape[0], d=shape[1])
    b, n, d = values.shape
    m64, a64, s64, v64 = (t.double() for t in (memory, alpha, scores, values))
    expected = a64 * m64 + torch.einsum("bjna,bjc->bnac", s64.view(b, n, n, d), v64)
    out = kernels.update_forward(memory, alpha, scores, values)
    torch.testing.assert_close(out, expected.to(dtype))
    shared = memory[:1].expand_as(memory)  # the learned initial memory, expanded over the batch
    out = kernels.update_forward(shared, alpha, scores, values)
    torch.testing.assert_close(out, (a64 * shared.double() + (expected - a64 * m64)).to(dtype))


def test_outputs_past_the_streaming_size_are_the_definition(kernels):
    """Outputs of 16 MiB and more (M_r, dM_r_prev) are written with streaming stores, rows whose start is
    64-byte aligned at once and the others plainly (d = 100: a quarter of the rows aligned)."""
    memory, alpha, scores, values = _memory_inputs(torch.float32, batch=53, slots=8, d=100, seed=3)
    b, n, d = values.shape
    assert memory.numel() * 4 >= 16 << 20
    out = kernels.update_forward(memory, alpha, scores, values)
    torch.testing.assert_close(out, alpha * memory + torch.einsum("bjna,bjc->bnac", scores.view(b, n, n, d), values))
    generator = torch.Generator().manual_seed(4)
    grad, grad_mixed = torch.randn(b, n, d, d, generator=generator), torch.randn(b, d, d, generator=generator)
    slot_weights = torch.softmax(torch.randn(b, n, generator=generator), -1)
    grad_memory, _, _ = kernels.memory_backward(grad, memory, alpha, slot_weights, grad_mixed, True, False, False)
    torch.testing.assert_close(grad_memory, alpha * grad + slot_weights.view(b, n, 1, 1) * grad_mixed.unsqueeze(1))


def assert_close_to_product(actual, left, right):
    """``actual`` is ``left @ right`` in float32, summed in another order: the difference is bounded by a few
    ulps of the sum of the products' sizes (a sum of N*d terms at the agents' d = 96)."""
    size = left.abs() @ right.abs()
    torch.testing.assert_close(actual, left @ right, rtol=0, atol=2**-20 * size.max().item())


def assert_close_to_dot(actual, left, right):
    """``actual`` is the dot product of ``left`` and ``right`` (float32), against float64: the kernels accumulate it
    in double, so the bound is a few float32 ulps of the sum of the products' sizes, not float32's own error."""
    size = (left.abs().double() * right.abs().double()).sum().item()
    torch.testing.assert_close(actual.double(), (left.double() * right.double()).sum(), rtol=0, atol=2**-22 * size)


SHAPES = {"N4-d5": (4, 5), "N3-d32": (3, 32), "N8-d16": (8, 16), "N2-d96": (2, 96)}
"""(slots, d): a side below one AVX-512 register of floats (d = 5), multiples of 16, and the agents' memory
(d = 96)."""


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("given", ["recurrent", "none"])
def test_backward_kernels_match_the_gradients_written_out(kernels, given, shape):
    """dM_r is the gradient of M_r (``none``: none reached M_r directly, as where only the next step reads it)
    plus what the next step carries; memory_backward takes it with and without the read's terms."""
    memory, alpha, scores, values = _memory_inputs(torch.float32, slots=shape[0], d=shape[1], seed=1)
    b, n, d = values.shape
    generator = torch.Generator().manual_seed(2)
    grad = torch.randn(b, n, d, d, generator=generator) if given == "recurrent" else None
    total = grad if grad is not None else torch.zeros(b, n, d, d)
    slot_weights = torch.softmax(torch.randn(b, n, generator=generator), -1)
    grad_mixed = torch.randn(b, d, d, generator=generator)

    grad_scores, grad_values, full, _ = kernels.update_backward(grad, scores, values, True, True)
    assert full is None
    assert_close_to_product(grad_scores, values, total.view(b, n * d, d).transpose(1, 2))
    assert_close_to_product(grad_values, scores, total.view(b, n * d, d))
    # either factor's gradient alone (the other not wanted) is the same
    scores_alone, no_values, _, _ = kernels.update_backward(grad, scores, values, True, False)
    no_scores, values_alone, _, _ = kernels.update_backward(grad, scores, values, False, True)
    assert no_values is None and no_scores is None
    torch.testing.assert_close(scores_alone, grad_scores, rtol=0, atol=0)
    torch.testing.assert_close(values_alone, grad_values, rtol=0, atol=0)

    # the lazy gradient: the next step's read's share carried in, dM_r written out, its alpha1 gradient taken
    following = torch.randn(b, n, d, d, generator=generator)  # dM_r of the next step
    output = torch.randn(b, n, d, d, generator=generator)  # this step's M_r, the next step's M_r_prev
    carried = CarriedGradient(following, alpha, slot_weights, grad_mixed, output)
    lazy_total = total + alpha * following + slot_weights.view(b, n, 1, 1) * grad_mixed.unsqueeze(1)
    grad_scores, grad_values, full, carried_alpha = kernels.update_backward(
        grad, scores, values, True, True, carried, need_full=True)
    torch.testing.assert_close(full, lazy_total)
    assert_close_to_product(grad_scores, values, lazy_total.view(b, n * d, d).transpose(1, 2))
    assert_close_to_product(grad_values, scores, lazy_total.view(b, n * d, d))
    assert_close_to_dot(carried_alpha, following, output)
    # that dM_r is the first step's gradient for memory_backward (no link to an earlier update)
    grad_memory, _, grad_alpha = kernels.memory_backward(full, memory, alpha, None, None, True, False, True)
    torch.testing.assert_close(grad_memory, alpha * full)
    assert_close_to_dot(grad_alpha, full, memory)

    grad_memory, grad_weights, grad_alpha = kernels.memory_backward(
        grad, memory, alpha, slot_weights, grad_mixed, True, True, True)
    torch.testing.assert_close(grad_memory, alpha * total + slot_weights.view(b, n, 1, 1) * grad_mixed.unsqueeze(1))
    # sums of d * d products: fp32 rounding grows with the sum of their sizes (9,216 of them at d = 96)
    products = memory * grad_mixed.unsqueeze(1)
    torch.testing.assert_close(grad_weights, products.sum((2, 3)), rtol=0,
                               atol=2**-20 * products.abs().sum((2, 3)).max().item())
    assert_close_to_dot(grad_alpha, total, memory)
    # without the read's terms (a cell whose alpha2 is fixed at 0): alpha1 * dM_r and alpha1's gradient only
    grad_memory, grad_weights, grad_alpha = kernels.memory_backward(grad, memory, alpha, None, None, True, True, True)
    assert grad_weights is None
    torch.testing.assert_close(grad_memory, alpha * total)
    assert_close_to_dot(grad_alpha, total, memory)


def test_read_and_update_gradcheck_through_the_kernels(kernels):
    """gradcheck (float64) of a read feeding an update of the same memory, and of each alone, on the kernels."""
    torch.manual_seed(0)
    memory = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(2, 3, dtype=torch.float64), -1).requires_grad_()
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    mix = torch.randn(4, 3 * 12, dtype=torch.float64)

    def step(memory, p, w, alpha):
        read = relational_read(memory, p, w)
        scores = torch.tanh(read @ mix).view(2, 3, 12)
        values = read.unsqueeze(1).expand(2, 3, 4) * torch.arange(1.0, 4.0, dtype=torch.float64).view(1, 3, 1)
        return relational_update(memory, alpha, scores, values)

    assert fused_kernels.fused_kernels_for(memory) is kernels
    assert torch.autograd.gradcheck(step, (memory, p, w, alpha))
    base = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, *rest: step(b.expand(2, 3, 4, 4), *rest), (base, p, w, alpha))
    scores = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(relational_update, (memory, alpha, scores, values))
    assert torch.autograd.gradcheck(relational_read, (memory, p, w))


def test_the_next_step_leaves_its_gradient_to_the_update_that_produced_its_memory(kernels, monkeypatch):
    """The lazy gradient: where M_r_prev is the previous step's updated memory, the read's and the update's shares
    of dM_r_prev, and alpha1's gradient, are formed by that update's backward pass (memory_backward runs for the
    first step's memory only). gradcheck through three steps, with the first step's memory also an output of its
    own, and the gradients equal to the references'."""
    torch.manual_seed(1)
    memory = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(3, 2, 3, dtype=torch.float64), -1).requires_grad_()
    w = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    mix = torch.randn(4, 3 * 12, dtype=torch.float64)

    def steps(memory, p, w, alpha, read=relational_read, update=relational_update):
        first = None
        for t in range(3):
            v_r = read(memory, p[t], w[t])
            scores = torch.tanh(v_r @ mix).view(2, 3, 12)
            values = v_r.unsqueeze(1) * torch.arange(1.0, 4.0, dtype=torch.float64).view(1, 3, 1)
            memory = update(memory, alpha, scores, values)
            first = memory if first is None else first
        return first, memory

    calls = []
    eager = kernels.memory_backward
    monkeypatch.setattr(kernels, "memory_backward", lambda *args: calls.append(args[1]) or eager(*args))
    first, last = steps(memory, p, w, alpha)
    assert isinstance(link_of(first), GradientLink) and link_of(first).read_claimed and link_of(first).update_claimed
    inputs = (memory, p, w, alpha)
    got = torch.autograd.grad((first.sum(), last.square().sum()), inputs)
    assert len(calls) == 2 and all(m is memory for m in calls)  # the first step's read and update only
    reference = steps(*inputs, read=relational_read_reference, update=relational_update_reference)
    for g, r in zip(got, torch.autograd.grad((reference[0].sum(), reference[1].square().sum()), inputs)):
        torch.testing.assert_close(g, r)
    assert torch.autograd.gradcheck(steps, inputs)


def test_a_second_reader_and_another_alpha_form_their_own_gradients(kernels):
    """Only the first read and the first update with the producer's alpha1 leave their shares in the link; any
    other reader of the memory gets its gradient the usual way (the sum is the references')."""
    inputs = [t.requires_grad_() for t in _memory_inputs(torch.float64)]
    memory, alpha, scores, values = inputs
    other_alpha = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    generator = torch.Generator().manual_seed(9)
    p = torch.softmax(torch.randn(3, 4, dtype=torch.float64, generator=generator), -1)
    w = torch.randn(3, 5, dtype=torch.float64, generator=generator)

    def graph(read, update):
        m = update(memory, alpha, scores, values)
        reads = read(m, p, w) + read(m, p.flip(1), w)  # two reads: the second forms its own gradient
        out = update(m, other_alpha, scores, values)  # another alpha: not the producer's
        again = update(m, alpha, scores * 0.5, values)  # the producer's alpha: claims the link
        return reads.sum() + out.square().sum() + (again * m).sum()

    got = torch.autograd.grad(graph(relational_read, relational_update), inputs + [other_alpha])
    want = torch.autograd.grad(graph(relational_read_reference, relational_update_reference), inputs + [other_alpha])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def _sequence_gradients(dtype, bf16: bool):
    """Outputs and parameter gradients of a 5-step STM with an episode reset inside and the single-step path
    (weights and inputs drawn in fp32 and then cast, so every dtype computes the same function)."""
    torch.manual_seed(0)
    stm = STM(16, 8, d=6, num_slots=3, rel_size=5, attn_size=4, out_layernorm=True)
    with torch.no_grad():
        for alpha in (stm.cell.alpha1, stm.cell.alpha2, stm.cell.alpha3):
            alpha.fill_(0.4)
    x = torch.randn(3, 5, 16).to(dtype)
    stm = stm.to(dtype)
    start = torch.zeros(3, 5, dtype=torch.bool)
    start[1, 2] = True
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y, state = stm(x, episode_start=start)
        y_next, state = stm.cell(x[:, 0], state)  # the single-step path (the agent's acting pass)
    loss = y.float().square().sum() + y_next.float().sum() + state.relational.float().sum()
    return [y, y_next, *torch.autograd.grad(loss, list(stm.parameters()))]


@pytest.mark.parametrize("dtype,bf16,tolerance", [(torch.float64, False, 1e-12), (torch.float32, False, 2e-5),
                                                 (torch.float32, True, 1e-2)])
def test_the_stm_computes_the_same_with_and_without_the_kernels(kernels, monkeypatch, dtype, bf16, tolerance):
    """The whole STM, values and every parameter's gradient, fused kernels against the PyTorch path; tolerances
    are relative to each tensor's largest entry. In float64 the two agree to rounding. In fp32 both are
    measured against the float64 result of the same function: five recurrent steps make some gradients
    ill-conditioned (the scalar gate biases' sum thousands of terms that cancel: PyTorch's own fp32 path misses
    them by up to 1.4e-4 of their size), so the kernels must be as accurate as PyTorch's fp32 path, not equal to
    it. Under bf16 autocast the readout's bf16 products round differently in another order."""
    fused = _sequence_gradients(dtype, bf16)
    monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, "off")
    plain = _sequence_gradients(dtype, bf16)
    if dtype == torch.float32 and not bf16:
        exact = _sequence_gradients(torch.float64, False)
        for a, b, c in zip(fused, plain, exact):
            scale = max(1.0, c.abs().max().item())
            fused_error, plain_error = ((t.double() - c).abs().max().item() for t in (a, b))
            assert fused_error <= 2 * plain_error + tolerance * scale, (fused_error, plain_error, scale)
        return
    for a, b in zip(fused, plain):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance * scale)


STM_SCRIPT = """
import sys, torch
if sys.argv[1] == "fast":
    from stm_rl import fastpath
    fastpath.enable(num_threads=1)
from stm_rl import STM
torch.manual_seed(0)
stm = STM(10, 7, d=8, num_slots=3, rel_size=5).double()
with torch.no_grad():
    for i in (1, 2, 3):
        getattr(stm.cell, f"alpha{i}").fill_(0.3)
x = torch.randn(4, 6, 10, dtype=torch.float64)
start = torch.zeros(4, 6, dtype=torch.bool)
start[1, 3] = True
y, state = stm(x, episode_start=start)
loss = y.square().sum() + state.relational.sum() + state.item.square().sum()
grads = torch.autograd.grad(loss, list(stm.parameters()))
torch.save([y.detach(), *grads], sys.argv[2])
print(sys.modules.get("stm_rl.fastpath") is not None, torch.ops.stm_rl.relational_update.default.has_kernel_for_dispatch_key(torch._C.DispatchKey.AutogradCPU))
"""


def test_the_stm_with_the_fast_path_is_the_stm_without_it(kernels, tmp_path):
    """The same STM (float64, an episode reset inside, every parameter's gradient) in a process that enables the
    fast path and in one that never imports it (the operators' references only): equal within 1e-12."""
    import subprocess
    import sys
    results = {}
    for way in ("fast", "reference"):
        out = subprocess.run([sys.executable, "-c", STM_SCRIPT, way, str(tmp_path / way)], capture_output=True,
                             text=True, check=True)
        assert out.stdout.split() == (["True", "True"] if way == "fast" else ["False", "False"])
        results[way] = torch.load(tmp_path / way)
    for a, b in zip(results["fast"], results["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_kernels_are_used_only_on_one_thread_on_cpu(kernels):
    memory = torch.zeros(1, 1, 2, 2)
    assert fused_kernels.fused_kernels_for(memory) is kernels
    assert fused_kernels.fused_kernels_for(memory.to(torch.bfloat16)) is None
    torch.set_num_threads(2)  # the kernels are single-threaded: PyTorch's threaded operations instead
    assert fused_kernels.fused_kernels_for(memory) is None


def _compiler_macros() -> set[str]:
    """The macros the kernels' compiler defines with their flags (what ``#if defined(...)`` in the source sees)."""
    target = [flag for flag in fused_kernels.compile_flags() if flag.startswith(("-march", "-mno-", "-D"))]
    result = subprocess.run([fused_kernels._compiler(), "-O3", *target, "-dM", "-E", "-x", "c++", "-"], input="",
                            capture_output=True, text=True, check=True)
    return {line.split()[1] for line in result.stdout.splitlines() if line.startswith("#define ")}


def test_every_vectorised_path_the_compiler_allows_is_taken(kernels):
    # The portable loops compute the same values as the AVX-512 ones, so the value tests above cannot see a
    # lost fast path (one was lost once in a refactor: ELU ran 10x slower and every test passed).
    macros = _compiler_macros()
    expected = set()
    if "__AVX512F__" in macros and fused_kernels.fused_kernels_setting() in ("auto", "portable"):
        expected |= {"gated_write_forward", "gated_write_backward", "tanh_forward"}
    assert kernels.vectorised_paths == expected
    assert set(fused_kernels.VECTORISED_PATHS) >= expected


def test_build_is_keyed_by_source_and_cpu(tmp_path, monkeypatch):
    first = fused_kernels.build(tmp_path)
    assert first.exists() and fused_kernels.build(tmp_path) == first
    monkeypatch.setattr(fused_kernels, "_cpu_signature", lambda: "another CPU")
    assert fused_kernels.build(tmp_path) != first
    assert not list(tmp_path.glob("*.tmp.so")), "no temporary file is left behind"


def test_an_unwritable_cache_falls_back_to_the_temporary_directory_unless_chosen(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.delenv("STM_RL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # the default cache cannot be created under a file
    monkeypatch.setattr(fused_kernels.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert fused_kernels.build().parent.parent == tmp_path / "tmp"
    monkeypatch.setenv("STM_RL_CACHE_DIR", str(blocked / "cache"))  # chosen: no fallback, one clear error
    with pytest.raises(fused_kernels.FusedKernelsError, match="cannot write to .*set STM_RL_CACHE_DIR"):
        fused_kernels.build()


def test_without_a_compiler_one_line_says_so_and_pytorch_computes(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("STM_RL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fused_kernels, "_loaded", {})
    monkeypatch.delenv(fused_kernels.SETTING_VARIABLE, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(fused_kernels.FusedKernelsError, match="no-such-compiler-here"):
            fused_kernels.load_fused_kernels()
        memory, alpha, scores, values = _memory_inputs(torch.float32)
        assert fused_kernels.fused_kernels_for(memory) is None
        assert fused_kernels.fused_kernels_for(memory) is None
        out = relational_update(memory, alpha, scores, values)  # the CPU kernel's PyTorch path
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fused STM kernels unavailable" in err and "no-such-compiler-here" in err
    b, n, d = values.shape
    torch.testing.assert_close(out, alpha * memory + torch.einsum("bjna,bjc->bnac", scores.view(b, n, n, d), values))


def test_the_setting_is_read_from_the_environment(monkeypatch):
    """(A bad value is refused before a run starts: tests/test_bad_input.py.)"""
    monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, "OFF")
    assert fused_kernels.fused_kernels_setting() == "off"
    monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, "portable")
    assert fused_kernels.fused_kernels_setting() == "portable"
    assert set(fused_kernels.PORTABLE_FLAGS) <= set(fused_kernels.compile_flags())
    monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, "loops")
    assert "-DSTM_RL_NO_TWINS" in fused_kernels.compile_flags()
    monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, "fast")
    with pytest.raises(ValueError, match="STM_RL_FUSED_KERNELS='fast'"):
        fused_kernels.fused_kernels_setting()


def _gated_write_inputs(dtype, batch=3, d=5, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, d, d, dtype=dtype, generator=generator),
            torch.randn(batch, d, dtype=dtype, generator=generator),
            scale * torch.randn(2 * d, d, dtype=dtype, generator=generator),
            torch.randn(batch, 2 * d, dtype=dtype, generator=generator)]


def _gated_write_definition(item, u, weight, offset):
    """Eq. 10 with the gates of Appendix D, written plainly (apart from the reference in stm_rl/memory/ops.py)."""
    gates = torch.sigmoid(torch.tanh(item) @ weight.t() + offset.unsqueeze(1))
    d = u.shape[1]
    return gates[..., :d] * torch.tanh(u.unsqueeze(2) * u.unsqueeze(1)) + gates[..., d:] * item


KERNEL_SIDES = [5, 16, 37, 96, 101]
"""Below, at and past one AVX-512 register of floats; the agents' d = 96 (six registers); 101 = six registers and
a tail of five."""


@pytest.mark.parametrize("d", KERNEL_SIDES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gated_write_and_its_gradients_are_the_definition(kernels, dtype, d):
    """Against the definition in float64 (float32 inputs cast up): float32 values within 1e-5 relative (+1e-6),
    gradients within 1e-5 of their largest entry (sums over up to B*d terms, in another order)."""
    inputs = [t.requires_grad_() for t in _gated_write_inputs(dtype, d=d)]
    assert fused_kernels.fused_kernels_for(inputs[0]) is kernels
    out = gated_write(*inputs)
    reference = [t.detach().double().requires_grad_() for t in inputs]
    expected = _gated_write_definition(*reference)
    torch.testing.assert_close(gated_write_reference(*reference), expected)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(out.double(), expected, **tolerance)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for got, want in zip(torch.autograd.grad((out * weights.to(dtype)).sum(), inputs),
                         torch.autograd.grad((expected * weights).sum(), reference)):
        if dtype == torch.float32:
            torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * want.abs().max().item())
        else:
            torch.testing.assert_close(got, want)


def test_gated_write_gradcheck_through_the_kernels(kernels):
    inputs = [t.requires_grad_() for t in _gated_write_inputs(torch.float64, d=4)]
    assert torch.autograd.gradcheck(gated_write, inputs)
    base = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)  # the learned M_i^0, expanded
    assert torch.autograd.gradcheck(lambda b, *rest: gated_write(b.expand(3, 4, 4), *rest), (base, *inputs[1:]))


def test_gated_write_saturates_without_overflow(kernels):
    """Gates and tanh far into saturation (pre-activations up to about +-1e5) stay finite and match the definition."""
    inputs = _gated_write_inputs(torch.float32, d=20, scale=3000.0)
    inputs[1] = inputs[1] * 30.0
    out = gated_write(*inputs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _gated_write_definition(*inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", KERNEL_SIDES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sam_scores_and_their_gradients_are_the_definition(kernels, dtype, d):
    """tanh(k_j[a] q_n[a]), read twice as the cell reads it (the backward pass gets the sum of the two readers'
    gradients). Against the definition in float64: float32 values within 1e-5 relative (+1e-6), gradients within
    1e-5 relative plus 1e-6 of their largest entry."""
    generator = torch.Generator().manual_seed(5)
    queries, keys = (torch.randn(3, 4, d, dtype=dtype, generator=generator).requires_grad_() for _ in range(2))
    assert fused_kernels.fused_kernels_for(queries) is kernels
    scores = sam_scores(queries, keys)
    reference = [t.detach().double().requires_grad_() for t in (queries, keys)]
    expected = torch.tanh(reference[1].unsqueeze(2) * reference[0].unsqueeze(1))
    torch.testing.assert_close(sam_scores_reference(*reference), expected)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(scores.double(), expected, **tolerance)
    grads = [torch.randn(expected.shape, dtype=torch.float64, generator=generator) for _ in range(2)]
    got = torch.autograd.grad([scores, scores.view(-1)], [queries, keys],
                              [grads[0].to(dtype), grads[1].to(dtype).view(-1)])
    want = torch.autograd.grad([expected], reference, [sum(grads)])
    for g, w in zip(got, want):  # float32: sums of terms that cancel, within 1e-6 of the largest entry
        torch.testing.assert_close(g.double(), w, **(tolerance and {"rtol": 1e-5, "atol": 1e-6 * w.abs().max().item()}))


def test_sam_scores_gradcheck_and_the_pytorch_path(kernels, monkeypatch):
    generator = torch.Generator().manual_seed(6)
    queries, keys = (torch.randn(2, 3, 5, dtype=torch.float64, generator=generator).requires_grad_() for _ in range(2))
    assert torch.autograd.gradcheck(sam_scores, (queries, keys))
    fused = sam_scores(queries, keys)
    monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, "off")
    assert fused_kernels.fused_kernels_for(queries) is None
    torch.testing.assert_close(sam_scores(queries, keys), fused)


def test_the_sigmoid_tanh_matches_torch_tanh_and_its_gradient():
    """The fast path's tanh (2 sigmoid(2x) - 1 in fp32 on CPU) against torch.tanh in float64."""
    from stm_rl.fastpath.elementwise import tanh

    x = (torch.randn(4, 96, 96, dtype=torch.float32) * 3).requires_grad_()
    y = tanh(x)
    exact = torch.tanh(x.detach().double())
    assert y.dtype == torch.float32 and (y.double() - exact).abs().max() < 5e-7
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad.double(), grad.double() * (1 - exact ** 2), atol=2e-6, rtol=0)
    x64 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tanh, (x64,))


def test_the_paper_and_the_agents_never_import_the_fast_path():
    """stm_rl/memory and agents/ are plain PyTorch: the fast path registers kernels for their operators, they do not
    know it (imports point one way)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*sorted((root / "stm_rl" / "memory").glob("*.py")), *sorted((root / "agents").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {name}" for name in names if name.startswith("stm_rl.fastpath")]
    assert not offenders


def test_the_loops_build_has_no_hand_written_versions_and_the_same_numbers(monkeypatch, tmp_path):
    """STM_RL_FUSED_KERNELS=loops (the portable loops compiled for this CPU, to time one body per operation against
    the hand-written AVX-512 versions): nothing reported vectorised, and the STM's values and gradients those of the
    default build (float32 at the agents' d = 96, within 1e-4 of each tensor's largest entry)."""
    monkeypatch.setenv("STM_RL_CACHE_DIR", str(tmp_path))
    fastpath.register_cpu_kernels()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = []
    try:
        for setting in ("auto", "loops"):
            monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, setting)
            monkeypatch.setattr(fused_kernels, "_loaded", {})
            kernels = fused_kernels.load_fused_kernels()
            if setting == "loops":
                assert kernels.vectorised_paths == frozenset()
            torch.manual_seed(0)
            stm = STM(12, 5, d=96, num_slots=2, rel_size=8)
            with torch.no_grad():
                for alpha in (stm.cell.alpha1, stm.cell.alpha2, stm.cell.alpha3):
                    alpha.fill_(0.3)
            y, state = stm(torch.randn(2, 3, 12))
            results.append([y, *torch.autograd.grad(y.square().sum() + state.relational.sum(), list(stm.parameters()))])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("family", sorted(fused_kernels.TWIN_FAMILIES))
def test_a_build_without_one_family_of_twins_lacks_exactly_that_family(family, monkeypatch, tmp_path):
    """STM_RL_FUSED_KERNELS=no-<family>-twin (to measure what one family of hand-written versions pays): that
    family's paths are no longer vectorised, every other path is as in the default build."""
    monkeypatch.setenv("STM_RL_CACHE_DIR", str(tmp_path))
    paths = {}
    for setting in ("auto", f"no-{family}-twin"):
        monkeypatch.setenv(fused_kernels.SETTING_VARIABLE, setting)
        monkeypatch.setattr(fused_kernels, "_loaded", {})
        paths[setting] = fused_kernels.load_fused_kernels().vectorised_paths
    left_out = frozenset(fused_kernels.TWIN_FAMILIES[family])
    assert paths[f"no-{family}-twin"] == paths["auto"] - left_out
    if "__AVX512F__" not in _compiler_macros():
        pytest.skip("no AVX-512 on this CPU: no build has twins to leave out")
    assert paths["auto"] & left_out, f"the default build runs none of {sorted(left_out)} vectorised"
