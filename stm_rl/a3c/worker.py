"""One A3C worker process: act, replay, learn. The algorithm reads top to bottom in :func:`train_worker`.

Each update (Mnih et al. 2016, with the details of ../shared/spec/A3C_PONG.md):

1. sync the local model from the shared one;
2. act for ``rollout_steps`` steps in the worker's environment(s), sampling from the policy, from the
   state the previous rollout ended in (detached: truncated BPTT); an environment whose game ends is
   reset and its recurrent state is reset before its next step (the STM to its learned initial memories);
3. the logits and values to learn from: either those of the acting pass, whose graph was kept, or a
   replay of the rollout with gradients from the state it started in, which gives the same numbers in a
   few large operations (``A3CConfig.gradient_pass`` chooses, by what is faster for the agent);
4. advantages by GAE(lambda) on clipped rewards, bootstrapped with V of the last observation unless the
   game ended (a game cut off by the frame cap did not end: it is bootstrapped from where it stopped);
   n-step discounted returns as the value target;
5. loss = policy loss - entropy bonus + value loss, clip the gradient norm, hand the gradients to the
   shared model and step the shared Adam (Hogwild: no lock).

The worker reports finished games, per-update losses and errors to the trainer through ``events``.
"""

from __future__ import annotations

import os
import signal
import traceback
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from agents import ActorCritic, build_agent
from envs import make_env
from stm_rl.a3c.config import TrainConfig
from stm_rl.a3c.messages import GameFinished, NonFinite, ProcessFailed, UpdateDone
from stm_rl.a3c.rollout import RolloutCollector
from stm_rl import fastpath

# Columns of the shared counter table, one row per worker (each row is written by its worker only).
AGENT_STEPS, FRAMES, UPDATES = 0, 1, 2


@dataclass
class WorkerContext:
    """What the trainer hands to every worker process."""

    config: TrainConfig
    shared_model: ActorCritic
    optimizer: torch.optim.Optimizer
    counters: Tensor
    """Shared int64 table [workers, 3]: agent steps, emulator frames, updates done by each worker."""
    frames_done_before: int
    """Emulator frames of earlier segments of a resumed run (they count against the budget)."""
    seed_offset: int
    """Added to every seed so that a resumed segment does not replay the games of the previous one."""
    stop: Any
    """multiprocessing Event: set by the trainer (or any worker) to end the run."""
    events: Any
    """multiprocessing Queue of :mod:`stm_rl.a3c.messages` to the trainer."""
    trainer_pid: int = dataclasses.field(default_factory=os.getpid)
    """The trainer's process id (taken where the context is made): a worker whose parent is no longer
    this process has been orphaned, even if the trainer died before the worker looked."""
    steps_done_before: int = 0
    """Agent steps of earlier segments of a resumed run (they count against an --agent-steps budget)."""


def worker_main(rank: int, ctx: WorkerContext) -> None:
    """Process entry point: set up, train until stopped, report any error to the trainer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    signal.signal(signal.SIGTERM, lambda *_: ctx.stop.set())
    fastpath.enable(num_threads=1)
    try:
        train_worker(rank, ctx)
    except Exception:  # noqa: BLE001 - everything goes to the trainer, which stops the run
        ctx.events.put(ProcessFailed(rank, traceback.format_exc()))
        raise SystemExit(1)
    finally:
        if not trainer_alive(ctx):  # orphaned: nobody reads the queue, do not block on flushing it
            ctx.events.cancel_join_thread()


def train_worker(rank: int, ctx: WorkerContext) -> None:
    config, a3c = ctx.config, ctx.config.a3c
    seed = config.run.seed + ctx.seed_offset + rank
    torch.manual_seed(seed)
    num_envs = a3c.envs_per_worker
    keep_acting_graph = a3c.keeps_acting_graph(config.agent)
    envs = [make_env(config.worker_env(ctx.seed_offset + rank * num_envs + i)) for i in range(num_envs)]
    model = build_agent(config.agent, ctx.shared_model.num_actions)
    model.check_action_count(envs[0].action_space.n)

    collector = RolloutCollector(model, envs, a3c.rollout_steps,
                                 on_game_end=lambda episode: ctx.events.put(GameFinished(rank, episode)))
    ctx.shared_model.observe_frames(collector.observation)  # observation statistics (--normalize-obs) are shared

    while not ctx.stop.is_set() and trainer_alive(ctx):
        if config.run.budget_reached(ctx.frames_done_before + int(ctx.counters[:, FRAMES].sum()),
                                     ctx.steps_done_before + int(ctx.counters[:, AGENT_STEPS].sum())):
            return

        # 1. Sync the local model from the shared one.
        copy_weights(ctx.shared_model, model)

        # 2. Act, keeping the graph only where the gradients are taken from this pass.
        rollout = collector.collect(keep_graph=keep_acting_graph)
        # The frames acted on update the shared observation statistics; the local copy keeps the ones the
        # actions were taken with until the next sync, so that the replay gives the same numbers.
        ctx.shared_model.observe_frames(rollout.observations.transpose(0, 1))  # in time order

        # 3. The logits and values with gradients: the acting pass's, or a replay from the rollout's start.
        logits, values = rollout.logits_and_values(model)

        # 4. Advantages and value targets.
        rewards = rollout.bootstrapped_rewards(a3c.gamma)  # a game cut off by the frame cap goes on
        advantages, returns = advantages_and_returns(rewards, values.detach(), rollout.last_value, rollout.dones,
                                                     a3c.gamma, a3c.gae_lambda)
        policy_loss, entropy_bonus, value_loss = loss_terms(logits, values, rollout.actions, advantages, returns)
        loss = policy_loss - a3c.entropy_coef * entropy_bonus + a3c.value_coef * value_loss
        if not torch.isfinite(loss):
            ctx.events.put(NonFinite(rank, f"non-finite loss {loss.item()} (policy {policy_loss.item()}, "
                                         f"value {value_loss.item()}, entropy {entropy_bonus.item()})"))
            ctx.stop.set()
            return

        # 5. Gradients to the shared model, one shared Adam step.
        model.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a3c.max_grad_norm)
        if not torch.isfinite(grad_norm):  # a finite loss can still have an infinite gradient
            ctx.events.put(NonFinite(rank, f"non-finite gradient norm {grad_norm.item()} (loss {loss.item()}); "
                                           "the update was not applied"))
            ctx.stop.set()
            return
        for shared, local in zip(ctx.shared_model.parameters(), model.parameters()):
            shared.grad = local.grad
        ctx.optimizer.step()

        ctx.counters[rank] += torch.tensor([rollout.actions.numel(), rollout.frames, 1])
        ctx.events.put(UpdateDone(rank, {
            "policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
            "entropy": entropy_bonus.item() / a3c.rollout_steps, "grad_norm": grad_norm.item()},
            collector.state.norms()))


def trainer_alive(ctx: WorkerContext) -> bool:
    """Whether the trainer still owns this worker (it is the parent, or this very process when a test
    runs the worker loop in-process)."""
    return os.getpid() == ctx.trainer_pid or os.getppid() == ctx.trainer_pid


@torch.no_grad()
def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """``target <- source`` for two models of the same architecture (a few times cheaper than
    ``load_state_dict``, which rebuilds and checks a state dict on every update)."""
    for dst, src in zip(target.parameters(), source.parameters()):
        dst.copy_(src)
    for dst, src in zip(target.buffers(), source.buffers()):
        dst.copy_(src)


class LossTerms(NamedTuple):
    """The three terms of the A3C loss of one rollout, before their coefficients: sums over the rollout's steps
    (as in classic A3C), means over the worker's environments."""

    policy: Tensor
    """``-sum_t log pi(a_t | s_t) A_t``."""
    entropy: Tensor
    """``sum_t H(pi(. | s_t))``, the bonus (subtracted with ``entropy_coef``)."""
    value: Tensor
    """``1/2 sum_t (R_t - V(s_t))^2``."""


def loss_terms(logits: Tensor, values: Tensor, actions: Tensor, advantages: Tensor, returns: Tensor) -> LossTerms:
    """The loss terms from the rollout's ``logits [B, T, A]``, ``values``, ``actions``, ``advantages`` and
    ``returns`` (``[B, T]``); the loss is ``policy - entropy_coef * entropy + value_coef * value``."""
    log_probs = F.log_softmax(logits, dim=-1)
    action_log_probs = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return LossTerms(policy=-(action_log_probs * advantages).sum(1).mean(), entropy=entropy.sum(1).mean(),
                     value=0.5 * (returns - values).pow(2).sum(1).mean())


def advantages_and_returns(rewards: Tensor, values: Tensor, last_value: Tensor, dones: Tensor,
                           gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """GAE(lambda) advantages and n-step discounted returns over a rollout (all ``[B, T]``).

    ``dones[:, t]`` marks that the game ended at step t: nothing after it is bootstrapped or
    discounted into step t. ``last_value`` ([B]) is V of the observation after the last step.
    """
    advantages, returns = torch.empty_like(rewards), torch.empty_like(rewards)
    next_value, next_advantage, next_return = last_value, torch.zeros_like(last_value), last_value
    for t in reversed(range(rewards.shape[1])):
        alive = (~dones[:, t]).to(rewards.dtype)
        delta = rewards[:, t] + gamma * alive * next_value - values[:, t]
        next_advantage = delta + gamma * gae_lambda * alive * next_advantage
        next_return = rewards[:, t] + gamma * alive * next_return
        advantages[:, t], returns[:, t] = next_advantage, next_return
        next_value = values[:, t]
    return advantages, returns
