"""Settings of an A3C training run: one dataclass per concern, composed in :class:`TrainConfig`.

Defaults follow ../shared/spec/A3C_PONG.md (the paper's A3C-LSTM lineage); each field says why.
The command line (``stm-rl train``) builds these from flags named after the fields; nothing else reads argv.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Mapping, Optional

from agents import AgentConfig
from envs import EnvConfig
from stm_rl.config_cli import flag_name
from stm_rl.resume import ResumeRule


@dataclass(frozen=True)
class A3CConfig:
    """The learning algorithm: asynchronous advantage actor-critic with a shared Adam."""

    lr: float = 5e-4
    """Adam learning rate. 5e-4 with 16 environments per worker (each update averages 16 rollouts, so
    there are 16x fewer updates per frame than classic A3C's 1e-4 with one); the paper preset keeps 1e-4."""
    adam_eps: float = 1e-5
    """Adam epsilon. 1e-5: averaging 16 rollouts shrinks the gradients' RMS to the order of the authors'
    1e-3, which then damps every step (no learning in 4.5M frames at 1e-3, learning from 5M at 1e-5)."""
    amsgrad: bool = True
    """Use AMSGrad in the shared Adam (the authors' A3C-LSTM setting)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda: 1.0 as in classic A3C (the authors used 0.92)."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus in the policy loss."""
    value_coef: float = 0.5
    """Weight of the value loss term, which is itself halved, 0.5 * (R - V)^2: 0.5 makes 0.25 * (R - V)^2 in all,
    as in the authors' A3C code (rl/train_sam.py) and classic PyTorch A3C; the spec's 0.5 * (R - V)^2 is 1.0."""
    max_grad_norm: float = 50.0
    """Clip the global gradient norm of each update to this (classic A3C: 50)."""
    rollout_steps: int = 20
    """n of the n-step rollout: agent steps per update (20)."""
    envs_per_worker: int = 16
    """Environments stepped by each worker with one batched forward, each update averaging their rollouts
    (1 = classic A3C). 16 gives about 2x the frames/s of 1 on two cores; the paper preset uses 1."""
    gradient_pass: Literal["auto", "acting", "replay"] = "auto"
    """Where an update's gradients come from (the same gradients either way): "acting" keeps the graph of
    the acting pass and back-propagates through it; "replay" acts without gradients, then replays the
    rollout with them in a few large operations; "auto" = acting for STM or paper-encoder agents with
    >= 8 environments per worker, where it measured 1.15-1.35x faster on CPU, else replay
    (benchmarks/train_speed.py)."""

    def keeps_acting_graph(self, agent: AgentConfig) -> bool:
        """Whether the workers back-propagate through the acting pass (``gradient_pass``)."""
        if self.gradient_pass == "auto":
            return self.envs_per_worker >= 8 and (agent.agent == "stm" or agent.encoder == "paper")
        return self.gradient_pass == "acting"

    def __post_init__(self) -> None:
        _require(self.lr > 0, "lr must be > 0")
        _require(self.adam_eps > 0, "adam_eps must be > 0")
        _require(0 <= self.gamma <= 1, "gamma must be in [0, 1]")
        _require(0 <= self.gae_lambda <= 1, "gae_lambda must be in [0, 1]")
        _require(self.entropy_coef >= 0, "entropy_coef must be >= 0")
        _require(self.value_coef >= 0, "value_coef must be >= 0")
        _require(self.max_grad_norm > 0, "max_grad_norm must be > 0")
        _require(self.rollout_steps >= 1, "rollout_steps must be >= 1")
        _require(self.envs_per_worker >= 1, "envs_per_worker must be >= 1")
        _require(self.gradient_pass in ("auto", "acting", "replay"), "gradient_pass must be auto, acting or replay")


@dataclass(frozen=True)
class RunConfig:
    """Budget, parallelism, seeding and bookkeeping of a run."""

    run_dir: Path = Path("runs/pong")
    """Directory of the run: config, game log, tensorboard events, checkpoints."""
    frames: int = 20_000_000
    """Budget in emulator frames for the whole run (all workers); accepts 10M, 2.5e6, 500k. 0 = no frame budget
    (only with --agent-steps)."""
    agent_steps: int = 0
    """Budget in agent steps (decisions, all workers) for the whole run; 0 = none. The run ends at the first
    budget it reaches; --agent-steps given without --frames replaces the frame budget (the unit in which runs
    at different frame skips compare: a step at skip 32 is 32 frames, at skip 0 one)."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Worker processes, each with its own environment(s) and one torch thread (default: one per CPU core)."""
    seed: int = 0
    """Global seed: it draws the initial weights (from seed + 2,000,000), and worker r seeds torch, numpy and its
    environments with seed + r; a one-worker run is reproduced exactly by its seed (several workers: Hogwild's
    interleaving of updates is left to timing)."""
    device: str = "cpu"
    """Device of the shared model. Hogwild A3C shares CPU memory between processes, so only "cpu" is supported."""
    checkpoint_interval: float = 120.0
    """Seconds between two 'latest' checkpoints."""
    moving_average_window: int = 100
    """Games in the moving average of the score (the paper's Figure 3 uses 100)."""
    progress: bool = True
    """Show a live progress bar in the terminal."""
    progress_interval: float = 30.0
    """Seconds between two plain progress lines, printed instead of the bar when stderr is not a terminal or with --no-progress."""
    eval_every_updates: int = 0
    """Every this many updates (all workers together), an extra process plays eval_games greedy games with the current weights (evaluations.jsonl, eval/* in tensorboard); 0 = off."""
    eval_games: int = 3
    """Greedy games per evaluation (with eval_every_updates)."""
    final_eval_games: int = 0
    """When the run completes its budget, play this many greedy games with its final weights on its own
    environment (eval-final-skip<N>.json in the run directory, as ``stm-rl evaluate RUN --checkpoint final``
    writes it; the Figure 3 table reports them); 0 = none."""

    def __post_init__(self) -> None:
        _require(self.frames >= 0, "frames must be >= 0")
        _require(self.agent_steps >= 0, "agent_steps must be >= 0")
        _require(self.frames > 0 or self.agent_steps > 0, "frames must be > 0 when there is no --agent-steps budget")
        _require(self.workers >= 1, "workers must be >= 1")
        _require(self.checkpoint_interval > 0, "checkpoint_interval must be > 0")
        _require(self.progress_interval > 0, "progress_interval must be > 0")
        _require(self.moving_average_window >= 1, "moving_average_window must be >= 1")
        _require(self.eval_every_updates >= 0, "eval_every_updates must be >= 0 (0 = no evaluation)")
        _require(self.eval_games >= 1, "eval_games must be >= 1")
        _require(self.final_eval_games >= 0, "final_eval_games must be >= 0 (0 = no final evaluation)")
        _require(self.device == "cpu", "device must be 'cpu': Hogwild A3C shares the model through CPU shared memory")

    def budget_used(self, frames: int, agent_steps: int) -> float:
        """Fraction of the run's budget that ``frames`` and ``agent_steps`` have used (>= 1: the run is done)."""
        return max(frames / self.frames if self.frames else 0.0,
                   agent_steps / self.agent_steps if self.agent_steps else 0.0)

    def budget_reached(self, frames: int, agent_steps: int) -> bool:
        return self.budget_used(frames, agent_steps) >= 1.0

    def describe_budget(self) -> str:
        """``"20,000,000 frames"``, ``"4,000,000 agent steps"`` or both, for messages."""
        parts = [f"{self.frames:,} frames"] * bool(self.frames) + [f"{self.agent_steps:,} agent steps"] * bool(self.agent_steps)
        return " or ".join(parts)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    a3c: A3CConfig = field(default_factory=A3CConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.env.obs_size != self.agent.obs_size:  # the encoder decides the observation size
            object.__setattr__(self, "env", dataclasses.replace(self.env, obs_size=self.agent.obs_size))

    def worker_env(self, rank: int) -> EnvConfig:
        """Environment of worker ``rank``: its own seed, rewards clipped for learning (raw scores are logged)."""
        return dataclasses.replace(self.env, seed=self.run.seed + rank, clip_reward=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Rebuild from the JSON form written into config.json and checkpoints."""
        env, agent, run = dict(data["env"]), dict(data["agent"]), dict(data["run"])
        if "normalize_obs" in env:  # written before the normaliser moved from the env into the agent
            agent.setdefault("normalize_obs", env.pop("normalize_obs"))
        run["run_dir"] = Path(run["run_dir"])
        return cls(env=EnvConfig(**env), agent=AgentConfig(**agent), a3c=A3CConfig(**data["a3c"]), run=RunConfig(**run))


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {},
    "paper": {"agent": {"encoder": "paper"},
              "a3c": {"lr": 1e-4, "adam_eps": 1e-3, "envs_per_worker": 1, "rollout_steps": 20}},
}
"""Named starting points for a run's settings (flags given on the command line override them).

- ``cpu``: the defaults of these dataclasses, chosen by learning runs on a 2-core machine (README,
  "Time to score"): small encoder, 16 environments per worker, Adam lr 5e-4 with eps 1e-5.
- ``paper``: the paper's A3C-LSTM lineage as the authors ran it: 80x80 encoder, one environment per
  worker, Adam lr 1e-4 with eps 1e-3 (AMSGrad), 20-step rollouts.
"""


def preset_config(name: str) -> TrainConfig:
    """The :class:`TrainConfig` of preset ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    base = TrainConfig()
    changes = {section: dataclasses.replace(getattr(base, section), **values)
               for section, values in PRESETS[name].items()}
    return dataclasses.replace(base, **changes)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def build_train_config(settings: Mapping[str, Mapping[str, Any]], preset: Optional[str] = None,
                       fixed: Mapping[str, Mapping[str, Any]] = MappingProxyType({})) -> TrainConfig:
    """The one rule by which ``stm-rl train`` and ``stm-rl sweep`` build a run's config: the preset
    (:data:`PRESETS`, default "cpu"), then the settings given (by config class, ``{"A3CConfig": {"lr": 1e-3}}``),
    then the values the caller fixes (same keys). The frame size always follows the encoder. A bad value raises
    ``ValueError`` with the dataclass's one-line message."""
    base = preset_config(preset or "cpu")

    def section(name: str, current: Any, **derived: Any) -> Any:
        return dataclasses.replace(current, **{**settings.get(name, {}), **fixed.get(name, {}), **derived})

    agent = section("AgentConfig", base.agent)
    return TrainConfig(agent=agent, env=section("EnvConfig", base.env, obs_size=agent.obs_size),
                       a3c=section("A3CConfig", base.a3c),
                       run=section("RunConfig", base.run, **budget_rule(settings.get("RunConfig", {}))))


def budget_rule(run_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The one budget rule of train, resume and sweep: an agent-step budget given without a frame budget
    replaces it (``{"frames": 0}``), so that ``--agent-steps 4M`` alone is not cut short by the default frames."""
    return {"frames": 0} if "agent_steps" in run_settings and "frames" not in run_settings else {}


ENV_FLAGS_HIDDEN = ("seed", "obs_size", "clip_reward")
"""EnvConfig fields with no flag of their own: derived from the run seed and the encoder."""


RL_RESUME = ResumeRule(
    budget=frozenset({("run", "frames"), ("run", "agent_steps")}),
    execution=frozenset({("run", "workers")}),
    bookkeeping=frozenset({("run", name) for name in ("run_dir", "checkpoint_interval", "progress", "progress_interval",
                                                     "eval_every_updates", "eval_games", "final_eval_games")}),
    derived=frozenset({("env", name) for name in ENV_FLAGS_HIDDEN}))
"""What a resumed A3C run may change (the one rule of :mod:`stm_rl.resume`): its budget, its workers, and its
bookkeeping (the directory it is found in, checkpoint interval, progress display, greedy evaluations); every
other setting comes from its checkpoint."""


def training_command(config: TrainConfig) -> str:
    """``stm-rl train`` with every setting that differs from its default (the run dir always): the command that
    starts this run again. The trainer records it in the run's config.json, with the defaults of the code
    that ran it."""
    defaults = TrainConfig()
    parts = ["stm-rl train"]
    for section in ("agent", "env", "a3c", "run"):
        value, default = getattr(config, section), getattr(defaults, section)
        for entry in dataclasses.fields(value):
            if section == "env" and entry.name in ENV_FLAGS_HIDDEN:
                continue  # derived from the encoder and the run seed
            if entry.name == "progress":
                continue
            own, base = getattr(value, entry.name), getattr(default, entry.name)
            if own == base and entry.name != "run_dir":
                continue
            if isinstance(own, bool):
                parts.append(flag_name(entry.name) if own else "--no-" + flag_name(entry.name)[2:])
            else:
                parts += [flag_name(entry.name), _format_value(own)]
    return " ".join(parts)


def _format_value(value: object) -> str:
    if isinstance(value, int) and value >= 1_000_000 and value % 1_000_000 == 0:
        return f"{value // 1_000_000}M"
    return str(value)


__all__ = ["A3CConfig", "AgentConfig", "EnvConfig", "ENV_FLAGS_HIDDEN", "budget_rule", "PRESETS", "RL_RESUME", "RunConfig",
           "TrainConfig", "build_train_config", "preset_config", "training_command"]
