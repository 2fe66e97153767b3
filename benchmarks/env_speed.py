"""Single-process speed of the lean Pong env (envs/) against raw ALE and gymnasium's AtariPreprocessing.

Usage:  .venv/bin/python benchmarks/env_speed.py [--seconds 3] [--rounds 3] [--no-vector]

Every configuration plays Pong with uniformly random actions for ``--seconds`` in all (resets included,
timed), split into ``--rounds`` interleaved rounds of which the best is kept (the machine is shared), and
reports agent steps/s and emulator frames/s. Baselines, measured in the same run:
  * raw ALE: ``ALEInterface.act`` + ``getScreenGrayscale`` into a buffer on every frame, no Python wrapper
    (and, for reference, ``act`` alone);
  * ``AtariPreprocessing(gym.make("ALE/Pong-v5", frameskip=1), frame_skip=4, scale_obs=True)`` at the
    same observation sizes, the usual wrapper-chain alternative;
  * optionally ``ale_py.AtariVectorEnv`` with one env (C++ preprocessing, frameskip 4, 84x84).
Targets (spec ../shared/spec/A3C_PONG.md, "Performance facts"): >= 80% of the raw ALE frame rate at
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
from stm_rl.conventions import run_command  # noqa: E402

SKIPS = (0, 4, 16, 32)
SIZES = (80, 42)
FRAME_TARGET, WRAPPER_TARGET = 0.80, 1.3


class Stepper:
    """A ``step(action) -> frames consumed`` callable and the best rates measured for it."""

    def __init__(self, step: Callable[[int], int]) -> None:
        self.step = step
        self.steps_per_s = self.frames_per_s = 0.0

    def measure(self, seconds: float, actions: list[int]) -> None:
        """Play ``actions`` in a loop for ``seconds``; keep the best (steps/s, frames/s) so far."""
        step = self.step
        for action in actions[:200]:  # warm-up
            step(action)
        steps = frames = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            offset = steps % len(actions)
            chunk = actions[offset : offset + 256]
            for action in chunk:
                frames += step(action)
            steps += len(chunk)
        elapsed = time.perf_counter() - start
        if steps / elapsed > self.steps_per_s:
            self.steps_per_s, self.frames_per_s = steps / elapsed, frames / elapsed


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
    """Bare ALE, one frame per call: ``act`` (+ ``getScreenGrayscale`` into a buffer if ``read_screen``)."""
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
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
    """gymnasium's wrapper chain at skip 4 with float [0, 1] observations, like ours."""
    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=size, noop_max=30, scale_obs=True)
    return gym_stepper(env, lambda info: 4)  # frames at episode end are slightly fewer: negligible


def vector_env_stepper() -> Callable[[int], int]:
    """ale_py's C++ vector env with a single env (it pays off only batched, see the spec)."""
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
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the time is split into")
    parser.add_argument("--no-vector", action="store_true", help="skip the ale_py.AtariVectorEnv row")
    args = parser.parse_args()

    raw = Stepper(raw_ale_stepper(read_screen=True))
    act_only = Stepper(raw_ale_stepper(read_screen=False))
    wrapper = {size: Stepper(atari_preprocessing_stepper(size)) for size in SIZES}
    vector = None if args.no_vector else Stepper(vector_env_stepper())
    ours = {
        (skip, size): Stepper(gym_stepper(make_pong(frame_skip=skip, obs_size=size), lambda info: info["frames"]))
        for skip in SKIPS
        for size in SIZES
    }
    everything = [raw, act_only, *wrapper.values(), *([vector] if vector else []), *ours.values()]
    actions = np.random.default_rng(0).integers(0, 6, size=1 << 16).tolist()
    for _ in range(args.rounds):  # interleaved, best round kept: the machine is shared
        for stepper in everything:
            stepper.measure(args.seconds / args.rounds, actions)

    raw_fps = raw.frames_per_s
    print(f"\nPong, one process, random actions, {args.seconds:g} s per configuration (best of {args.rounds} rounds)")
    header = f"{'configuration':<40} {'steps/s':>9} {'frames/s':>9} {'/ raw ALE':>10} {'/ AtariPrep':>12}"
    print(header + "\n" + "-" * len(header))

    def row(name: str, stepper: Stepper, vs_wrapper: str = "") -> None:
        ratio = f"{stepper.frames_per_s / raw_fps:.2f}"
        print(f"{name:<40} {stepper.steps_per_s:>9.0f} {stepper.frames_per_s:>9.0f} {ratio:>10} {vs_wrapper:>12}")

    row("raw ALE: act + getScreenGrayscale", raw)
    row("raw ALE: act only (reference)", act_only)
    for size in SIZES:
        row(f"AtariPreprocessing skip 4, {size}x{size}", wrapper[size], "1.00")
    if vector:
        row("AtariVectorEnv x1 skip 4, 84x84", vector)
    failures = []
    for (skip, size), stepper in ours.items():
        vs_wrapper = stepper.steps_per_s / wrapper[size].steps_per_s
        row(f"envs.make_pong skip {skip:>2}, {size}x{size}", stepper, f"{vs_wrapper:.2f}" if skip == 4 else "")
        frame_ratio = stepper.frames_per_s / raw_fps
        if skip > 0 and frame_ratio < FRAME_TARGET:
            failures.append(f"skip {skip} {size}x{size}: {frame_ratio:.2f} of raw ALE frames/s < {FRAME_TARGET}")
        if skip == 4 and vs_wrapper < WRAPPER_TARGET:
            failures.append(f"skip 4 {size}x{size}: {vs_wrapper:.2f}x AtariPreprocessing < {WRAPPER_TARGET}")
    verdict = "met" if not failures else "MISSED"
    print(f"\ntargets (>= {FRAME_TARGET:.0%} of raw ALE frames/s at skips 4/16/32, >= {WRAPPER_TARGET}x "
          f"AtariPreprocessing steps/s at skip 4): {verdict}")
    for failure in failures:
        print("  missed:", failure)


if __name__ == "__main__":
    sys.exit(run_command("env_speed.py", main))
