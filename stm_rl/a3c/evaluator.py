"""Greedy evaluation games during training, taken at fixed numbers of updates.

With ``--eval-every-updates K``, one extra process watches the workers' update counter; each time it
passes a multiple of K, it copies the shared weights and plays ``--eval-games`` greedy games with them
(raw scores, its own seeded environment). Evaluations are indexed by updates and frames, never paced by
a wall-clock timer, so the curve they draw does not depend on how fast the machine is. The process
shares the CPU with the workers: on a small machine keep K large or leave it off (the default).
"""

from __future__ import annotations

import dataclasses
import signal
import traceback

import torch

from agents import build_agent
from envs import make_env
from stm_rl.a3c.messages import EvaluationDone, ProcessFailed
from stm_rl.a3c.play import play_game
from stm_rl.a3c.worker import FRAMES, UPDATES, WorkerContext, trainer_alive
from stm_rl import fastpath

EVAL_SEED_OFFSET = 1_000_000
"""Added to the run's seed for the evaluation environment, so it never replays a worker's games."""


def evaluator_main(ctx: WorkerContext, updates_before: int) -> None:
    """Process entry point (see the module docstring); errors go to the trainer like a worker's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: ctx.stop.set())
    fastpath.enable(num_threads=1)
    try:
        run_evaluations(ctx, updates_before)
    except Exception:  # noqa: BLE001 - reported to the trainer, which stops the run
        ctx.events.put(ProcessFailed("evaluator", traceback.format_exc()))
        raise SystemExit(1)


def run_evaluations(ctx: WorkerContext, updates_before: int) -> None:
    config = ctx.config
    every, games = config.run.eval_every_updates, config.run.eval_games
    seed = config.run.seed + EVAL_SEED_OFFSET + ctx.seed_offset
    env = make_env(dataclasses.replace(config.env, seed=seed, clip_reward=False))
    model = build_agent(config.agent, ctx.shared_model.num_actions)
    model.check_action_count(env.action_space.n)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    next_at = (updates_before // every + 1) * every
    while not ctx.stop.is_set() and trainer_alive(ctx):
        updates = updates_before + int(ctx.counters[:, UPDATES].sum())
        if updates < next_at:
            ctx.stop.wait(0.05)  # polls the update counter; the schedule itself is in updates
            continue
        model.load_state_dict(ctx.shared_model.state_dict())
        frames = ctx.frames_done_before + int(ctx.counters[:, FRAMES].sum())
        results = []
        for _ in range(games):
            if ctx.stop.is_set():
                return
            results.append(play_game(model, env, sample=False, generator=generator))
        scores = [r.score for r in results]
        ctx.events.put(EvaluationDone("evaluator", {"updates": updates, "frames": frames, "scores": scores,
                                                    "mean_score": sum(scores) / len(scores),
                                                    "lengths": [r.length for r in results]}))
        next_at = (updates // every + 1) * every
