"""Tests of envs/ on the real ALE Pong ROM (spec: ../shared/spec/A3C_PONG.md, "Environment")."""

import numpy as np
import pytest

from envs import DEFAULT_MAX_EPISODE_FRAMES, AtariEnv, EnvConfig, make_pong


def play(env: AtariEnv, actions):
    """Step through ``actions``; return the list of step results (stops at the end of the episode)."""
    results = []
    for action in actions:
        results.append(env.step(int(action)))
        if results[-1][2] or results[-1][3]:
            break
    return results


@pytest.mark.parametrize("skip", [0, 4, 16, 32])
def test_each_step_advances_the_emulator_by_the_frame_skip(skip):
    env = make_pong(frame_skip=skip, seed=0)
    _, info = env.reset()
    assert info["frames"] == env.ale.getEpisodeFrameNumber()  # the reset's no-ops and FIRE
    repeat = max(skip, 1)
    for action in np.random.default_rng(0).integers(0, 6, size=20):
        before = (env.ale.getEpisodeFrameNumber(), env.ale.getFrameNumber())
        _, _, terminated, truncated, info = env.step(int(action))
        assert not (terminated or truncated)
        assert env.ale.getEpisodeFrameNumber() - before[0] == repeat
        assert env.ale.getFrameNumber() - before[1] == repeat
        assert info["frames"] == repeat


@pytest.mark.parametrize("size", [80, 42])
def test_observation_shape_range_dtype(size):
    env = make_pong(obs_size=size, seed=1)
    obs, _ = env.reset()
    observations = [obs] + [r[0] for r in play(env, [0, 2, 3, 1] * 10)]
    assert env.observation_space.shape == (1, size, size)
    for obs in observations:
        assert obs.shape == (1, size, size) and obs.dtype == np.float32
        assert env.observation_space.contains(obs)
        assert 0.0 <= obs.min() and obs.max() <= 1.0
    assert observations[-1].max() > observations[-1].min()  # a real picture, not a blank


def test_action_space_is_the_minimal_pong_set():
    env = make_pong()
    assert env.action_space.n == 6


def rollout(seed, actions, **config):
    env = make_pong(seed=None, **config)
    obs, info = env.reset(seed=seed)
    return info["noops"], [obs] + [r[0] for r in play(env, actions)]


def test_same_seed_same_observations_and_different_seeds_differ():
    actions = np.random.default_rng(0).integers(0, 6, size=60)
    noops_a, run_a = rollout(3, actions)
    noops_b, run_b = rollout(3, actions)
    noops_c, run_c = rollout(4, actions)
    assert noops_a == noops_b and len(run_a) == len(run_b)
    assert all(np.array_equal(a, b) for a, b in zip(run_a, run_b))
    assert noops_a != noops_c  # seeds 3 and 4 draw different no-op starts
    assert not all(np.array_equal(a, c) for a, c in zip(run_a, run_c))


def test_seed_in_config_is_used_by_the_first_reset_and_sticky_actions_are_seeded():
    actions = np.random.default_rng(1).integers(0, 6, size=40)
    runs = []
    for _ in range(2):
        env = make_pong(seed=7, sticky_action_prob=0.25)
        obs, _ = env.reset()
        runs.append([obs] + [r[0] for r in play(env, actions)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    # Without no-ops, only the ALE's sticky-action RNG can tell two seeds apart: it must be reseeded.
    _, run_a = rollout(1, actions, sticky_action_prob=0.25, noop_max=0)
    _, run_b = rollout(2, actions, sticky_action_prob=0.25, noop_max=0)
    assert not all(np.array_equal(a, b) for a, b in zip(run_a, run_b))


def test_a_game_ends_with_a_score_in_range():
    env = make_pong(frame_skip=32, obs_size=42, seed=5)
    _, reset_info = env.reset()
    results = play(env, np.random.default_rng(5).integers(0, 6, size=5000))
    obs, reward, terminated, truncated, info = results[-1]
    assert terminated and not truncated
    episode = info["episode"]
    assert -21 <= episode["score"] <= 21 and abs(episode["score"]) == 21  # Pong ends when a side scores 21
    assert episode["score"] == sum(r[4]["raw_reward"] for r in results)
    assert episode["length"] == len(results)
    assert episode["frames"] == env.ale.getEpisodeFrameNumber()
    assert episode["frames"] == reset_info["frames"] + sum(r[4]["frames"] for r in results)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


@pytest.mark.parametrize("fire", [True, False])
def test_fire_on_reset_presses_fire_once_after_the_noops(fire):
    env = make_pong(frame_skip=4, noop_max=0, fire_on_reset=fire, seed=0)
    assert env.unwrapped._fire_on_reset is fire
    _, info = env.reset()
    assert info["frames"] == (1 if fire else 0) and info["noops"] == 0


def test_episode_frame_cap_truncates():
    assert EnvConfig().max_episode_frames == DEFAULT_MAX_EPISODE_FRAMES == 108_000
    env = make_pong(frame_skip=4, max_episode_frames=200, noop_max=0, fire_on_reset=False, seed=0)
    _, info = env.reset()
    assert info["frames"] == 0
    results = play(env, [0] * 100)
    _, _, terminated, truncated, info = results[-1]
    assert truncated and not terminated
    assert len(results) == 50 and info["episode"] == {"score": 0.0, "length": 50, "frames": 200}
    assert all(not (r[2] or r[3]) for r in results[:-1])


def test_clip_reward_clips_the_reward_but_not_the_raw_score():
    # Same seeded game with and without clipping: identical play, rewards compared step by step.
    actions = np.random.default_rng(2).integers(0, 6, size=5000)
    raw_env = make_pong(frame_skip=32, obs_size=42, seed=2)
    clipped_env = make_pong(frame_skip=32, obs_size=42, seed=2, clip_reward=True)
    raw_env.reset()
    clipped_env.reset()
    raw, clipped = play(raw_env, actions), play(clipped_env, actions)
    assert len(raw) == len(clipped)
    for (_, r_raw, *_, info_raw), (_, r_clip, *_, info_clip) in zip(raw, clipped):
        assert info_clip["raw_reward"] == info_raw["raw_reward"] == r_raw
        assert r_clip == np.sign(r_raw)
    assert clipped[-1][4]["episode"] == raw[-1][4]["episode"]
    assert clipped[-1][4]["episode"]["score"] == sum(r[1] for r in raw)


def test_reward_sign_clipping_of_a_summed_reward():
    """A raw step reward with |r| > 1 is clipped to +-1 (driven through the env's own step path)."""
    env = make_pong(frame_skip=4, clip_reward=True, noop_max=0, seed=0)
    env.reset()
    env._play = lambda action: (-3.0, 4)  # a repeat that summed three lost points
    _, reward, _, _, info = env.step(0)
    assert reward == -1.0 and info["raw_reward"] == -3.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"frame_skip": -1}, "frame_skip must be an integer >= 0"),
        ({"obs_size": 0}, "obs_size must be an integer in 1..160"),
        ({"obs_size": 200}, "obs_size must be an integer in 1..160"),
        ({"sticky_action_prob": 1.5}, r"sticky_action_prob must be in \[0, 1\]"),
        ({"sticky_action_prob": -0.1}, r"sticky_action_prob must be in \[0, 1\]"),
        ({"noop_max": -1}, "noop_max must be an integer >= 0"),
        ({"max_episode_frames": 0}, "max_episode_frames must be a positive integer"),
        ({"game": "pongg"}, "unknown game 'pongg'"),
    ],
)
def test_bad_arguments_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        EnvConfig(**overrides)
    with pytest.raises(ValueError, match=message):
        make_pong(**overrides)


def test_bad_render_mode_and_action_raise_value_error():
    with pytest.raises(ValueError, match="render_mode"):
        make_pong(render_mode="human")
    env = make_pong(seed=0)
    env.reset()
    with pytest.raises(ValueError, match="action must be in 0..5"):
        env.step(6)


def test_rgb_array_render_for_video():
    env = make_pong(frame_skip=4, render_mode="rgb_array", seed=0)
    env.reset()
    env.step(0)
    frame = env.render()
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8
    assert env.metadata["render_fps"] == 15.0
    assert make_pong().render() is None


def test_configured_seed_applies_to_the_first_reset_only():
    """Games after the first are new games, whether the first reset was given a seed or not."""
    for first_seed in (None, 5):
        env = make_pong(obs_size=42, frame_skip=4, seed=5)
        noops = [env.reset(seed=first_seed)[1]["noops"]] + [env.reset()[1]["noops"] for _ in range(6)]
        assert len(set(noops)) > 1, f"every reset replayed the same start: {noops}"
