"""bf16 mixed precision (``--precision bf16``) and the channels-last encoders: same numbers within bf16's
tolerance, fp32 where it is promised, a clear error where the CPU has no native bf16."""

from __future__ import annotations

import pytest
import torch

import agents.precision as precision_module
from agents import AgentConfig, build_agent
from agents.encoders import encode_frames, make_encoder
from stm_rl.cli import main as cli_main
from stm_rl.memory import STM
from stm_rl.memory.ops import relational_read, relational_update


@pytest.fixture
def native_bf16(monkeypatch):
    """Let bf16 agents be built on any CPU (these tests are tiny; emulated bf16 is only slow)."""
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)


def _twin_agents(agent: str, encoder: str):
    """An fp32 and a bf16 agent with the same weights (alphas non-zero so the STM's paths all count)."""
    torch.manual_seed(0)
    fp32 = build_agent(AgentConfig(agent=agent, encoder=encoder), 6)
    with torch.no_grad():
        for name, param in fp32.named_parameters():
            if "alpha" in name:
                param.fill_(0.3)
    bf16 = build_agent(AgentConfig(agent=agent, encoder=encoder, precision="bf16"), 6)
    bf16.load_state_dict(fp32.state_dict())
    return fp32, bf16


def _rollout(config: AgentConfig, batch: int = 3, steps: int = 5):
    torch.manual_seed(1)
    size = config.obs_size
    episode_start = torch.zeros(batch, steps, dtype=torch.bool)
    episode_start[:, 0] = episode_start[1, 3] = True
    return torch.rand(batch, steps, 1, size, size), episode_start


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("agent, encoder", [("stm", "small"), ("lstm", "small"), ("stm", "paper")])
def test_bf16_unroll_and_gradients_match_fp32(native_bf16, agent, encoder):
    """The bf16 replay and its gradients (the crash of issue 10 was here) agree with fp32 to bf16's precision."""
    fp32, bf16 = _twin_agents(agent, encoder)
    obs, episode_start = _rollout(fp32.config)
    results = []
    for model in (fp32, bf16):
        logits, values, state = model.unroll(obs, model.initial_state(3), episode_start)
        (logits.square().sum() + values.sum()).backward()
        results.append((logits, values, state, {n: p.grad for n, p in model.named_parameters()}))
    (logits32, values32, state32, grads32), (logits16, values16, state16, grads16) = results
    assert logits16.dtype == values16.dtype == torch.float32, "losses are computed from fp32 outputs"
    assert state16.lstm[0].dtype == torch.float32
    torch.testing.assert_close(logits16, logits32, atol=2e-3, rtol=0.05)  # logits are ~0.01 (small actor head)
    torch.testing.assert_close(values16, values32, atol=0.05, rtol=0.05)
    if agent == "stm":
        assert state16.stm.item.dtype == state16.stm.relational.dtype == torch.float32, "memories stay fp32"
        # the recurrence runs in fp32 (bf16 there drifts by ~4% in 5 steps); only its bf16-rounded input differs
        assert _relative_error(state16.stm.relational, state32.stm.relational) < 0.005
    total = torch.cat([g.flatten() for g in grads32.values()]).norm()
    assert _relative_error(torch.cat([g.flatten() for g in grads16.values()]),
                           torch.cat([g.flatten() for g in grads32.values()])) < 0.08  # sums with cancellation
    for name, grad in grads32.items():  # each tensor's error, relative to its norm or 1% of the total if tinier
        assert grads16[name].dtype == torch.float32, name
        assert (grads16[name] - grad).norm() < 0.1 * max(grad.norm(), 0.01 * total), name


def test_bf16_acting_matches_its_replay(native_bf16):
    """act step by step and unroll over the rollout give the same numbers in bf16 too (within bf16 tolerance)."""
    _, model = _twin_agents("stm", "small")
    obs, episode_start = _rollout(model.config)
    with torch.no_grad():
        state = start = model.initial_state(3)
        logits = []
        for t in range(obs.shape[1]):
            state = model.reset_state(state, episode_start[:, t])
            step_logits, _, state = model.act(obs[:, t], state)
            logits.append(step_logits)
        replay, _, replay_state = model.unroll(obs, start, episode_start)
    torch.testing.assert_close(replay, torch.stack(logits, 1), atol=2e-3, rtol=0.05)
    assert _relative_error(replay_state.stm.relational, state.stm.relational) < 0.005


def test_stm_under_autocast_keeps_fp32_memories_and_tracks_fp32():
    torch.manual_seed(0)
    model = STM(16, 8, d=6, num_slots=3, rel_size=5)
    with torch.no_grad():
        for i in (1, 2, 3):
            getattr(model.cell, f"alpha{i}").fill_(0.5)
    x = torch.randn(2, 4, 16)
    y32, state32 = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, state16 = model(x)
    assert state16.item.dtype == state16.relational.dtype == torch.float32
    assert _relative_error(y16.float(), y32) < 0.05
    assert _relative_error(state16.relational, state32.relational) < 1e-4, "the recurrence is not in bf16"


@pytest.mark.parametrize("memory_dtype", [torch.float32, torch.bfloat16])
def test_memory_functions_accept_mixed_dtypes(memory_dtype):
    """relational_read and relational_update with a memory of one dtype and small inputs/gradients of another
    (autocast's situation): results in the memory's dtype, each gradient in its input's dtype, close to fp32."""
    torch.manual_seed(0)
    memory32 = torch.randn(2, 3, 8, 8)
    p32, w32, alpha32 = torch.softmax(torch.randn(2, 3), -1), torch.randn(2, 8), torch.tensor(0.7)
    scores32, values32 = torch.randn(2, 3, 3 * 8), torch.randn(2, 3, 8)
    other = torch.bfloat16 if memory_dtype == torch.float32 else torch.float32

    def run(memory, p, w, alpha, scores, values):
        leaves = [t.clone().requires_grad_() for t in (memory, p, w, alpha, scores, values)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = relational_read(leaves[0], leaves[1], leaves[2]).float().square().sum()
            out = out + relational_update(leaves[0], *leaves[3:]).float().square().sum()
        out.backward()
        return out, [leaf.grad for leaf in leaves]

    out, grads = run(memory32.to(memory_dtype), p32.to(other), w32.to(other), alpha32, scores32.to(other),
                     values32.to(other))
    ref_out, ref_grads = run(memory32, p32, w32, alpha32, scores32, values32)
    assert [g.dtype for g in grads] == [memory_dtype, other, other, torch.float32, other, other]
    assert abs(out.item() - ref_out.item()) < 0.02 * abs(ref_out.item())
    for grad, ref in zip(grads, ref_grads):
        assert _relative_error(grad.float(), ref) < 0.03


def test_channels_last_encoders_give_the_default_layout_numbers():
    for name in ("small", "paper"):
        encoder = make_encoder(name)
        assert encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
        plain = type(encoder)()
        plain.load_state_dict(encoder.state_dict())  # same weights, default (contiguous) layout
        frames = torch.rand(2, 3, 1, encoder.input_size, encoder.input_size)
        torch.testing.assert_close(encode_frames(encoder, frames), plain(frames.flatten(0, 1)).view(2, 3, -1))


def test_bf16_without_native_support_is_refused_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="--precision bf16 needs a CPU with native bf16"):
        build_agent(AgentConfig(precision="bf16"), 6)
    build_agent(AgentConfig(precision="fp32", encoder="small"), 6)  # fp32 is never refused
    run_dir = tmp_path / "run"
    code = cli_main(["train", "--agent", "lstm", "--encoder", "small", "--game", "cue-memory", "--workers", "1",
                     "--frames", "1000", "--precision", "bf16", "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "--precision bf16 needs a CPU with native bf16" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists(), "nothing half-made"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        AgentConfig(precision="fp8")


class _CountingAutocast:
    """``torch.autocast`` that counts the bf16 regions opened (not the fp32 islands inside them)."""

    def __init__(self, real):
        self.real, self.opened = real, 0

    def __call__(self, *args, **kwargs):
        self.opened += kwargs.get("dtype") == torch.bfloat16 and kwargs.get("enabled", True)
        return self.real(*args, **kwargs)


def test_a_rollout_acts_in_one_autocast_region_and_a_game_in_one(native_bf16, monkeypatch, tmp_path):
    """Issue 10: one region around the acting loop (the weights are cast to bf16 once per rollout), not one per
    step; the replay opens its own."""
    import queue
    import threading

    from envs import EnvConfig, make_env
    from stm_rl.a3c import A3CConfig, RunConfig, SharedAdam, TrainConfig
    from stm_rl.a3c.play import play_game
    from stm_rl.a3c.worker import WorkerContext, train_worker

    counting = _CountingAutocast(torch.autocast)
    monkeypatch.setattr(torch, "autocast", counting)
    config = TrainConfig(env=EnvConfig(game="cue-memory"),
                         agent=AgentConfig(agent="stm", encoder="small", precision="bf16"),
                         a3c=A3CConfig(envs_per_worker=2, rollout_steps=6),
                         run=RunConfig(run_dir=tmp_path, frames=36, workers=1))
    shared = build_agent(config.agent, 6)
    counters = torch.zeros(1, 3, dtype=torch.int64)
    train_worker(0, WorkerContext(config, shared, SharedAdam(shared.parameters()), counters, 0, 0,
                                  threading.Event(), queue.Queue()))
    updates = int(counters[0, 2])
    assert updates == 3 and counting.opened == 2 * updates, "acting: one region per rollout; replay: one"
    counting.opened = 0
    result = play_game(shared, make_env(config.env), sample=False, generator=torch.Generator())
    assert result.length == 3 and counting.opened == 1, "one region per game"


def test_evaluating_a_bf16_agent_without_native_bf16_plays_in_fp32(native_bf16, monkeypatch, tmp_path, capsys):
    """Training refuses bf16 on such a CPU (test above); evaluating a bf16-trained agent falls back to fp32."""
    from envs import EnvConfig
    from stm_rl.a3c import A3CConfig, RunConfig, SharedAdam, TrainConfig
    from stm_rl.a3c.checkpoint import save_training_checkpoint

    config = TrainConfig(env=EnvConfig(game="cue-memory"),
                         agent=AgentConfig(agent="lstm", encoder="small", precision="bf16"),
                         a3c=A3CConfig(envs_per_worker=1), run=RunConfig(run_dir=tmp_path, workers=1))
    model = build_agent(config.agent, 6)
    path = save_training_checkpoint(tmp_path / "bf16.pt", model, SharedAdam(model.parameters()),
                                    {"frames": 10, "games": 1}, {"recent": [], "best_average": 0.0}, config)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    output = tmp_path / "eval.json"
    assert cli_main(["evaluate", str(path), "--episodes", "2", "--output", str(output), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plays in fp32" in err[0] and "native bf16" in err[0], err
    import json

    report = json.loads(output.read_text())
    assert report["precision"] == "fp32" and len(report["scores"]) == 2
