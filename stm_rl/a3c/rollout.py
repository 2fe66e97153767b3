"""Acting: a model plays B games for T steps at a time (step 2 of the worker's update), carrying the observations
and the recurrent state from one rollout to the next. Used by the A3C worker and by the diagnostics that take the
worker's loss apart (``benchmarks/gradient_sources.py``), so both see the same rollouts."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents import ActorCritic


class Rollout(NamedTuple):
    """T steps of B games. The tensors are the collector's buffers: valid until its next :meth:`~RolloutCollector.collect`."""

    observations: Tensor
    """``[B, T, 1, S, S]``: the frame each action was taken on."""
    episode_starts: Tensor
    """``[B, T]`` bool: the recurrent state was reset before this step (a new game began)."""
    actions: Tensor
    """``[B, T]`` int64, sampled from the policy."""
    rewards: Tensor
    """``[B, T]``, as the environment gives them (clipped by the training environment)."""
    dones: Tensor
    """``[B, T]`` bool: the game ended with this step (lost, won, or cut off by the frame cap)."""
    cutoff_values: Tensor
    """``[B, T]``: where the frame cap cut a game off at this step (gymnasium's ``truncated``), V of the observation
    it was cut off at, which the game would have gone on from; 0 elsewhere (see :meth:`bootstrapped_rewards`)."""
    start_state: Any
    """The recurrent state the rollout started from (detached: truncated backpropagation through time)."""
    last_value: Tensor
    """``[B]``: V of the observation after the last step, the bootstrap (unused where the game ended)."""
    frames: int
    """Emulator frames the rollout took, resets included."""
    acting_logits: Optional[Tensor]
    """``[B, T, A]`` with the acting pass's graph, when it was kept; else None."""
    acting_values: Optional[Tensor]
    """``[B, T]`` with the acting pass's graph, when it was kept; else None."""

    def bootstrapped_rewards(self, gamma: float) -> Tensor:
        """The rewards to learn from: a game cut off by the frame cap did not end, so its last step is bootstrapped
        with ``gamma`` x V of the observation it was cut off at (a lost or won game ends with its reward)."""
        return self.rewards + gamma * self.cutoff_values

    def logits_and_values(self, model: ActorCritic) -> tuple[Tensor, Tensor]:
        """The logits and values to learn from (step 3): the acting pass's, or a replay of the rollout with
        gradients from its start state, which gives the same numbers in a few large operations."""
        if self.acting_logits is not None:
            return self.acting_logits, self.acting_values
        logits, values, _ = model.unroll(self.observations, self.start_state, self.episode_starts)
        return logits, values


class RolloutCollector:
    """Plays ``envs`` with ``model``, ``steps`` steps per :meth:`collect`, sampling actions from the policy.

    An environment whose game ends is reset at once, and its recurrent state is reset before its next step (the
    STM to its learned initial memories). The state at the end of one rollout starts the next, detached."""

    def __init__(self, model: ActorCritic, envs: Sequence[gym.Env], steps: int,
                 on_game_end: Callable[[dict], None] = lambda episode: None) -> None:
        self.model, self.envs, self.steps, self.on_game_end = model, list(envs), steps, on_game_end
        num_envs = len(self.envs)
        self.observation = torch.from_numpy(np.stack([env.reset()[0] for env in self.envs]))  # [B, 1, S, S]
        """The frames the next step acts on."""
        with torch.no_grad():
            self.state = model.initial_state(num_envs)
        self.episode_start = torch.ones(num_envs, dtype=torch.bool)
        self._observations = torch.empty(num_envs, steps, *self.observation.shape[1:])
        self._starts = torch.empty(num_envs, steps, dtype=torch.bool)
        self._actions = torch.empty(num_envs, steps, dtype=torch.long)
        self._rewards = torch.empty(num_envs, steps)
        self._dones = torch.empty(num_envs, steps, dtype=torch.bool)
        self._cutoff_values = torch.zeros(num_envs, steps)

    def collect(self, keep_graph: bool) -> Rollout:
        """One rollout in one autocast region (bf16: the weights are cast once per rollout); with ``keep_graph``
        the acting pass keeps its graph, and its logits and values are the ones to learn from."""
        model, steps = self.model, self.steps
        state = start_state = self.state.detach()
        obs, episode_start = self.observation, self.episode_start
        frames, acting_logits, acting_values = 0, [], []
        self._cutoff_values.zero_()
        with torch.set_grad_enabled(keep_graph), model.autocast():
            for t in range(steps):
                state = model.reset_state(state, episode_start)
                self._observations[:, t], self._starts[:, t] = obs, episode_start
                logits, values, state = model.act(obs, state)
                if keep_graph:
                    acting_logits.append(logits)
                    acting_values.append(values)
                self._actions[:, t] = torch.multinomial(F.softmax(logits.detach(), dim=-1), 1).squeeze(1)
                next_obs, cut_off = [], {}
                for i, env in enumerate(self.envs):
                    o, reward, terminated, truncated, info = env.step(int(self._actions[i, t]))
                    frames += info["frames"]
                    self._rewards[i, t], self._dones[i, t] = reward, terminated or truncated
                    if self._dones[i, t]:
                        if truncated and not terminated:
                            cut_off[i] = o
                        self.on_game_end(info["episode"])
                        o, reset_info = env.reset()
                        frames += reset_info["frames"]
                    next_obs.append(o)
                obs = torch.from_numpy(np.stack(next_obs))
                if cut_off:  # rare (the 108k-frame cap): one more forward, of the observations the games stopped at
                    last_obs = obs.clone()
                    for i, o in cut_off.items():
                        last_obs[i] = torch.from_numpy(o)
                    with torch.no_grad():
                        _, cutoff_values, _ = model.act(last_obs, state)
                    for i in cut_off:
                        self._cutoff_values[i, t] = cutoff_values[i].float()
                episode_start = self._dones[:, t].clone()
            with torch.no_grad():
                _, last_value, _ = model.act(obs, model.reset_state(state, episode_start))
        self.observation, self.state, self.episode_start = obs, state, episode_start
        return Rollout(self._observations, self._starts, self._actions, self._rewards, self._dones,
                       self._cutoff_values, start_state, last_value, frames,
                       torch.stack(acting_logits, dim=1) if keep_graph else None,
                       torch.stack(acting_values, dim=1) if keep_graph else None)
