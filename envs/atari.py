"""A lean Atari (Pong) environment written directly on ``ale_py.ALEInterface``.

Specification: ``../shared/spec/A3C_PONG.md``, section "Environment" (and "Performance facts" for why
this is not a chain of gymnasium wrappers: ``AtariPreprocessing`` is ~1.45x slower per step).

Frame-skip semantics (the paper's frame skips 0, 4, 16 and 32)
--------------------------------------------------------------
``frame_skip = n`` with ``n >= 0``. The agent chooses an action once per agent step and the emulator
runs ``repeat = max(n, 1)`` frames with it; the rewards of those frames are summed.

* ``n = 0`` means *no skipping*: act on every emulator frame (repeat 1). ALE and gymnasium reject a skip
  of 0, hence the mapping. The observation is then the current frame alone (Pong does not flicker, and
  the recurrent core carries the history).
* ``n >= 2``: the observation is the pixel-wise max of the last two raw frames of the repeat (frames
  ``n - 1`` and ``n``), as in the DQN/A3C lineage. ``n = 1`` behaves like ``n = 0``.
* If the game ends inside a repeat, the remaining frames are not played: ``info["frames"]`` is the
  number of emulator frames actually consumed and the observation is the last frame.

Reset: ``reset_game``, then ``k`` no-ops drawn uniformly from ``1..noop_max`` (the env's own seeded RNG;
no no-ops if ``noop_max = 0``), then one FIRE frame if ``fire_on_reset`` and the game's minimal action set
has FIRE with at least 3 actions (the classic ``FireResetEnv`` rule; true for Pong). Reset frames count
towards the episode (and the 108,000-frame cap) and are reported in the reset ``info["frames"]``.

Preprocessing: grayscale screen read into a preallocated buffer, rows 34..193 (the 160x160 playfield),
``cv2.resize`` with ``INTER_AREA`` to ``obs_size x obs_size`` (for sizes below 80 that do not divide 160,
such as 42, via an exact 2x2 average to 80x80 first, for speed), float32 in [0, 1], shape ``(1, S, S)``.
The optional running standardisation of the frames (``--normalize-obs``) is part of the agent
(:mod:`agents.normalizer`), so that its statistics are checkpointed with the weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from ale_py import Action, ALEInterface, LoggerMode, roms

__all__ = ["EnvConfig", "AtariEnv", "make_env", "make_pong", "probe_action_count", "DEFAULT_MAX_EPISODE_FRAMES"]

DEFAULT_MAX_EPISODE_FRAMES = 108_000
"""The ALE/Machado et al. cap: 30 minutes of play at 60 frames/s."""

_CROP_TOP, _CROP_BOTTOM = 34, 194  # rows 34..193 inclusive: the 160x160 Pong playfield
_PLAYFIELD = _CROP_BOTTOM - _CROP_TOP
_FIRE = Action.FIRE  # the minimal action set holds Action values: the plain int 1 is never found in it
_EMULATOR_FPS = 60
CUE_MEMORY = "cue-memory"  # the toy task of envs.cue_memory, for learning checks


@dataclass(frozen=True)
class EnvConfig:
    """Settings of one Atari environment; validated on construction (``ValueError`` names the problem)."""

    frame_skip: int = 4
    """Emulator frames per agent step is ``max(frame_skip, 1)``; 0 = act every frame (see module doc)."""
    obs_size: int = 80
    """Side S of the square observation (1, S, S): 80 for the paper agent, 42 for the small one; 1..160."""
    sticky_action_prob: float = 0.0
    """ALE ``repeat_action_probability``: 0.0 as in the paper's era, 0.25 for the Machado et al. protocol."""
    noop_max: int = 30
    """At reset, play a random number 1..noop_max of no-op frames (0 disables no-op starts)."""
    fire_on_reset: bool = True
    """Press FIRE for one frame after the no-ops when the game has FIRE (classic ``FireResetEnv``)."""
    clip_reward: bool = False
    """Return ``sign(reward)`` as the step reward (for learning); ``info`` and episode scores stay raw."""
    max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES
    """Emulator frames after which the episode is truncated (ALE ``max_num_frames_per_episode``)."""
    seed: int | None = None
    """Seed used by the first ``reset()`` that is not given one; None draws fresh entropy."""
    game: str = "pong"
    """ALE ROM id (``ale_py.roms.get_all_rom_ids()``; only Pong is tested), or "cue-memory", the toy memory task of ``envs.cue_memory``."""

    def __post_init__(self) -> None:
        if not isinstance(self.frame_skip, (int, np.integer)) or self.frame_skip < 0:
            raise ValueError(f"frame_skip must be an integer >= 0 (0 = act every frame), got {self.frame_skip!r}")
        if not isinstance(self.obs_size, (int, np.integer)) or not 1 <= self.obs_size <= _PLAYFIELD:
            raise ValueError(
                f"obs_size must be an integer in 1..{_PLAYFIELD} (80 paper agent, 42 small agent), "
                f"got {self.obs_size!r}"
            )
        if not 0.0 <= self.sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must be in [0, 1], got {self.sticky_action_prob!r}")
        if not isinstance(self.noop_max, (int, np.integer)) or self.noop_max < 0:
            raise ValueError(f"noop_max must be an integer >= 0, got {self.noop_max!r}")
        if not isinstance(self.max_episode_frames, (int, np.integer)) or self.max_episode_frames < 1:
            raise ValueError(f"max_episode_frames must be a positive integer, got {self.max_episode_frames!r}")
        if self.game != CUE_MEMORY and self.game not in roms.get_all_rom_ids():
            raise ValueError(f"unknown game {self.game!r}: not an ale_py ROM id (see ale_py.roms.get_all_rom_ids()) "
                             f"nor {CUE_MEMORY!r}")

    @property
    def action_repeat(self) -> int:
        """Emulator frames per agent step: ``max(frame_skip, 1)``."""
        return max(self.frame_skip, 1)


class AtariEnv(gym.Env):
    """Single-frame Atari env on a bare ``ALEInterface`` (see the module docstring for the semantics).

    ``step`` returns ``(obs, reward, terminated, truncated, info)`` with ``info`` holding
    ``frames`` (emulator frames consumed by this step), ``raw_reward`` (unclipped) and, when the game
    ends (terminated or truncated), ``episode = {"score", "length", "frames"}``: the raw score, the
    agent steps and the emulator frames of the episode (reset no-ops included).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": _EMULATOR_FPS}

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None) -> None:
        self.config = config = config or EnvConfig()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        # Video of a skipping agent plays at real speed when each agent step is one video frame.
        self.metadata = {**type(self).metadata, "render_fps": _EMULATOR_FPS / config.action_repeat}

        self._rom = roms.get_rom_path(config.game)
        ALEInterface.setLoggerMode(LoggerMode.Error)  # process-wide (static); also silences the banner
        self.ale = ALEInterface()
        self.ale.setInt("frame_skip", 1)
        self.ale.setFloat("repeat_action_probability", float(config.sticky_action_prob))
        self.ale.setInt("max_num_frames_per_episode", int(config.max_episode_frames))
        self.ale.loadROM(self._rom)

        self._actions = list(self.ale.getMinimalActionSet())
        self._fire_on_reset = config.fire_on_reset and _FIRE in self._actions and len(self._actions) >= 3
        self.action_space = gym.spaces.Discrete(len(self._actions))
        size = config.obs_size
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1, size, size), dtype=np.float32)

        height, width = self.ale.getScreenDims()
        self._screens = np.zeros((2, height, width), dtype=np.uint8)  # [previous, current] raw frames
        self._maxed = np.zeros((_PLAYFIELD, width), dtype=np.uint8)
        # cv2's INTER_AREA is ~15x slower for a non-integer ratio (160 -> 42: 60 us) than for an integer
        # one (160 -> 80: 4 us); an exact 2x2 average first makes 42x42 cost ~25 us (same image up to
        # rounding and box edges: mean |diff| 0.03 gray levels on Pong frames).
        self._halve_first = size < _PLAYFIELD // 2 and _PLAYFIELD % size != 0
        self._repeat = config.action_repeat
        self._pending_seed = config.seed
        self._running = False
        self._score = 0.0
        self._length = 0

    # --- gymnasium API -------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a game: seed if asked, ``reset_game``, random no-ops, FIRE (see module doc)."""
        if seed is None:  # the configured seed applies to the first reset only, explicit seed or not
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        if seed is not None:
            # ALE reads random_seed when the ROM is loaded, hence the reload.
            self.ale.setInt("random_seed", int(self.np_random.integers(0, 2**31 - 1)))
            self.ale.loadROM(self._rom)

        noops = int(self.np_random.integers(1, self.config.noop_max + 1)) if self.config.noop_max else 0
        start = [self._actions[0]] * noops + [_FIRE] * self._fire_on_reset
        self.ale.reset_game()
        for action in start:
            self.ale.act(action)
            if self.ale.game_over():  # cannot happen in Pong; keep the start valid anyway
                self.ale.reset_game()

        self._running, self._score, self._length = True, 0.0, 0
        self.ale.getScreenGrayscale(self._screens[1])
        obs = self._observation(use_max=False)
        return obs, {"frames": self.ale.getEpisodeFrameNumber(), "noops": noops}

    def step(self, action):
        if not self._running:
            raise RuntimeError("step() called before reset() or after the episode ended; call reset()")
        if not 0 <= action < len(self._actions):
            raise ValueError(f"action must be in 0..{len(self._actions) - 1}, got {action!r}")
        raw_reward, frames = self._play(self._actions[action])

        terminated = self.ale.game_over(with_truncation=False)
        truncated = not terminated and self.ale.game_truncated()
        self._score += raw_reward
        self._length += 1
        info: dict[str, Any] = {"frames": frames, "raw_reward": raw_reward}
        if terminated or truncated:
            self._running = False
            info["episode"] = {
                "score": self._score,
                "length": self._length,
                "frames": self.ale.getEpisodeFrameNumber(),
            }
        obs = self._observation(use_max=self._repeat >= 2 and frames == self._repeat)
        reward = float(np.sign(raw_reward)) if self.config.clip_reward else raw_reward
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The current RGB screen (210, 160, 3) uint8 for ``render_mode="rgb_array"`` (e.g. RecordVideo)."""
        return self.ale.getScreenRGB() if self.render_mode == "rgb_array" else None

    # --- internals -----------------------------------------------------------------------------------

    def _play(self, action) -> tuple[float, int]:
        """Repeat ``action`` for up to ``repeat`` frames; keep the last two screens. Returns (reward, frames)."""
        ale, repeat = self.ale, self._repeat
        reward = 0
        for frame in range(1, repeat + 1):
            reward += ale.act(action)
            if frame == repeat - 1:
                ale.getScreenGrayscale(self._screens[0])
            if ale.game_over():
                break
        ale.getScreenGrayscale(self._screens[1])
        return float(reward), frame

    def _observation(self, use_max: bool) -> np.ndarray:
        """Crop the playfield (max of the two kept screens if ``use_max``), resize, scale to [0, 1]."""
        current = self._screens[1, _CROP_TOP:_CROP_BOTTOM]
        if use_max:
            current = np.maximum(self._screens[0, _CROP_TOP:_CROP_BOTTOM], current, out=self._maxed)
        size = self.config.obs_size
        if self._halve_first:
            current = cv2.resize(current, (_PLAYFIELD // 2, _PLAYFIELD // 2), interpolation=cv2.INTER_AREA)
        small = cv2.resize(current, (size, size), interpolation=cv2.INTER_AREA)
        obs = small.astype(np.float32)
        obs *= 1.0 / 255.0
        return obs.reshape(1, size, size)


def make_pong(config: EnvConfig | None = None, *, render_mode: str | None = None, **overrides: Any) -> AtariEnv:
    """Build the Pong env: ``make_pong(EnvConfig(...))`` or ``make_pong(frame_skip=32, obs_size=42, ...)``.

    Keyword ``overrides`` are ``EnvConfig`` fields applied on top of ``config`` (default ``EnvConfig()``);
    an unknown field raises ``TypeError``, an invalid value ``ValueError``.
    """
    config = dataclasses.replace(config or EnvConfig(), **overrides)
    return AtariEnv(config, render_mode=render_mode)


def make_env(config: EnvConfig, *, render_mode: str | None = None) -> gym.Env:
    """The environment named by ``config.game``: an Atari game (:class:`AtariEnv`) or the toy "cue-memory"."""
    if config.game == CUE_MEMORY:
        from envs.cue_memory import CueMemoryEnv

        return CueMemoryEnv(obs_size=config.obs_size, seed=config.seed)
    return AtariEnv(config, render_mode=render_mode)


def probe_action_count(config: EnvConfig) -> int:
    """The number of discrete actions of the environment ``config`` describes (the game's minimal action set:
    6 for Pong, 4 for Breakout), read from an env built for the purpose and closed again.

    The agent's actor head is sized from this when a run starts; the count is then saved with the run
    (checkpoints, config.json), so that resuming and evaluating rebuild the same head without asking again.
    """
    env = make_env(config)
    try:
        return int(env.action_space.n)
    finally:
        env.close()
