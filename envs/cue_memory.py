"""A tiny memory task with Pong-shaped observations, for checking that an agent and A3C learn at all.

Each game: the first observation shows a cue (the left or the right half of the screen lit), then
``delay`` blank observations follow; on the last of them the agent must answer: an even action for
"left", an odd one for "right". Reward +1 for the right answer, -1 otherwise; the game ends there.
A policy without memory scores 0 on average, a perfect one +1. A few thousand games suffice for the
LSTM and STM agents with A3C, so tests can tell "learns" from "does not learn" within a minute of CPU.

It follows the :class:`envs.AtariEnv` conventions: float32 ``(1, S, S)`` observations in [0, 1],
6 discrete actions, ``info`` with ``frames`` and ``raw_reward``, and ``episode`` at the end of a game.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

NUM_ACTIONS = 6


class CueMemoryEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, obs_size: int = 42, delay: int = 2, seed: int | None = None) -> None:
        if obs_size < 2:
            raise ValueError(f"obs_size must be >= 2, got {obs_size}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.delay = delay
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1, obs_size, obs_size), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._cues = np.zeros((2, 1, obs_size, obs_size), dtype=np.float32)
        self._cues[0, :, :, : obs_size // 2] = 1.0  # left half lit
        self._cues[1, :, :, obs_size // 2:] = 1.0  # right half lit
        self._blank = np.zeros((1, obs_size, obs_size), dtype=np.float32)
        self._pending_seed = seed
        self._cue = 0
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:  # the configured seed applies to the first reset only, explicit seed or not
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(2)), 0
        return self._cues[self._cue].copy(), {"frames": 0}

    def step(self, action):
        self._t += 1
        info: dict[str, Any] = {"frames": 1}
        if self._t <= self.delay:
            info["raw_reward"] = 0.0
            return self._blank.copy(), 0.0, False, False, info
        reward = 1.0 if int(action) % 2 == self._cue else -1.0
        info["raw_reward"] = reward
        info["episode"] = {"score": reward, "length": self._t, "frames": self._t}
        return self._blank.copy(), reward, True, False, info
