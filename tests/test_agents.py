"""The LSTM and STM actor-critic agents."""

from __future__ import annotations

import pytest
import torch

from agents import ActorCritic, AgentConfig, AgentState, build_agent
from stm_rl.memory import STMState


def _with_nonzero_alphas(model: ActorCritic) -> ActorCritic:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "alpha" in name:
                param.fill_(0.3)  # at 0 the STM's relational paths would be invisible
    return model


@pytest.mark.parametrize("agent", ["lstm", "stm"])
@pytest.mark.parametrize("encoder", ["small", "paper"])
def test_unroll_replays_acting_exactly(agent, encoder):
    torch.manual_seed(0)
    config = AgentConfig(agent=agent, encoder=encoder)
    model = _with_nonzero_alphas(build_agent(config, num_actions=4))
    B, T, S = 3, 6, config.obs_size
    obs = torch.rand(B, T, 1, S, S)
    episode_start = torch.zeros(B, T, dtype=torch.bool)
    episode_start[0, 0] = episode_start[1, 3] = episode_start[2, 5] = True
    with torch.no_grad():
        state = model.initial_state(B)
        for _ in range(2):  # a state that is not the initial one
            _, _, state = model.act(torch.rand(B, 1, S, S), state)
        start_state, logits, values = state, [], []
        for t in range(T):
            state = model.reset_state(state, episode_start[:, t])
            step_logits, step_values, state = model.act(obs[:, t], state)
            logits.append(step_logits)
            values.append(step_values)
        replay_logits, replay_values, replay_state = model.unroll(obs, start_state, episode_start)
    assert replay_logits.shape == (B, T, 4) and replay_values.shape == (B, T)
    torch.testing.assert_close(replay_logits, torch.stack(logits, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replay_values, torch.stack(values, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replay_state.lstm[0], state.lstm[0], atol=1e-5, rtol=1e-5)
    if agent == "stm":  # an accumulating memory (entries up to about 6 here): fp32 rounding relative to its scale
        scale = state.stm.relational.abs().max().item()
        torch.testing.assert_close(replay_state.stm.relational, state.stm.relational, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("name", ["small", "paper"])
def test_large_batches_of_frames_are_encoded_in_chunks_with_the_same_numbers(name):
    """On the CPU a replay's frames go through the encoder cpu_frames_per_call at a time (oneDNN's fp32
    convolutions slow down on very large batches); features and weight gradients are those of one call."""
    import agents.encoders as encoders

    torch.manual_seed(0)
    encoder = encoders.make_encoder(name)
    frames = torch.rand(2, 5, 1, encoder.input_size, encoder.input_size)
    batch_sizes = []
    encoder.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))

    def encode_and_differentiate():
        encoder.zero_grad()
        features = encoders.encode_frames(encoder, frames)
        features.square().sum().backward()
        return features.detach(), [p.grad.clone() for p in encoder.parameters()]

    assert encoder.cpu_frames_per_call >= 10
    whole, whole_grads = encode_and_differentiate()
    encoder.cpu_frames_per_call = 4
    chunked, chunked_grads = encode_and_differentiate()
    assert batch_sizes == [10, 4, 4, 2]
    assert chunked.shape == whole.shape == (2, 5, encoder.output_size)
    torch.testing.assert_close(chunked, whole)
    for chunked_grad, whole_grad in zip(chunked_grads, whole_grads):  # sums over frames in another order
        torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-5, atol=1e-5 * whole_grad.abs().max().item())


def test_stm_agent_carries_both_memories_and_resets_to_learned_initial_state():
    torch.manual_seed(0)
    model = _with_nonzero_alphas(build_agent(AgentConfig(agent="stm", encoder="small"), 6))
    state = model.initial_state(2)
    with torch.no_grad():
        _, _, state = model.act(torch.rand(2, 1, 42, 42), state)
        _, _, after = model.act(torch.rand(2, 1, 42, 42), state)
    # the relational memory is carried: the second step starts from the first step's, not from scratch
    assert not torch.allclose(after.stm.relational, state.stm.relational)
    reset = model.reset_state(after, torch.tensor([True, False]))
    torch.testing.assert_close(reset.stm.item[0], model.stm.cell.initial_item)
    torch.testing.assert_close(reset.stm.relational[0], model.stm.cell.initial_relational)
    torch.testing.assert_close(reset.stm.relational[1], after.stm.relational[1])
    assert reset.lstm[0][0].abs().sum() == 0 and reset.lstm[0][1].abs().sum() > 0


def test_gradients_reach_the_learned_initial_memories_at_episode_start():
    model = build_agent(AgentConfig(agent="stm", encoder="small"), 6)
    state = model.initial_state(1)
    start = torch.tensor([[True, False, False]])
    logits, values, _ = model.unroll(torch.rand(1, 3, 1, 42, 42), state, start)
    (logits.sum() + values.sum()).backward()
    assert model.stm.cell.initial_item.grad is not None and model.stm.cell.initial_item.grad.abs().sum() > 0


def test_heads_are_initialised_as_specified():
    model = build_agent(AgentConfig(agent="lstm", encoder="small"), 6)
    torch.testing.assert_close(model.actor.weight.norm(dim=1), torch.full((6,), 0.01))
    torch.testing.assert_close(model.critic.weight.norm(dim=1), torch.ones(1))
    assert model.actor.bias.abs().sum() == 0 and model.lstm.bias_ih.abs().sum() == 0
    stm = build_agent(AgentConfig(agent="stm", encoder="small"), 6)
    assert stm.actor.in_features == 512 and model.actor.in_features == 256


@pytest.mark.parametrize("kwargs, match", [
    (dict(agent="gru"), "unknown agent 'gru'"),
    (dict(encoder="resnet"), "unknown encoder 'resnet'"),
    (dict(hidden_size=0), "hidden_size must be a positive integer"),
])
def test_bad_agent_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AgentConfig(**kwargs)


def test_state_norms_give_each_memorys_mean_and_max_over_the_batch():
    cell = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
    lstm_only = AgentState((torch.zeros(2, 2), cell))
    assert lstm_only.norms() == pytest.approx({"lstm_cell_norm": 3.0, "lstm_cell_norm_max": 5.0})
    item = torch.zeros(2, 3, 3)
    item[1, 0, 0] = 2.0  # norms 0 and 2
    relational = torch.ones(2, 4, 3, 3)  # norms 6 and 6
    norms = AgentState((torch.zeros(2, 2), cell), STMState(item, relational)).norms()
    assert norms["stm_item_norm"] == pytest.approx(1.0) and norms["stm_item_norm_max"] == pytest.approx(2.0)
    assert norms["stm_relational_norm"] == pytest.approx(6.0) and norms["stm_relational_norm_max"] == pytest.approx(6.0)
    model = build_agent(AgentConfig(agent="stm"), num_actions=6)  # the state a run starts from has the same keys
    assert set(model.initial_state(3).norms()) == set(norms)
