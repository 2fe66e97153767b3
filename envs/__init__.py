"""Atari environments for the A3C Pong experiments (spec: ../shared/spec/A3C_PONG.md, "Environment").

``make_pong(frame_skip=4, obs_size=80, ...)`` or ``make_pong(EnvConfig(...))`` returns a gymnasium env with
float32 observations (1, S, S) in [0, 1], the game's minimal action set (6 actions for Pong), rewards summed
over skipped frames and ``info`` carrying ``frames``, ``raw_reward`` and, at game end, ``episode``. See
``envs.atari`` for details; :func:`probe_action_count` gives a game's action count.
"""

from envs.atari import DEFAULT_MAX_EPISODE_FRAMES, AtariEnv, EnvConfig, make_env, make_pong, probe_action_count

__all__ = ["AtariEnv", "DEFAULT_MAX_EPISODE_FRAMES", "EnvConfig", "make_env", "make_pong", "probe_action_count"]
