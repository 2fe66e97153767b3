"""The observation normaliser (``--normalize-obs``): part of the agent, updated by the workers on the shared
model, saved in checkpoints; runs recorded when it lived in the environment still load."""

from __future__ import annotations

import dataclasses
import queue
import threading

import pytest
import torch

from agents import AgentConfig, FrameNormalizer, build_agent
from envs import EnvConfig
from stm_rl.a3c import SharedAdam, TrainConfig, load_agent_from_checkpoint
from stm_rl.a3c.checkpoint import load_training_checkpoint, save_training_checkpoint
from stm_rl.a3c.config import A3CConfig, RunConfig
from stm_rl.a3c.train_command import config_from_args
from stm_rl.a3c.worker import WorkerContext, train_worker
from stm_rl.cli import build_parser


def _frame_by_frame(frames: torch.Tensor, alpha: float) -> tuple[float, float]:
    """The classic NormalizedEnv's running statistics, one frame at a time, bias-corrected."""
    mean = std = 0.0
    for count, frame in enumerate(frames, start=1):
        mean = alpha * mean + (1 - alpha) * frame.mean().item()
        std = alpha * std + (1 - alpha) * frame.std(correction=0).item()
    correction = 1 - alpha ** len(frames)
    return mean / correction, std / correction


def test_batched_update_equals_one_step_per_frame():
    torch.manual_seed(0)
    frames = torch.rand(7, 3, 1, 10, 10) * torch.linspace(0.2, 1.0, 7).view(7, 1, 1, 1, 1)
    normalizer = FrameNormalizer(alpha=0.9)  # a fast decay, so that the order of the frames matters
    normalizer.update(frames[:2])
    normalizer.update(frames[2:])
    mean, std = _frame_by_frame(frames.flatten(0, 1), alpha=0.9)
    assert normalizer.count.item() == 21
    assert normalizer.statistics() == pytest.approx((mean, std), rel=1e-9)
    torch.testing.assert_close(normalizer(frames[0]), (frames[0] - mean) / (std + 1e-8))
    assert FrameNormalizer()(frames[0]).equal(frames[0]), "no statistics yet: frames pass unchanged"


def test_the_device_statistics_are_the_host_ones():
    """On accelerators the forward pass uses tensor statistics (no host synchronisation): the same values."""
    fresh = FrameNormalizer()
    assert tuple(t.item() for t in fresh.statistics_on_device()) == fresh.statistics() == (0.0, 1.0)
    normalizer = FrameNormalizer(alpha=0.99)
    normalizer.update(torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0)))
    mean, std = normalizer.statistics_on_device()
    assert mean.dtype == std.dtype == torch.float64 and mean.device == normalizer.mean.device
    assert (mean.item(), std.item()) == pytest.approx(normalizer.statistics(), rel=1e-12)
    frames = torch.rand(2, 1, 6, 6)
    torch.testing.assert_close((frames - mean) / (std + 1e-8), normalizer(frames))


def _config(tmp_path, normalize: bool = True) -> TrainConfig:
    """LSTM agent on the cue-memory task, one worker with 2 envs, 5-step rollouts, a 40-frame budget."""
    return TrainConfig(env=EnvConfig(game="cue-memory"),
                       agent=AgentConfig(agent="lstm", encoder="small", normalize_obs=normalize),
                       a3c=A3CConfig(envs_per_worker=2, rollout_steps=5),
                       run=RunConfig(run_dir=tmp_path / "run", frames=40, workers=1))


def test_the_worker_feeds_the_shared_statistics_with_every_frame_it_acts_on(tmp_path):
    config = _config(tmp_path)
    shared = build_agent(config.agent, 6)
    shared.share_memory()
    counters = torch.zeros(1, 3, dtype=torch.int64)
    ctx = WorkerContext(config, shared, SharedAdam(shared.parameters()), counters, 0, 0, threading.Event(),
                        queue.Queue())
    train_worker(0, ctx)
    updates = int(counters[0, 2])
    assert updates >= 4  # cue-memory: one frame per step, 10 per update, budget 40
    # the first observations of both envs, then the 2 x 5 frames of each rollout
    assert shared.normalizer.count.item() == 2 + 10 * updates
    mean, std = shared.normalizer.statistics()
    assert 0.0 < mean < 0.5 and 0.0 < std < 0.6  # cue frames are half lit, blank frames are 0


def test_the_statistics_survive_a_checkpoint_round_trip(tmp_path):
    config = _config(tmp_path)
    model = build_agent(config.agent, 6)
    model.observe_frames(torch.rand(30, 1, 42, 42) * 0.5)
    path = save_training_checkpoint(tmp_path / "latest.pt", model, SharedAdam(model.parameters()),
                                    {"frames": 0, "games": 0}, {"recent": [], "best_average": 0.0}, config)
    loaded, loaded_config, _ = load_agent_from_checkpoint(path)
    assert loaded_config.agent.normalize_obs
    for name in ("mean", "std", "count"):
        assert getattr(loaded.normalizer, name).equal(getattr(model.normalizer, name)), name
    assert loaded.normalizer.count.item() == 30
    frames = torch.rand(2, 1, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(loaded.act(frames, loaded.initial_state(2))[0],
                                   model.act(frames, model.initial_state(2))[0], rtol=0, atol=0)
        fresh = build_agent(config.agent, 6)
        fresh.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("normalizer.")},
                              strict=False)
        assert not torch.equal(fresh.act(frames, fresh.initial_state(2))[0],
                               model.act(frames, model.initial_state(2))[0]), "the statistics change the output"


def test_a_run_recorded_with_the_normaliser_in_the_env_still_loads(tmp_path):
    config = _config(tmp_path)
    model = build_agent(config.agent, 6)
    path = save_training_checkpoint(tmp_path / "old.pt", model, SharedAdam(model.parameters()),
                                    {"frames": 0, "games": 0}, {"recent": [], "best_average": 0.0}, config)
    record = torch.load(path, weights_only=False)  # made into what such runs saved: no statistics, env flag
    record["model"] = {k: v for k, v in record["model"].items() if not k.startswith("normalizer.")}
    old_config = record["config"]
    old_config["env"]["normalize_obs"] = old_config["agent"].pop("normalize_obs")
    torch.save(record, path)
    loaded_record = load_training_checkpoint(path)
    assert loaded_record["config"].agent.normalize_obs
    loaded, _, _ = load_agent_from_checkpoint(path)
    assert loaded.normalizer.count.item() == 0, "the statistics start afresh, as they did in the env"
    off = TrainConfig.from_dict({**old_config, "env": {**old_config["env"], "normalize_obs": False}})
    assert not off.agent.normalize_obs and dataclasses.asdict(off.env) == dataclasses.asdict(config.env)


def test_the_flag_users_know_still_sets_it():
    parser = build_parser()
    assert config_from_args(parser.parse_args(["train", "--normalize-obs"])).agent.normalize_obs
    assert not config_from_args(parser.parse_args(["train"])).agent.normalize_obs
    assert build_agent(AgentConfig(encoder="small"), 6).normalizer is None, "off by default: nothing in the state"
