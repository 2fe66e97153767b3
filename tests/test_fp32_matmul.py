"""fp32 matrix products through oneDNN only where they stay fp32 (stm_rl/fastpath/fp32_matmul.py, issue 10)."""

from __future__ import annotations

import pytest
import torch

import stm_rl.fastpath.fp32_matmul as fp32_matmul
from stm_rl.memory.ops import relational_read, relational_update

pytestmark = pytest.mark.skipif(not fp32_matmul._onednn_setting_available(),
                                reason="this torch build has no oneDNN matmul setting")


@pytest.fixture(autouse=True)
def restore_setting():
    """The setting is process-wide: each test leaves it as it found it."""
    before = torch.backends.mkldnn.matmul.fp32_precision
    yield
    torch.backends.mkldnn.matmul.fp32_precision = before


def _fp32_error(a: torch.Tensor, b: torch.Tensor) -> float:
    exact = a.double() @ b.double()
    return ((a @ b).double() - exact).norm().item() / exact.norm().item()


def test_enabled_only_with_fp32_results_and_then_products_stay_fp32():
    enabled = fp32_matmul.use_onednn_for_fp32_matmul()
    assert enabled == fp32_matmul.onednn_fp32_matmul_enabled()
    torch.manual_seed(0)
    a, b = torch.randn(256, 1024), torch.randn(1024, 96)
    assert _fp32_error(a, b) < 1e-6, "a bf16-rounded product would be ~1e-3 off"
    assert fp32_matmul._products_are_fp32()


def test_a_probe_that_sees_bf16_rounding_leaves_the_setting_alone(monkeypatch):
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"
    monkeypatch.setattr(fp32_matmul, "_products_are_fp32", lambda: False)
    assert fp32_matmul.use_onednn_for_fp32_matmul() is False
    assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    assert not fp32_matmul.onednn_fp32_matmul_enabled()


def test_cpus_with_amx_keep_mkl(monkeypatch):
    """oneDNN would compute fp32 products in bf16 on AMX units: not even probed there."""
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": True})
    monkeypatch.setattr(fp32_matmul, "_products_are_fp32", lambda: pytest.fail("probed on an AMX CPU"))
    assert fp32_matmul.use_onednn_for_fp32_matmul() is False
    assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"


def test_mkl_matmul_switches_to_mkl_inside_and_back_after_an_error():
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    with pytest.raises(RuntimeError, match="inside"):
        with fp32_matmul.mkl_matmul():
            assert not fp32_matmul.onednn_fp32_matmul_enabled()
            raise RuntimeError("inside")
    assert fp32_matmul.onednn_fp32_matmul_enabled()
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"
    with fp32_matmul.mkl_matmul():  # nothing to switch
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"


def test_the_memory_functions_give_the_same_numbers_with_either_library():
    torch.manual_seed(0)
    memory = torch.randn(4, 8, 16, 16)
    p, w = torch.softmax(torch.randn(4, 8), -1), torch.randn(4, 16)
    alpha, scores, values = torch.tensor(0.6), torch.randn(4, 8, 8 * 16), torch.randn(4, 8, 16)
    results = []
    for setting in ("ieee", "bf16"):
        torch.backends.mkldnn.matmul.fp32_precision = setting
        leaves = [t.clone().requires_grad_() for t in (memory, p, w, alpha, scores, values)]
        out = relational_read(*leaves[:3]).square().sum() + relational_update(leaves[0], *leaves[3:]).square().sum()
        out.backward()
        results.append([out.detach()] + [leaf.grad for leaf in leaves])
    for with_mkl, with_onednn in zip(*results):
        torch.testing.assert_close(with_onednn, with_mkl, rtol=1e-5, atol=1e-5)


def test_the_library_choice_is_read_from_the_environment(monkeypatch):
    """(A bad value is refused before a run starts: tests/test_bad_input.py.)"""
    monkeypatch.setenv(fp32_matmul.CHOICE_VARIABLE, "mkl")
    assert fp32_matmul.requested_library() == "mkl"
    monkeypatch.setenv(fp32_matmul.CHOICE_VARIABLE, "openblas")
    with pytest.raises(ValueError, match="STM_RL_FP32_MATMUL='openblas'"):
        fp32_matmul.requested_library()


def test_a_runs_compute_report_follows_the_settings(monkeypatch):
    """What config.json records as ``compute``: the library the settings choose and the state of the kernels."""
    from stm_rl.fastpath import report as compute_report
    from stm_rl.fastpath.kernels import SETTING_VARIABLE

    previous = torch.backends.mkldnn.matmul.fp32_precision
    try:
        monkeypatch.setenv(fp32_matmul.CHOICE_VARIABLE, "mkl")
        monkeypatch.setenv(SETTING_VARIABLE, "off")
        report = compute_report(threads_per_process=3)
        assert report["fp32_matmul"] == "mkl" and report["fused_kernels"] == {
            "state": "off", "setting": f"{SETTING_VARIABLE}=off"}
        assert report["settings"] == {fp32_matmul.CHOICE_VARIABLE: "mkl", SETTING_VARIABLE: "off"}
        assert report["threads_per_process"] == 3 and report["torch"] == torch.__version__
        monkeypatch.setenv(fp32_matmul.CHOICE_VARIABLE, "auto")
        assert compute_report(1)["fp32_matmul"] == ("onednn" if fp32_matmul.use_onednn_for_fp32_matmul() else "mkl")
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous
