"""benchmarks/gradient_sources.py and benchmarks/versus_commit.py: what they compute and how they refuse bad input."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


gradient_sources = _load("gradient_sources")
versus_commit = _load("versus_commit")


def test_gradient_split_by_loss_term_bounds_the_total_and_names_the_parameters(capsys):
    args = ["--init", "stm", "--frame-skip", "4", "--updates", "2", "--games", "2", "--game-steps", "3"]
    model, config, _ = gradient_sources.load(gradient_sources.build_parser().parse_args(args))
    results = gradient_sources.rollout_gradients(model, config, games=2, updates=2)
    names = {name for name, _ in model.named_parameters()}
    for result in results:
        assert set(result.by_term) == {"policy", "entropy", "value"}
        assert set(result.by_parameter) <= names and "critic.weight" in result.by_parameter
        # the total gradient is the sum of the terms' gradients: the triangle inequality bounds its norm
        assert 0 < result.total <= sum(result.by_term.values()) * (1 + 1e-5)
    assert gradient_sources.main(args) == 0
    out = capsys.readouterr().out
    assert "gradient norm before clipping" in out and "the STM's memories along one sampled game" in out
    assert "|M_i|" in out and "alpha2" in out


def test_a_trained_agent_is_played_at_another_frame_skip(finished_run):
    parser = gradient_sources.build_parser()
    model, config, what = gradient_sources.load(parser.parse_args([str(finished_run), "--frame-skip", "4"]))
    assert config.env.frame_skip == 4 and "trained at frame skip 32" in what
    _, config, what = gradient_sources.load(parser.parse_args([str(finished_run)]))
    assert config.env.frame_skip == 32 and "trained at" not in what


@pytest.mark.parametrize("args, message", [
    ([], "give either a run directory"),
    (["--init", "lstm", "--updates", "0"], "--updates must be at least 1"),
    (["no/such/run"], "no run directory or checkpoint file"),
    (["--init", "stm", "--frame-skip", "-1"], "--frame-skip must be >= 0"),
])
def test_gradient_sources_refuses_bad_input_in_one_line(args, message, capsys):
    try:  # argparse's own errors exit; the rest come back as the exit code
        code = gradient_sources.run_command("gradient_sources.py", lambda: gradient_sources.main(args))
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


def test_versus_commit_reads_the_rows_of_both_benchmarks():
    train = """A3C throughput, 2 workers, frame skip 4, 30 s each (torch x, 1 thread per worker)
configuration                                 frames/s   steps/s  / emulator
emulator limit 42x42                             32586      8115        1.00
stm-small fp32 x16 env, acting                    4149      1033        0.13
  stm-small fp32: 0.12 (x16 env, gradient pass auto, fp32 products auto, fused kernels auto)"""
    assert versus_commit.parse("train", train) == {"emulator limit 42x42": 32586.0,
                                                   "stm-small fp32 x16 env, acting": 4149.0}
    cell = """batch  implementation            ms/step ms/sample   peak MB  saved MB
    1  stm_rl                 1.885 +- 0.01     1.885        12        10
   16  straightforward       54.210 +- 0.30     3.388       300       250
   16  speed-up x3.21, peak memory 40% of the straightforward version"""
    assert versus_commit.parse("cell", cell) == {"batch 1 stm_rl ms/step": 1.885,
                                                 "batch 16 straightforward ms/step": 54.21}
