"""Acting (stm_rl.a3c.rollout): what a rollout records, and how games and states go on from one rollout to the next."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import AgentConfig, build_agent
from envs.cue_memory import CueMemoryEnv
from stm_rl.a3c.rollout import RolloutCollector


@pytest.mark.parametrize("agent", ["lstm", "stm"])
def test_a_rollout_records_games_ending_and_starting_inside_it(agent):
    torch.manual_seed(0)
    model = build_agent(AgentConfig(agent=agent, encoder="small"), 6)
    # games of 2 and 3 steps (the cue, `delay` blanks, the answer on the last blank)
    envs = [CueMemoryEnv(delay=1, seed=1), CueMemoryEnv(delay=2, seed=2)]
    ended = []
    collector = RolloutCollector(model, envs, steps=7, on_game_end=ended.append)
    first = collector.collect(keep_graph=False)
    dones = first.dones.clone()  # the rollout's tensors are the collector's buffers, reused by the next collect
    expected_dones = torch.zeros(2, 7, dtype=torch.bool)
    expected_dones[0, [1, 3, 5]] = True
    expected_dones[1, [2, 5]] = True
    assert torch.equal(dones, expected_dones)
    assert torch.equal(first.episode_starts[:, 0], torch.tensor([True, True]))
    assert torch.equal(first.episode_starts[:, 1:], dones[:, :-1]), "a state is reset right after its game ended"
    lit = first.observations.flatten(2).sum(-1) > 0  # a game's first frame is its cue, the others are blank
    assert torch.equal(lit, first.episode_starts)
    assert len(ended) == 5 and all(set(game) == {"score", "length", "frames"} for game in ended)
    assert first.frames == 14 and first.last_value.shape == (2,)
    assert first.acting_logits is None and first.actions.dtype == torch.long
    assert ((first.rewards != 0) == dones).all(), "the answer, the only rewarded step, ends the game"

    second = collector.collect(keep_graph=True)
    assert torch.equal(second.episode_starts[:, 0], dones[:, -1]), "games go on across rollouts"
    assert second.acting_logits.shape == (2, 7, 6) and second.acting_logits.requires_grad
    assert second.acting_values.shape == (2, 7)
    replay_logits, replay_values = second._replace(acting_logits=None, acting_values=None).logits_and_values(model)
    torch.testing.assert_close(replay_logits, second.acting_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(replay_values, second.acting_values, rtol=1e-4, atol=1e-5)


class _CappedGame(gym.Env):
    """Games of 3 steps that the frame cap cuts off (``truncated``), with a distinct frame at every step."""

    observation_space = gym.spaces.Box(0.0, 1.0, shape=(1, 42, 42), dtype=np.float32)
    action_space = gym.spaces.Discrete(6)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._frame(), {"frames": 0}

    def step(self, action):
        self.t += 1
        info = {"frames": 1}
        if self.t == 3:
            info["episode"] = {"score": 0.0, "length": 3, "frames": 3}
        return self._frame(), 0.0, False, self.t == 3, info

    def _frame(self):
        return np.full((1, 42, 42), 0.1 * (self.t + 1), dtype=np.float32)


@pytest.mark.parametrize("agent", ["lstm", "stm"])
def test_a_game_cut_off_by_the_frame_cap_is_bootstrapped_from_where_it_stopped(agent):
    torch.manual_seed(0)
    model = build_agent(AgentConfig(agent=agent, encoder="small"), 6)
    rollout = RolloutCollector(model, [_CappedGame(), CueMemoryEnv(delay=1, seed=1)], steps=4).collect(False)
    assert torch.equal(rollout.dones[0], torch.tensor([False, False, True, False]))
    # V of the 4th frame of the game, the state having seen the first three (what the game would go on from)
    with torch.no_grad():
        state = model.initial_state(1)
        for t in range(4):
            _, value, state = model.act(torch.full((1, 1, 42, 42), 0.1 * (t + 1)), state)
    expected = torch.zeros(2, 4)
    expected[0, 2] = value[0]
    torch.testing.assert_close(rollout.cutoff_values, expected, rtol=1e-5, atol=1e-6)
    assert rollout.cutoff_values[1].eq(0).all(), "a lost or won game is not bootstrapped"
    torch.testing.assert_close(rollout.bootstrapped_rewards(0.9), rollout.rewards + 0.9 * expected)
    # the extra forward leaves the acting pass alone: with its graph kept, it still equals the replay
    kept = RolloutCollector(model, [_CappedGame(), CueMemoryEnv(delay=1, seed=1)], steps=4).collect(True)
    torch.testing.assert_close(kept.cutoff_values, expected, rtol=1e-5, atol=1e-6)
    replay_logits, _ = kept._replace(acting_logits=None, acting_values=None).logits_and_values(model)
    torch.testing.assert_close(replay_logits, kept.acting_logits, rtol=1e-4, atol=1e-5)
