"""Throughput of the A3C trainer next to the emulator limit, measured in the same run.

For each configuration, ``--workers`` A3C worker processes (the real :func:`stm_rl.a3c.worker.worker_main`
with a shared model and shared Adam) train on Pong at frame skip 4 for ``--seconds`` after a warm-up;
the emulator limit is the same number of processes stepping the same env with random actions and no
model at all. Prints emulator frames/s, agent steps/s, and the ratios the targets are stated in
(issue 10: the best envs-per-worker setting of each configuration against the emulator limit, and the
STM's rate over the LSTM's with the small encoder).

    python benchmarks/train_speed.py                     # all agents x encoders, ~4 minutes
    python benchmarks/train_speed.py --configs stm-small lstm-small --envs-per-worker 1 4
    python benchmarks/train_speed.py --precision fp32 bf16   # both precisions in the same run
    python benchmarks/train_speed.py --configs stm-small --envs-per-worker 16 --gradient-pass replay acting
    python benchmarks/train_speed.py --configs stm-small --fp32-matmul auto mkl   # oneDNN vs MKL fp32 products
    python benchmarks/train_speed.py --configs stm-small --fused-kernels auto off  # fused STM kernels or not
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time

import numpy as np
import torch
import torch.multiprocessing as mp

from agents import AgentConfig, build_agent
from agents.precision import PRECISIONS
from envs import EnvConfig, make_env, probe_action_count
from stm_rl.conventions import run_command
from stm_rl.a3c import A3CConfig, RunConfig, SharedAdam, TrainConfig
from stm_rl.a3c.worker import FRAMES, AGENT_STEPS, WorkerContext, worker_main
from stm_rl.fastpath.fp32_matmul import CHOICE_VARIABLE, CHOICES
from stm_rl.fastpath.kernels import SETTING_VARIABLE as FUSED_VARIABLE, SETTINGS as FUSED_SETTINGS
from stm_rl.fastpath.kernels import describe_fused_kernels


CONFIGS = ("lstm-small", "stm-small", "lstm-paper", "stm-paper")
"""The agent-encoder pairs this benchmark measures."""


def random_actions(rank: int, env_config: EnvConfig, counters: torch.Tensor, stop) -> None:
    """The emulator limit: step the env with random actions, no model, no learning."""
    torch.set_num_threads(1)
    env = make_env(dataclasses.replace(env_config, seed=rank))
    env.reset()
    rng = np.random.default_rng(rank)
    while not stop.is_set():
        frames = 0
        for action in rng.integers(0, env.action_space.n, size=100):
            _, _, terminated, truncated, info = env.step(int(action))
            frames += info["frames"]
            if terminated or truncated:
                frames += env.reset()[1]["frames"]
        counters[rank] += torch.tensor([100, frames, 0])


def measure(target, make_args, workers: int, warmup: float, seconds: float) -> tuple[float, float]:
    """Start ``workers`` processes, wait for all to be producing, return (frames/s, steps/s) over ``seconds``."""
    ctx = mp.get_context("spawn")
    counters = torch.zeros(workers, 3, dtype=torch.int64).share_memory_()
    stop, events = ctx.Event(), ctx.Queue()
    processes = [ctx.Process(target=target, args=make_args(rank, counters, stop, events), daemon=True)
                 for rank in range(workers)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + 300
    while (counters[:, FRAMES] == 0).any():  # all workers past start-up and their first update
        assert time.monotonic() < deadline and all(p.is_alive() for p in processes), "workers did not start"
        _drain(events)
        time.sleep(0.1)
    _sleep_draining(events, warmup)
    start_counts, start = counters.clone(), time.monotonic()
    _sleep_draining(events, seconds)
    counts, elapsed = counters.clone() - start_counts, time.monotonic() - start
    stop.set()
    _sleep_draining(events, 1.0)
    for p in processes:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
    totals = counts.sum(0)
    return totals[FRAMES].item() / elapsed, totals[AGENT_STEPS].item() / elapsed


def _drain(events) -> None:
    try:
        while True:
            events.get_nowait()
    except Exception:  # noqa: BLE001 - Empty
        pass


def _sleep_draining(events, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _drain(events)
        time.sleep(0.05)


def trainer_args(config: TrainConfig):
    shared = build_agent(config.agent, probe_action_count(config.env))
    shared.share_memory()
    optimizer = SharedAdam(shared.parameters(), lr=config.a3c.lr, eps=config.a3c.adam_eps)

    def make(rank, counters, stop, events):
        return rank, WorkerContext(config, shared, optimizer, counters, 0, 0, stop, events)

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS, metavar="AGENT-ENCODER",
                        help="agent-encoder pairs to measure")
    parser.add_argument("--envs-per-worker", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frame-skip", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per configuration")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after start-up before measuring")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="model precisions to measure (bf16 needs a CPU with native bf16)")
    parser.add_argument("--gradient-pass", nargs="+", choices=["auto", "acting", "replay"], default=["auto"],
                        help="where the workers take the gradients from (A3CConfig.gradient_pass)")
    parser.add_argument("--fp32-matmul", nargs="+", choices=CHOICES, default=["auto"],
                        help=f"library of the workers' fp32 matrix products ({CHOICE_VARIABLE}; stm_rl/fastpath/fp32_matmul.py)")
    parser.add_argument("--fused-kernels", nargs="+", choices=FUSED_SETTINGS, default=["auto"],
                        help=f"the STM's fused CPU kernels in the workers ({FUSED_VARIABLE}; "
                             "stm_rl/fastpath/kernels.py)")
    args = parser.parse_args()
    for precision in args.precision:
        try:  # refuse bf16 on a CPU without native bf16 before starting anything
            build_agent(AgentConfig(precision=precision, encoder="small"), probe_action_count(EnvConfig()))
        except ValueError as error:
            parser.error(str(error))

    print(f"A3C throughput, {args.workers} workers, frame skip {args.frame_skip}, {args.seconds:.0f} s each "
          f"(torch {torch.__version__}, 1 thread per worker)")
    print(describe_fused_kernels())
    print(f"{'configuration':<44} {'frames/s':>9} {'steps/s':>9} {'/ emulator':>11}")
    limits = {}
    for size in sorted({AgentConfig(encoder=c.split('-')[1]).obs_size for c in args.configs}):
        env = EnvConfig(frame_skip=args.frame_skip, obs_size=size)
        frames, steps = measure(random_actions, lambda r, c, s, e, env=env: (r, env, c, s), args.workers,
                                args.warmup, args.seconds)
        limits[size] = frames
        print(f"{f'emulator limit {size}x{size}':<44} {frames:>9.0f} {steps:>9.0f} {1.0:>11.2f}", flush=True)

    results = {}  # (configuration, precision, variant) -> share of the limit
    # variant: envs per worker, gradient pass, fp32 product library, fused kernels
    variants = list(itertools.product(args.envs_per_worker, args.gradient_pass, args.fp32_matmul, args.fused_kernels))
    for name in args.configs:
        agent_kind, encoder = name.split("-")
        for precision in args.precision:
            for variant in variants:
                envs_per_worker, gradient_pass, library, fused = variant
                os.environ[CHOICE_VARIABLE] = library  # the spawned workers read both (stm_rl.process)
                os.environ[FUSED_VARIABLE] = fused
                agent = AgentConfig(agent=agent_kind, encoder=encoder, precision=precision)
                a3c = A3CConfig(envs_per_worker=envs_per_worker, gradient_pass=gradient_pass)
                config = TrainConfig(env=EnvConfig(frame_skip=args.frame_skip, obs_size=agent.obs_size),
                                     agent=agent, a3c=a3c, run=RunConfig(workers=args.workers, frames=10**12))
                frames, steps = measure(worker_main, trainer_args(config), args.workers, args.warmup, args.seconds)
                share = frames / limits[agent.obs_size]
                results[(name, precision, variant)] = share
                used = "acting" if a3c.keeps_acting_graph(agent) else "replay"
                label = f"{name} {precision} x{envs_per_worker} env, {used}"
                if len(args.fp32_matmul) > 1:
                    label += f", fp32 {library}"
                if len(args.fused_kernels) > 1:
                    label += f", fused {fused}"
                print(f"{label:<44} {frames:>9.0f} {steps:>9.0f} {share:>11.2f}", flush=True)

    print("best envs per worker, share of the emulator limit (issue 10 targets: lstm-small >= 0.45, "
          "stm-small >= 0.20, lstm-paper >= 0.12, stm-paper >= 0.08; stm-small / lstm-small >= 0.5)")
    best = {}
    for name in args.configs:
        for precision in args.precision:
            share, (envs, gradient_pass, library, fused) = max((results[(name, precision, v)], v) for v in variants)
            best[(name, precision)] = share
            print(f"  {name} {precision}: {share:.2f} (x{envs} env, gradient pass {gradient_pass}, "
                  f"fp32 products {library}, fused kernels {fused})")
    for precision in args.precision:
        for encoder in ("small", "paper"):
            lstm, stm = best.get((f"lstm-{encoder}", precision)), best.get((f"stm-{encoder}", precision))
            if lstm and stm:
                print(f"  stm / lstm ({encoder}, {precision}, best envs per worker): {stm / lstm:.2f}")


if __name__ == "__main__":
    sys.exit(run_command("train_speed.py", main))
