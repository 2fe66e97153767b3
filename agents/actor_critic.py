"""The LSTM and STM actor-critic agents (spec: ../shared/spec/A3C_PONG.md, "Agents"; paper section 3.4).

Both agents share one code path, frames -> (running standardisation, with ``normalize_obs``) -> encoder ->
recurrent core -> actor and critic heads; the recurrent core is the only difference:

- ``lstm``: ``LSTMCell(F, 256)``, features h (256).
- ``stm``:  the LSTM, then an STM cell on h (I = O = 256, N = 8, d = 96, n_r = 96, layer norm on the
  distilled vector), features ``[STM output, h]`` (512). Both the item and the relational memory are
  carried across steps (the authors' RL code dropped the relational one; see STM.md section 4).

The agent is used two ways: :meth:`ActorCritic.act` steps a batch of environments once (no gradient
needed), and :meth:`ActorCritic.unroll` replays a whole rollout with gradients, encoding all frames in
one batched call and applying the STM readout once over time. Episode boundaries inside a rollout are
given as an ``episode_start`` mask: the state of that environment is reset (the STM to its learned
initial memories) before the step.

Both passes run in the configured precision (:mod:`agents.precision`): with ``bf16`` they run under
autocast and return fp32 logits and values, so the losses, the parameters and the optimizer stay fp32
and the training, acting and evaluation code need not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager, Literal, NamedTuple, Optional

import torch
from torch import Tensor, nn

from agents.encoders import ENCODERS, encode_frames, make_encoder
from agents.normalizer import FrameNormalizer
from agents.precision import Precision, autocast, check_precision_supported
from stm_rl.memory import STM, STMState

AgentKind = Literal["lstm", "stm"]
EncoderName = Literal["paper", "small"]


@dataclass(frozen=True)
class AgentConfig:
    """The network of an actor-critic agent."""

    agent: AgentKind = "stm"
    """Recurrent core: "lstm" (the baseline) or "stm" (LSTM followed by the STM cell, the paper's agent)."""
    encoder: EncoderName = "small"
    """Frame encoder: "small" (42x42, 4 strided convs, ~6x cheaper on CPU; learns Pong within the first hour on 2 cores) or "paper" (80x80 input, the paper's 4 conv + max-pool; also set by --preset paper)."""
    hidden_size: int = 256
    """LSTM hidden size (and STM input/output size), 256 as in the paper."""
    stm_slots: int = 8
    """STM relational slots N (paper RL setting: 8)."""
    stm_item_size: int = 96
    """STM item memory side d (paper RL setting: 96)."""
    stm_rel_size: int = 96
    """STM per-slot readout width n_r (paper RL setting: 96)."""
    precision: Precision = "fp32"
    """Arithmetic of the model's passes: "fp32", or "bf16" (autocast mixed precision: products in bf16, parameters, losses and optimizer in fp32; needs native bf16, e.g. AVX512-BF16 CPUs)."""
    normalize_obs: bool = False
    """Standardise each frame with running averages of the frames' mean and std (decay 0.9999, bias-corrected), as the classic PyTorch A3C does; the statistics are part of the agent and its checkpoints (agents/normalizer.py)."""

    def __post_init__(self) -> None:
        if self.agent not in ("lstm", "stm"):
            raise ValueError(f"unknown agent {self.agent!r}; choose 'lstm' or 'stm'")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {sorted(ENCODERS)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; choose 'fp32' or 'bf16'")
        for name in ("hidden_size", "stm_slots", "stm_item_size", "stm_rel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def obs_size(self) -> int:
        """Side of the square observation the encoder expects."""
        return ENCODERS[self.encoder].input_size


class AgentState(NamedTuple):
    """Recurrent state of an agent for a batch of environments."""

    lstm: tuple[Tensor, Tensor]
    """LSTM (h, c), each ``[B, hidden]``."""
    stm: Optional[STMState] = None
    """STM memories, for the STM agent."""

    def detach(self) -> "AgentState":
        """Cut from the autograd graph (between rollouts: truncated backpropagation through time)."""
        return AgentState((self.lstm[0].detach(), self.lstm[1].detach()),
                          None if self.stm is None else self.stm.detach())

    def norms(self) -> dict[str, float]:
        """How large the memories are: the Frobenius norm of each one per environment, as the mean and the max over
        the batch (``lstm_cell_norm``, ``lstm_cell_norm_max``, and for the STM ``stm_item_norm`` (M_i) and
        ``stm_relational_norm`` (M_r)). The LSTM's h is bounded by its tanh; its cell and the STM's memories are
        not (the item memory can grow along a game: docs/figure3.md)."""
        memories = {"lstm_cell": self.lstm[1]}
        if self.stm is not None:
            memories.update(stm_item=self.stm.item, stm_relational=self.stm.relational)
        per_env = [memory.detach().flatten(1).float().norm(dim=1) for memory in memories.values()]
        values = torch.stack([torch.stack([n.mean(), n.max()]) for n in per_env]).tolist()  # one device sync
        return {key: value for name, (mean, largest) in zip(memories, values)
                for key, value in ((f"{name}_norm", mean), (f"{name}_norm_max", largest))}


def _reset_where(mask: Tensor, initial: Tensor, current: Tensor) -> Tensor:
    """``initial`` for the samples where ``mask`` ([B] bool) is set, ``current`` elsewhere."""
    return torch.where(mask.view(-1, *([1] * (current.dim() - 1))), initial, current)


class ActorCritic(nn.Module):
    """Encoder, recurrent core (LSTM, or LSTM -> STM) and linear actor/critic heads."""

    def __init__(self, config: AgentConfig, num_actions: int, device_type: str = "cpu") -> None:
        check_precision_supported(config.precision, device_type)
        if not isinstance(num_actions, int) or num_actions < 1:
            raise ValueError(f"num_actions must be a positive integer, got {num_actions!r}")
        super().__init__()
        self.config, self.num_actions = config, num_actions
        self.normalizer: Optional[FrameNormalizer] = FrameNormalizer() if config.normalize_obs else None
        self.encoder = make_encoder(config.encoder)
        self.lstm = nn.LSTMCell(ENCODERS[config.encoder].output_size, config.hidden_size)
        self.stm: Optional[STM] = None
        features = config.hidden_size
        if config.agent == "stm":
            self.stm = STM(config.hidden_size, config.hidden_size, d=config.stm_item_size,
                               num_slots=config.stm_slots, rel_size=config.stm_rel_size, out_layernorm=True)
            features += config.hidden_size
        self.actor = nn.Linear(features, num_actions)
        self.critic = nn.Linear(features, 1)
        self._initialise()

    def _initialise(self) -> None:
        """Xavier-uniform convs and heads with zero biases, zero LSTM biases, and small-norm heads:
        each actor row has norm 0.01 (a near-uniform initial policy), each critic row norm 1.0."""
        for module in list(self.encoder) + [self.actor, self.critic]:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.lstm.bias_ih)
        nn.init.zeros_(self.lstm.bias_hh)
        with torch.no_grad():
            for head, norm in ((self.actor, 0.01), (self.critic, 1.0)):
                weight = torch.randn_like(head.weight)
                head.weight.copy_(weight * norm / weight.norm(dim=1, keepdim=True))

    def check_action_count(self, env_actions: int) -> None:
        """Refuse an environment whose action count is not the one the actor head was built for (a run probes
        the count when it starts and saves it with its checkpoints: :func:`envs.probe_action_count`)."""
        if env_actions != self.num_actions:
            raise ValueError(f"the environment has {env_actions} actions, the agent {self.num_actions}")

    # ------------------------------------------------------------------ recurrent state
    def initial_state(self, batch_size: int) -> AgentState:
        """State at an episode's start: zero LSTM state, the STM's learned initial memories."""
        zeros = self.actor.weight.new_zeros(batch_size, self.config.hidden_size)
        return AgentState((zeros, zeros), None if self.stm is None else self.stm.initial_state(batch_size))

    def reset_state(self, state: AgentState, episode_start: Tensor) -> AgentState:
        """Reset the environments flagged in ``episode_start`` ([B] bool) to :meth:`initial_state`."""
        if not episode_start.any():
            return state
        initial = self.initial_state(episode_start.shape[0])
        h, c = (_reset_where(episode_start, i, s) for i, s in zip(initial.lstm, state.lstm))
        stm = None if self.stm is None else self.stm.cell.reset_state(state.stm, episode_start)
        return AgentState((h, c), stm)

    # ------------------------------------------------------------------ acting: one step
    def autocast(self) -> ContextManager:
        """The autocast region of the configured precision, on the device the parameters are on.

        :meth:`act` and :meth:`unroll` enter it themselves; a loop of many :meth:`act` calls (a rollout, a
        game) runs faster inside one region of its own: the inner ones then cost nothing, and autocast
        casts the weights to bf16 once for the whole region instead of once per step (it keeps the casts
        until its outermost region ends)."""
        return autocast(self.config.precision, self.actor.weight.device.type)

    def _heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """fp32 logits and values (the losses are computed in fp32 whatever the precision)."""
        return self.actor(features).float(), self.critic(features).squeeze(-1).float()

    def act(self, obs: Tensor, state: AgentState) -> tuple[Tensor, Tensor, AgentState]:
        """One step for a batch of environments: ``obs [B, 1, S, S]`` -> logits ``[B, A]``, values ``[B]``."""
        with self.autocast():
            h, c = self._lstm_step(self._encode(obs), state.lstm)
            features, stm_state = h, None
            if self.stm is not None:
                y, stm_state = self.stm.cell(h, state.stm)
                features = torch.cat([y, h], dim=-1)
            logits, values = self._heads(features)
        return logits, values, AgentState((h, c), stm_state)

    # ------------------------------------------------------------------ learning: a whole rollout
    def unroll(self, obs: Tensor, state: AgentState, episode_start: Tensor) -> tuple[Tensor, Tensor, AgentState]:
        """Replay a rollout: ``obs [B, T, 1, S, S]``, ``episode_start [B, T]`` (reset before step t).

        Returns logits ``[B, T, A]``, values ``[B, T]`` and the state after the last step. Gives the same
        numbers as calling :meth:`act` T times with the same resets, with far fewer, larger operations.
        """
        with self.autocast():
            encoded = self._encode(obs)  # all B*T frames in one call
            hidden_seq, (h, c) = self._lstm_sequence(encoded, state.lstm, episode_start)  # [B, T, hidden]
            features, stm_state = hidden_seq, None
            if self.stm is not None:
                stm_out, stm_state = self.stm(hidden_seq, state.stm, episode_start)
                features = torch.cat([stm_out, hidden_seq], dim=-1)
            logits, values = self._heads(features)
        return logits, values, AgentState((h, c), stm_state)

    def _encode(self, frames: Tensor) -> Tensor:
        """Frames ``[..., 1, S, S]`` (standardised first with ``normalize_obs``) -> features ``[..., F]``."""
        if self.normalizer is not None:
            frames = self.normalizer(frames)
        return encode_frames(self.encoder, frames)

    def observe_frames(self, frames: Tensor) -> None:
        """Fold frames ``[..., 1, S, S]`` into the observation statistics (nothing without ``normalize_obs``).

        Called by the workers on the shared model only; the passes never update the statistics (see
        :mod:`agents.normalizer` for who updates what under Hogwild)."""
        if self.normalizer is not None:
            self.normalizer.update(frames)

    def _lstm_step(self, encoded: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One LSTM step, in fp32 whatever the precision (a small share of the work; fp32 keeps h and c exact)."""
        with torch.autocast(encoded.device.type, enabled=False):
            return self.lstm(encoded.to(self.lstm.weight_ih.dtype), state)

    def _lstm_sequence(self, encoded: Tensor, state: tuple[Tensor, Tensor],
                       episode_start: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The LSTM over ``encoded [B, T, F]``, one fused multi-step call per stretch of steps without resets.

        Same numbers as :meth:`_lstm_step` T times (the cell's weights, the gate order i, f, g, o of
        both), about 3x faster: the input products of all steps are one matrix product, and the
        recurrence runs in one native loop. In fp32, like :meth:`_lstm_step`.
        """
        steps = encoded.shape[1]
        resets = episode_start.any(0).tolist()  # which steps reset at least one environment
        bounds = [t for t in range(1, steps) if resets[t]] + [steps]
        cell = self.lstm
        encoded = encoded.to(cell.weight_ih.dtype)
        zeros = encoded.new_zeros(encoded.shape[0], cell.hidden_size)  # the initial state (initial_state)
        weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]  # nn.LSTM's single-layer layout
        (h, c), outputs, begin = state, [], 0
        with torch.autocast(encoded.device.type, enabled=False):
            for end in bounds:
                if resets[begin]:
                    start = episode_start[:, begin]
                    h, c = _reset_where(start, zeros, h), _reset_where(start, zeros, c)
                out, h_n, c_n = torch.lstm(encoded[:, begin:end], (h.unsqueeze(0), c.unsqueeze(0)), weights,
                                           has_biases=True, num_layers=1, dropout=0.0, train=self.training,
                                           bidirectional=False, batch_first=True)
                h, c = h_n.squeeze(0), c_n.squeeze(0)
                outputs.append(out)
                begin = end
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1), (h, c)


def build_agent(config: AgentConfig, num_actions: int) -> ActorCritic:
    """The agent of ``config`` with an actor head over ``num_actions`` actions (a run probes the count from its
    environment, :func:`envs.probe_action_count`, and saves it with its checkpoints)."""
    return ActorCritic(config, num_actions)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

