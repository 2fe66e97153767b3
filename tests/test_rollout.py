"""Acting (stm_rl.a3c.rollout): what a rollout records, and how games and states go on from one rollout to the next."""

from __future__ import annotations

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
