"""Fixtures shared by the test modules: a finished tiny training run, and readers of a run's files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from stm_rl.cli import main as cli_main
from stm_rl.run_dir import RunDir, read_jsonl

TINY_TRAIN = ("--agent", "lstm", "--encoder", "small", "--frame-skip", "32", "--workers", "1", "--envs-per-worker", "1",
              "--rollout-steps", "20", "--no-progress")


@pytest.fixture
def tiny_train() -> list[str]:
    """Flags of the cheapest real training run: LSTM, small encoder, skip 32, one worker with one env, 640 frames
per update, no bar (explicit, so that the tests do not depend on the defaults)."""
    return list(TINY_TRAIN)


@pytest.fixture(scope="session")
def finished_run_template(tmp_path_factory) -> Path:
    """A completed 3000-frame run (trained once per session; copy it with ``finished_run`` before changing it)."""
    run_dir = tmp_path_factory.mktemp("template") / "run"
    assert cli_main(["train", *TINY_TRAIN, "--frames", "3000", "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture
def finished_run(finished_run_template, tmp_path) -> Path:
    """A private copy of the completed tiny run, to resume, corrupt or lock."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run_template, copy)
    return copy


@pytest.fixture
def games_of() -> Callable[[Path], list[dict]]:
    """``games_of(run_dir)``: the records of the run's game log."""
    return lambda run_dir: list(read_jsonl(RunDir(run_dir).games))


@pytest.fixture
def fit_fixed_batch() -> Callable[..., list[float]]:
    """``fit_fixed_batch(model, task, batch, steps)``: train ``model`` on one batch of a supervised task with Adam
    (lr 1e-2) for ``steps`` steps; the losses, one per step (a model that learns drives them down)."""
    import torch

    def fit(model, task, batch, steps: int) -> list[float]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(steps):
            loss = task.loss(model(batch.inputs), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    return fit


@pytest.fixture
def summary_of() -> Callable[[Path], dict]:
    """``summary_of(run_dir)``: the run's summary.json."""
    return lambda run_dir: json.loads(RunDir(run_dir).summary.read_text())


@pytest.fixture(scope="session", autouse=True)
def fast_cpu_kernels() -> None:
    """The memory operators' CPU kernels registered for the whole session, as every compute process of the package
    registers them (stm_rl.fastpath.enable): which tests run before which does not change the path they test.
    Whether they compute (compiled kernels) still depends on the thread count and STM_RL_FUSED_KERNELS, as in a
    run; tests/test_fastpath.py compares them with the references."""
    from stm_rl import fastpath

    fastpath.register_cpu_kernels()
