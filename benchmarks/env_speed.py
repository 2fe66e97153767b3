"""Single-process speed of the lean Pong env (envs/) against raw ALE and gymnasium's AtariPreprocessing.

Usage:  .venv/bin/python benchmarks/env_speed.py [--seconds 3] [--repeats 1] [--no-vector]

Every measurement plays Pong with uniformly random actions for ``--seconds`` (resets included, timed) and
reports agent steps/s and emulator frames/s; with ``--repeats`` > 1 the best run is kept (the machine is
shared). Baselines, measured in the same run:
  * raw ALE: ``ALEInterface.act`` + ``getScreenGrayscale`` into a buffer on every frame, no Python wrapper
    (and, for reference, ``act`` alone);
  * ``AtariPreprocessing(gym.make("ALE/Pong-v5", frameskip=1), frame_skip=4, scale_obs=True)`` at the
    same observation sizes, the usual wrapper-chain alternative;
  * optionally ``ale_py.AtariVectorEnv`` with one env (C++ preprocessing, frameskip 4, 84x84).
Targets (spec /work/shared/spec/A3C_PONG.md, "Performance facts"): >= 80% of the raw ALE frame rate at
skips 4, 16 and 32, and >= 1.3x the AtariPreprocessing step rate at skip 4.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import ale_py  # noqa: E402
import gymnasium as gym  # noqa: E402

from envs import make_pong  # noqa: E402

SKIPS = (0, 4, 16, 32)
SIZES = (80, 42)
FRAME_TARGET, WRAPPER_TARGET = 0.80, 1.3


def timed(step: Callable[[int], int], seconds: float, repeats: int) -> tuple[float, float]:
    """Call ``step(action)`` (returns frames consumed) for ``seconds``; best (steps/s, frames/s) of repeats."""
    actions = np.random.default_rng(0).integers(0, 6, size=1 << 16).tolist()
    best = (0.0, 0.0)
    for _ in range(repeats):
        for action in actions[:200]:  # warm-up
            step(action)
        steps = frames = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for action in actions[steps & 0xFFFF : (steps & 0xFFFF) + 256]:
                frames += step(action)
            steps += 256
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        best = max(best, (steps / elapsed, frames / elapsed))
    return best


def gym_stepper(env: gym.Env, frames_of: Callable[[dict], int]) -> Callable[[int], int]:
    """A ``step(action) -> frames`` for a gymnasium env, resetting at episode end."""
    env.reset(seed=0)

    def step(action: int) -> int:
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            env.reset()
        return frames_of(info)

    return step


def raw_ale_stepper(read_screen: bool) -> Callable[[int], int]:
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.setInt("frame_skip", 1)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(ale_py.roms.get_rom_path("pong"))
    actions = ale.getMinimalActionSet()
    screen = np.empty(ale.getScreenDims(), dtype=np.uint8)

    def step(action: int) -> int:
        ale.act(actions[action])
        if read_screen:
            ale.getScreenGrayscale(screen)
        if ale.game_over():
            ale.reset_game()
        return 1

    return step


def atari_preprocessing_stepper(size: int) -> Callable[[int], int]:
    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=size, noop_max=30, scale_obs=True)
    return gym_stepper(env, lambda info: 4)  # frames at episode end are slightly fewer: negligible


def vector_env_stepper() -> Callable[[int], int]:
    env = ale_py.AtariVectorEnv("pong", num_envs=1, num_threads=1, frameskip=4, stack_num=1)
    env.reset(seed=0)
    batch = np.zeros(1, dtype=np.int64)

    def step(action: int) -> int:
        batch[0] = action
        env.step(batch)  # autoresets
        return 4

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--repeats", type=int, default=1, help="repeat each measurement, keep the best")
    parser.add_argument("--no-vector", action="store_true", help="skip the ale_py.AtariVectorEnv row")
    args = parser.parse_args()
    measure = lambda stepper: timed(stepper, args.seconds, args.repeats)  # noqa: E731

    _, raw_fps = measure(raw_ale_stepper(read_screen=True))
    _, act_fps = measure(raw_ale_stepper(read_screen=False))
    wrapper_sps = {size: measure(atari_preprocessing_stepper(size))[0] for size in SIZES}
    ours = {
        (skip, size): measure(gym_stepper(make_pong(frame_skip=skip, obs_size=size), lambda info: info["frames"]))
        for skip in SKIPS
        for size in SIZES
    }
    vector = None if args.no_vector else measure(vector_env_stepper())

    print(f"\nPong, one process, random actions, {args.seconds:g} s per measurement (best of {args.repeats})")
    header = f"{'configuration':<40} {'steps/s':>9} {'frames/s':>9} {'/ raw ALE':>10} {'/ AtariPrep':>12}"
    print(header + "\n" + "-" * len(header))
    row = "{:<40} {:>9.0f} {:>9.0f} {:>10} {:>12}"
    print(row.format("raw ALE: act + getScreenGrayscale", raw_fps, raw_fps, "1.00", ""))
    print(row.format("raw ALE: act only (reference)", act_fps, act_fps, f"{act_fps / raw_fps:.2f}", ""))
    for size in SIZES:
        sps = wrapper_sps[size]
        print(row.format(f"AtariPreprocessing skip 4, {size}x{size}", sps, 4 * sps, f"{4 * sps / raw_fps:.2f}", "1.00"))
    if vector is not None:
        sps, fps = vector
        print(row.format("AtariVectorEnv x1 skip 4, 84x84", sps, fps, f"{fps / raw_fps:.2f}", ""))
    failures = []
    for (skip, size), (sps, fps) in ours.items():
        vs_wrapper = f"{sps / wrapper_sps[size]:.2f}" if skip == 4 else ""
        print(row.format(f"envs.make_pong skip {skip:>2}, {size}x{size}", sps, fps, f"{fps / raw_fps:.2f}", vs_wrapper))
        if skip > 0 and fps < FRAME_TARGET * raw_fps:
            failures.append(f"skip {skip} {size}x{size}: {fps / raw_fps:.2f} of raw ALE < {FRAME_TARGET}")
        if skip == 4 and sps < WRAPPER_TARGET * wrapper_sps[size]:
            failures.append(f"skip 4 {size}x{size}: {sps / wrapper_sps[size]:.2f}x AtariPreprocessing < {WRAPPER_TARGET}")
    print(f"\ntargets: >= {FRAME_TARGET:.0%} of raw ALE frames/s at skips 4/16/32, >= {WRAPPER_TARGET}x "
          f"AtariPreprocessing steps/s at skip 4: " + ("met" if not failures else "MISSED"))
    for failure in failures:
        print("  missed:", failure)


if __name__ == "__main__":
    main()
