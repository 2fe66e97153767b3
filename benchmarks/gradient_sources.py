"""Where an A3C agent's gradient norm comes from, and how large the STM's memories grow over a game.

A diagnostic for a run that stopped learning: loads a trainer checkpoint (or a freshly initialised agent),
plays ``--updates`` rollouts of the run's own length with ``--games`` games on the run's environment, and for
each rollout takes the run's loss apart the way the worker builds it (policy, entropy, value terms). Prints:

- the total gradient norm before clipping (what ``losses/grad_norm`` logs) per rollout, split by loss term,
  and the parameters that carry most of it (median and largest rollouts);
- for an STM agent, the norms of the item memory ``M_i``, the relational memory ``M_r``, the relational
  read ``v_r`` and its key ``w`` (eq. 11) along one game, and the learned alphas.

    python benchmarks/gradient_sources.py runs/figure3/stm-skip32-seed0            # its latest checkpoint
    python benchmarks/gradient_sources.py --init stm --frame-skip 32               # an untrained agent
    python benchmarks/gradient_sources.py runs/figure3/stm-skip32-seed0 --frame-skip 0   # played at another skip
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import stm_rl.memory.stm as stm_module
from agents import build_agent
from envs import make_env, probe_action_count
from stm_rl import fastpath
from stm_rl.a3c.checkpoint import load_agent_from_checkpoint
from stm_rl.a3c.config import TrainConfig, preset_config
from stm_rl.a3c.rollout import RolloutCollector
from stm_rl.a3c.worker import advantages_and_returns, loss_terms
from stm_rl.conventions import run_command
from stm_rl.evaluate import resolve_checkpoint
from stm_rl.run_dir import Checkpoint, StmRlError


@dataclasses.dataclass
class RolloutGradient:
    total: float
    by_term: dict[str, float]
    by_parameter: dict[str, float]
    entropy: float


def rollout_gradients(model: torch.nn.Module, config: TrainConfig, games: int, updates: int
                      ) -> list[RolloutGradient]:
    """The worker's loss (:func:`stm_rl.a3c.worker.loss_terms`) on ``updates`` rollouts of the worker's own acting
    (:class:`~stm_rl.a3c.rollout.RolloutCollector`, the games going on from one rollout to the next), its
    gradient split up."""
    a3c = config.a3c
    envs = [make_env(config.worker_env(1000 + i)) for i in range(games)]
    collector = RolloutCollector(model, envs, a3c.rollout_steps)
    results = []
    for _ in range(updates):
        rollout = collector.collect(keep_graph=a3c.keeps_acting_graph(config.agent))
        logits, values = rollout.logits_and_values(model)
        rewards = rollout.bootstrapped_rewards(a3c.gamma)  # a game cut off by the frame cap goes on
        advantages, returns = advantages_and_returns(rewards, values.detach(), rollout.last_value, rollout.dones,
                                                     a3c.gamma, a3c.gae_lambda)
        policy, entropy, value = loss_terms(logits, values, rollout.actions, advantages, returns)
        terms = {"policy": policy, "entropy": -a3c.entropy_coef * entropy, "value": a3c.value_coef * value}
        by_term = {}
        for name, term in terms.items():
            grads = torch.autograd.grad(term, list(model.parameters()), retain_graph=True, allow_unused=True)
            by_term[name] = float(torch.stack([g.norm() for g in grads if g is not None]).norm())
        grads = torch.autograd.grad(sum(terms.values()), [p for _, p in model.named_parameters()], allow_unused=True)
        by_parameter = {name: float(g.norm()) for (name, _), g in zip(model.named_parameters(), grads)
                        if g is not None}
        results.append(RolloutGradient(float(np.linalg.norm(list(by_parameter.values()))), by_term, by_parameter,
                                       entropy.item() / a3c.rollout_steps))
    return results


def memory_norms_over_a_game(model: torch.nn.Module, config: TrainConfig, max_steps: int) -> list[str]:
    """One sampled game (at most ``max_steps`` steps) with the STM's memory norms at a few steps."""
    reads = []
    original = stm_module.relational_read

    def recording(memory, slot_weights, key):
        read = original(memory, slot_weights, key)
        reads.append((float(read.norm()), float(key.norm())))
        return read

    stm_module.relational_read = recording
    lines = []
    try:
        env = make_env(config.worker_env(7))
        obs = torch.from_numpy(env.reset()[0])[None]
        marks = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}
        with torch.no_grad():
            state, done, step = model.initial_state(1), False, 0
            while not done and step < max_steps:
                logits, value, state = model.act(obs, state)
                frame, _, terminated, truncated, _ = env.step(int(torch.multinomial(F.softmax(logits, -1), 1)))
                obs, done, step = torch.from_numpy(frame)[None], terminated or truncated, step + 1
                if step in marks or done:
                    item, relational = state.stm
                    read, key = reads[-1] if reads else (float("nan"), float("nan"))
                    lines.append(f"  step {step:>5}: value {float(value):8.2f}  |M_i| {float(item.norm()):9.3g}  "
                                 f"|M_r| {float(relational.norm()):9.3g}  |v_r| {read:9.3g}  |w| {key:9.3g}")
    finally:
        stm_module.relational_read = original
    return lines


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, TrainConfig, str]:
    if args.init is not None:
        config = preset_config("cpu")
        skip = 4 if args.frame_skip is None else args.frame_skip
        config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, agent=args.init),
                                     env=dataclasses.replace(config.env, frame_skip=skip))
        torch.manual_seed(args.seed)
        return build_agent(config.agent, probe_action_count(config.env)), config, f"untrained {args.init} agent"
    checkpoint = resolve_checkpoint(args.run, Checkpoint.LATEST if args.run.is_dir() else None)
    model, config, record = load_agent_from_checkpoint(checkpoint)
    steps = record.get("counters", {}).get("agent_steps")
    what = f"{checkpoint}" + (f" ({steps:,} agent steps)" if isinstance(steps, int) else "")
    if args.frame_skip is not None and args.frame_skip != config.env.frame_skip:  # e.g. a skip-32 agent at skip 0
        what += f", trained at frame skip {config.env.frame_skip}"
        config = dataclasses.replace(config, env=dataclasses.replace(config.env, frame_skip=args.frame_skip))
    return model, config, what


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path, help="a run directory (its latest checkpoint) or a checkpoint file")
    parser.add_argument("--init", choices=["lstm", "stm"], help="an untrained agent (CPU preset) instead of a run")
    parser.add_argument("--frame-skip", type=int, default=None,
                        help="the environment's frame skip (default: the run's; 4 with --init)")
    parser.add_argument("--seed", type=int, default=0, help="with --init: the initialisation seed")
    parser.add_argument("--games", type=int, default=4, help="games per rollout")
    parser.add_argument("--updates", type=int, default=30, help="rollouts to take gradients of")
    parser.add_argument("--game-steps", type=int, default=2000, help="longest game for the memory norms")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.run is None) == (args.init is None):
        parser.error("give either a run directory (or checkpoint) or --init AGENT")
    for flag in ("games", "updates", "game_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.frame_skip is not None and args.frame_skip < 0:
        parser.error(f"--frame-skip must be >= 0 (0 = act on every frame), got {args.frame_skip}")
    fastpath.enable(num_threads=1)
    torch.manual_seed(args.seed)
    try:
        model, config, what = load(args)
    except (OSError, ValueError) as error:
        raise StmRlError(str(error)) from None

    print(f"{what}: {config.agent.agent} agent, frame skip {config.env.frame_skip}, {args.updates} rollouts of "
          f"{config.a3c.rollout_steps} steps x {args.games} games; clip at {config.a3c.max_grad_norm:g}", flush=True)
    results = sorted(rollout_gradients(model, config, args.games, args.updates), key=lambda r: r.total)
    totals = [r.total for r in results]
    print(f"gradient norm before clipping: median {statistics.median(totals):.3g}, largest {totals[-1]:.3g}, "
          f"share of rollouts above the clip {sum(t > config.a3c.max_grad_norm for t in totals) / len(totals):.2f}; "
          f"policy entropy {statistics.mean(r.entropy for r in results):.3f} nats")
    for label, result in (("median rollout", results[len(results) // 2]), ("largest rollout", results[-1])):
        terms = ", ".join(f"{name} {norm:.3g}" for name, norm in result.by_term.items())
        top = sorted(result.by_parameter.items(), key=lambda item: -item[1])[:5]
        print(f"{label}: {result.total:.3g} (by loss term: {terms})")
        print("  largest parameters: " + ", ".join(f"{name} {norm:.3g}" for name, norm in top))
    if model.stm is not None:
        print("the STM's memories along one sampled game:")
        for line in memory_norms_over_a_game(model, config, args.game_steps):
            print(line)
        print("  alphas: " + ", ".join(f"alpha{i} {getattr(model.stm.cell, f'alpha{i}').item():+.4g}"
                                       for i in (1, 2, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(run_command("gradient_sources.py", main))
