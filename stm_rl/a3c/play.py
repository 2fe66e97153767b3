"""Playing whole games with an agent (evaluation), shared by ``stm-rl evaluate`` and the in-training evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import torch

from agents import ActorCritic


@dataclass(frozen=True)
class GameResult:
    score: float
    length: int
    """Agent steps."""
    frames: int
    """Emulator frames."""
    truncated: bool


@torch.no_grad()
def play_game(model: ActorCritic, env: gym.Env, sample: bool, generator: torch.Generator,
              seed: Optional[int] = None) -> GameResult:
    """One game from reset to its end (terminated or truncated), the recurrent state starting fresh; the
    whole game runs in one autocast region of the model's precision (see :meth:`ActorCritic.autocast`)."""
    obs, _ = env.reset(seed=seed)
    state = model.initial_state(1)
    with model.autocast():
        while True:
            logits, _, state = model.act(torch.as_tensor(obs).unsqueeze(0), state)
            action = (torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).item() if sample
                      else int(logits.argmax(-1).item()))
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                episode = info["episode"]
                return GameResult(score=float(episode["score"]), length=int(episode["length"]),
                                  frames=int(episode["frames"]), truncated=bool(truncated and not terminated))
