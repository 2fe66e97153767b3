"""The STM cell (paper section 2.3, eqs. 9-14) and a sequence wrapper around it.

The cell keeps two memories per sample: an item memory ``M_i`` (``d x d``) written with gated outer
products of the input, and a relational memory ``M_r`` (``N x d x d``) built from the item memory by
the SAM operator. Every step follows ``../shared/spec/STM.md`` section 3; the numbers in the comments
below are that section's steps. Where the paper and the authors' implementation differ, this module
follows the implementation (alpha1 on the old relational memory, all alphas learnable from 0, the fresh
SAM output transferred to the item memory) and carries both memories across steps, which the
original RL agent did not.

Computations arranged for speed and memory without changing the result (``benchmarks/stm_speed.py``
measures them; at batch 128 the step is memory-bound on ``B x N x d x d`` tensors, at batch 1 it is
bound by G2's products and the per-op overhead):
- The transfer to item memory (eq. 13) is computed from SAM's queries, keys and values directly,
  ``T = V^T H`` with ``H[j] = sum_{n,a} W_G1[:, n, a] tanh(q_n * k_j)[a]``: N^2 d^2 multiply-adds per
  sample instead of the N d^3 of applying G1 to the materialised SAM output.
- Rank-1 and rank-N updates of a memory (eqs. 9, 12, 13) are single ``baddbmm`` calls, which save only
  their small factors for the backward pass; the transfer's bias rides in the same product. SAM's input
  ``M' + alpha2 v_r (x) w`` (eq. 11) is never formed: SAM's projection is linear, so the rank-1 term is added
  to its ``d x 3N`` output instead (:meth:`SAM.queries_keys_values`).
- The gated write (eq. 10), SAM's scores, the relational read (eq. 11) and the relational update (eq. 12) are
  the operators of :mod:`stm_rl.memory.ops`, defined there by plain PyTorch references. The optional fast
  path (:mod:`stm_rl.fastpath`, enabled by a process at start-up) registers fused CPU kernels for them: one
  pass over the ``B x N x d x d`` relational memory each way instead of about twenty.
- :class:`STM` computes everything that depends on the input alone (f1, f2, f3, the input gate) once
  over all time steps, and the output distillation G2/G3 (eq. 14) over chunks of steps sized to keep
  its matrix product large without copying the relational memories at large batches.

Mixed precision: under ``torch.autocast`` (bf16) the recurrence, eqs. 9-13, still runs in the
parameters' dtype (fp32): autocast is switched off there and the input is cast. Only the readout of
eq. 14 and the head follow autocast; G2's products over the relational memory are the bulk of the
arithmetic (3 x N d^2 n_r multiply-adds per sample-step with the backward pass), and bf16 runs them
several times faster on CPUs with native bf16. Rounding inside the recurrence would compound over an
episode: with bf16 products there, the relational memory of the RL agent drifts from fp32 by about 4%
within 5 steps; with the recurrence in fp32 by 0.04%, for about 15% more time per step at batch 16
(issue 10; ``tests/test_precision.py`` holds the fp32 recurrence to that). The memories stay fp32 state.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from stm_rl.memory.attention import SAM, _check_positive
from stm_rl.memory.ops import gated_write, relational_read, relational_update, sam_scores

AlphaSetting = Optional[float]


class STMState(NamedTuple):
    """Recurrent state of an STM cell."""

    item: Tensor
    """Item memory ``M_i``, ``[B, d, d]``."""
    relational: Tensor
    """Relational memory ``M_r``, ``[B, N, d, d]``."""

    def detach(self) -> "STMState":
        """The same memories cut from the autograd graph (between RL rollouts)."""
        return STMState(self.item.detach(), self.relational.detach())


class InputProjection(NamedTuple):
    """The parts of a step that depend on the input only (``None`` where the configuration skips them)."""

    u: Tensor
    """f1(x), the item written to memory (eq. 9/10)."""
    w: Optional[Tensor]
    """f2(x), the key of the relational read (eq. 11)."""
    slot_logits: Optional[Tensor]
    """f3(x), logits of the attention over slots (eq. 11)."""
    gate_from_input: Optional[Tensor]
    """gate_in(u) plus all biases of the two gates (gate_mem's and the scalar ones): the part of the gates'
    pre-activation that is the same for every row of the item memory (Appendix D)."""


class STMCell(nn.Module):
    """One step of the STM: ``y, state = cell(x, state)``.

    Args:
        input_size: width I of the input vector x.
        output_size: width O of the output head; ``None`` returns the distilled vector o (size
            ``attn_size``) without a head.
        d: side of the item memory (paper: 96).
        num_slots: N, the number of relational slots, n_q = n_kv (paper: 8).
        rel_size: n_r, the width each slot is distilled to by G2 (paper: 96).
        attn_size: a, the width of the distilled output o produced by G3 (paper: 64).
        mlp_size: m, the hidden width of the optional output head.
        gated: use the input/forget gates of eq. 10; ``False`` is the paper's "w/o gates" ablation
            (eq. 9, ``M_i <- M_i + u (x) u``).
        alphas: ``(alpha1, alpha2, alpha3)``: each ``None`` (learned scalar, initialised to 0) or a
            number (fixed). alpha1 scales the old relational memory, alpha2 the relational read fed
            back into SAM, alpha3 the transfer to item memory. A fixed 0 switches the corresponding
            path off and its layers are not created.
        out_layernorm: apply layer norm to o before the head (the authors' RL agent does).
    """

    def __init__(
        self,
        input_size: int,
        output_size: Optional[int] = None,
        d: int = 96,
        num_slots: int = 8,
        rel_size: int = 96,
        attn_size: int = 64,
        mlp_size: int = 128,
        gated: bool = True,
        alphas: Sequence[AlphaSetting] = (None, None, None),
        out_layernorm: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(input_size=input_size, d=d, num_slots=num_slots, rel_size=rel_size,
                        attn_size=attn_size, mlp_size=mlp_size)
        if output_size is not None:
            _check_positive(output_size=output_size)
        alphas = _validate_alphas(alphas)
        self.input_size, self.output_size = input_size, output_size
        self.d, self.num_slots, self.rel_size, self.attn_size = d, num_slots, rel_size, attn_size
        self.gated = gated
        self.fixed_alphas = {i: a for i, a in enumerate(alphas, start=1) if a is not None}

        for i, setting in enumerate(alphas, start=1):
            if setting is None:
                self.register_parameter(f"alpha{i}", nn.Parameter(torch.zeros(())))
            else:
                self.register_buffer(f"alpha{i}", torch.tensor(float(setting)))
        self.uses_relational_read = self.fixed_alphas.get(2) != 0.0  # eq. 11
        self.uses_transfer = self.fixed_alphas.get(3) != 0.0  # eq. 13

        self.f1 = nn.Linear(input_size, d)  # u: the item written to M_i
        if self.uses_relational_read:
            self.f2 = nn.Linear(input_size, d)  # w: the relational read key
            self.f3 = nn.Linear(input_size, num_slots)  # z: attention over slots
        if gated:
            self.gate_in = nn.Linear(d, 2 * d)
            self.gate_mem = nn.Linear(d, 2 * d)
            self.input_bias = nn.Parameter(torch.zeros(()))
            self.forget_bias = nn.Parameter(torch.ones(()))
        self.sam = SAM(d, num_slots)
        if self.uses_transfer:
            self.G1 = nn.Linear(num_slots * d, d)
        self.G2 = nn.Linear(d * d, rel_size)
        self.G3 = nn.Linear(num_slots * rel_size, attn_size)
        self.out_norm = nn.LayerNorm(attn_size) if out_layernorm else None
        self.head = None
        if output_size is not None:
            self.head = nn.Sequential(
                nn.Linear(attn_size, mlp_size), nn.ReLU(),
                nn.Linear(mlp_size, mlp_size), nn.ReLU(),
                nn.Linear(mlp_size, output_size),
            )
        self.initial_item = nn.Parameter(torch.empty(d, d).uniform_(-1, 1) / (2 * d) ** 0.5)
        self.initial_relational = nn.Parameter(
            torch.empty(num_slots, d, d).uniform_(-1, 1) / (2 * d + num_slots) ** 0.5
        )

    @property
    def output_width(self) -> int:
        """Width of y: ``output_size``, or ``attn_size`` without a head."""
        return self.attn_size if self.output_size is None else self.output_size

    def initial_state(self, batch_size: int) -> STMState:
        """The learned initial memories ``M_i^0``, ``M_r^0`` expanded over a batch (an episode's reset)."""
        _check_positive(batch_size=batch_size)
        return STMState(
            self.initial_item.expand(batch_size, self.d, self.d),
            self.initial_relational.expand(batch_size, self.num_slots, self.d, self.d),
        )

    def reset_state(self, state: Optional[STMState], mask: Tensor) -> STMState:
        """The learned initial memories for the samples where ``mask`` ([B] bool) is set, ``state`` elsewhere."""
        initial = self.initial_state(mask.shape[0])
        if state is None:
            return initial
        return STMState(*(torch.where(mask.view(-1, *([1] * (s.dim() - 1))), i, s) for i, s in zip(initial, state)))

    def forward(self, x: Tensor, state: Optional[STMState] = None) -> tuple[Tensor, STMState]:
        """One step: ``x`` is ``[B, input_size]``; returns ``y`` (``[B, output_width]``) and the new state."""
        self._check_input(x)
        state, readout_input = self.step_projected(self.project_input(x), state)
        return self.readout(readout_input), state

    def update_memory(self, x: Tensor, state: Optional[STMState] = None) -> STMState:
        """Spec steps 1-7 (eqs. 9-13): write x into the item memory, then rebuild the relational memory."""
        self._check_input(x)
        return self.update_memory_projected(self.project_input(x), state)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"STMCell expects input of shape [B, {self.input_size}], got {list(x.shape)}")

    def full_precision(self):
        """The context of the recurrence: autocast off (see the module's docstring, "Mixed precision")."""
        return torch.autocast(self.initial_item.device.type, enabled=False)

    def project_input(self, x: Tensor) -> "InputProjection":
        """Everything a step computes from x alone (spec step 1 and the input half of the gates).

        Works on any leading dimensions, so :class:`STM` projects a whole sequence at once. The gates'
        biases (``gate_mem``'s and the scalars ``input_bias``, ``forget_bias``) are added here, to the
        ``[..., 2d]`` vector, rather than to the ``d x 2d`` gate pre-activations of every step (same sum,
        far fewer adds).
        Runs in the parameters' dtype, also under autocast.
        """
        with self.full_precision():
            x = x.to(self.initial_item.dtype)
            u = self.f1(x)
            w = self.f2(x) if self.uses_relational_read else None
            slot_logits = self.f3(x) if self.uses_relational_read else None
            gate_from_input = None
            if self.gated:  # gate_in(u) + gate_mem's bias + [input_bias] * d ++ [forget_bias] * d
                biases = torch.stack((self.input_bias, self.forget_bias)).unsqueeze(-1)  # [2, 1]
                gate_from_input = (self.gate_in(u).unflatten(-1, (2, self.d)) + biases).flatten(-2) + self.gate_mem.bias
        return InputProjection(u, w, slot_logits, gate_from_input)

    def update_memory_projected(self, projected: "InputProjection", state: Optional[STMState] = None) -> STMState:
        """Spec steps 2-7 for one step whose input is already projected (``[B, ...]`` fields).

        Arranged so that few ``[B, d, d]`` and ``[B, N, d, d]`` tensors are created or saved for the
        backward pass (the step is memory-bound at large batches and overhead-bound at batch 1):
        rank-1 and rank-N updates of a memory are single ``baddbmm`` calls, which save only their
        small factors where ``M + alpha * (a (x) b)`` would save the ``d x d`` product for alpha's
        gradient. Runs in the parameters' dtype, also under autocast.
        """
        return self.step_projected(projected, state)[0]

    def step_projected(self, projected: "InputProjection",
                       state: Optional[STMState] = None) -> tuple[STMState, Tensor]:
        """:meth:`update_memory_projected`, and the relational memory :meth:`readout` reads (``M_r`` itself)."""
        with self.full_precision():
            state = self._step_projected(projected, state)
        return state, state.relational

    def _step_projected(self, projected: "InputProjection", state: Optional[STMState]) -> STMState:
        u, w, slot_logits, gate_from_input = projected
        if state is None:
            state = self.initial_state(u.shape[0])
        item_prev, rel_prev = state
        batch, n, d = u.shape[0], self.num_slots, self.d

        if self.gated:  # 2-4. eq. 10 with the gates of Appendix D (all biases already in gate_from_input)
            # M' = I * tanh(u (x) u) + F * M_i, [I, F] = sigmoid(tanh(M_i) W_gate_mem^T + gate_from_input)
            item = gated_write(item_prev, u, self.gate_mem.weight, gate_from_input)
        else:  # eq. 9, the "w/o gates" ablation: M' = M_i + u (x) u
            item = torch.baddbmm(item_prev, u.unsqueeze(2), u.unsqueeze(1))

        read_term = None
        if self.uses_relational_read:  # 5. eq. 11
            slot_weights = torch.softmax(slot_logits, dim=-1)  # p over the N slots
            read = relational_read(rel_prev, slot_weights, w)  # v_r: [B, d], slots mixed first
            # SAM's input M' + alpha2 * v_r (x) w, left to SAM as its rank-1 term (alpha2 scales the factor w)
            read_term = (read, self.alpha2 * w)

        q, k, v = self.sam.queries_keys_values(item, read_term)  # 6. eq. 12 on M' + alpha2 v_r (x) w
        # scores[j, n, a] = tanh(q_n[a] * k_j[a]), key-major so that both products below read it as is
        scores = sam_scores(q, k).view(batch, n, n * d)  # [B, N(key), N(query)*d]
        # M_r = alpha1 * M_r_prev + A, A[n, a, c] = sum_j scores[j, n, a] v[j, c]: one [N*d, N] x [N, d]
        # product per sample accumulated into one new tensor (alpha1 is a buffer at 0 where fixed so).
        relational = relational_update(rel_prev, self.alpha1, scores, v)

        if self.uses_transfer:  # 7. eq. 13: T[c, e] = sum_{n,a} W_G1[e, n*d + a] A[n, a, c] + b_G1[e]
            # Factored: T = sum_j v_j (x) H_j + b with H_j[e] = sum_{n,a} W_G1[e, n*d + a] scores[j, n, a].
            per_key = scores @ self.G1.weight.t()  # H: [B, N(key), d]
            # The bias as one more term of the same product (a row of ones against b_G1): one pass over M'.
            left = torch.cat((v, v.new_ones(batch, 1, d)), dim=1).transpose(1, 2)  # [B, d, N + 1]
            right = torch.cat((per_key, self.G1.bias.expand(batch, 1, d)), dim=1)  # [B, N + 1, d]
            item = torch.baddbmm(item, left, self.alpha3 * right)
        return STMState(item, relational)

    def readout(self, relational: Tensor) -> Tensor:
        """Spec steps 8-9 (eq. 14 and the optional head) for relational memories ``[..., N, d, d]``."""
        per_slot = self.G2(relational.flatten(-2))  # g_n: [..., N, n_r]
        out = self.G3(per_slot.flatten(-2))  # o: [..., a]
        if self.out_norm is not None:
            out = self.out_norm(out)
        return out if self.head is None else self.head(out)


class STM(nn.Module):
    """An STM cell run over batch-first sequences ``[B, T, I]``.

    Takes the same arguments as :class:`STMCell`. ``forward(x, state=None)`` returns all outputs
    ``[B, T, output_width]`` and the state after the last step; ``state=None`` starts from the learned
    initial memories. Feeding a sequence in pieces while carrying the state gives the same outputs as
    feeding it whole.
    """

    def __init__(self, input_size: int, output_size: Optional[int] = None, **cell_kwargs) -> None:
        super().__init__()
        self.cell = STMCell(input_size, output_size, **cell_kwargs)

    READOUT_ROWS = 256
    """Rows (batch x steps x slots) below which the readout GEMM of eq. 14 batches several steps."""

    def initial_state(self, batch_size: int) -> STMState:
        return self.cell.initial_state(batch_size)

    def forward(self, x: Tensor, state: Optional[STMState] = None, episode_start: Optional[Tensor] = None,
                output_steps: Optional[Tensor] = None) -> tuple[Tensor, STMState]:
        """Run over ``x [B, T, I]``; ``episode_start [B, T]`` (bool, optional) resets sample b to the
        learned initial memories before step t (an RL rollout that crosses an episode boundary).

        ``output_steps [T]`` (bool, optional): read out (eq. 14) only at these steps; the outputs of the others
        are zeros. The memories do not depend on the outputs, so the outputs computed are the same as without
        it: a task scored at a few steps (associative retrieval, Nth-farthest: the last) skips the read-out's
        products everywhere else."""
        if x.dim() != 3 or x.shape[2] != self.cell.input_size:
            raise ValueError(f"STM expects input of shape [B, T, {self.cell.input_size}], got {list(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("STM got an empty sequence (T = 0)")
        # Everything that depends on the input alone, once for the whole sequence.
        projected = self.cell.project_input(x)
        batch, steps = x.shape[:2]
        # eq. 14 over chunks of consecutive steps: one [B*chunk*N, d*d] x [d*d, n_r] product per chunk.
        # The chunk is as short as keeps that product's row count near READOUT_ROWS: at batch 1 all
        # steps go at once (T small products would cost more in overhead than the work), at large
        # batches every step is read out alone, so no copy of the T relational memories is made (at
        # batch 128 a stack of 20 of them is a 755 MB copy, saved for G2's backward next to the
        # per-step memories, which are saved anyway).
        chunk = max(1, -(-self.READOUT_ROWS // (batch * self.cell.num_slots)))
        # unbind, not p[:, t]: the backward of T selects would build T zero-filled [B, T, ...] gradients
        # and add them up; unbind's backward stacks the T step gradients once.
        per_step = [[None] * steps if p is None else p.unbind(1) for p in projected]
        if episode_start is not None and episode_start.shape != (batch, steps):
            raise ValueError(f"episode_start must have shape [{batch}, {steps}], got {list(episode_start.shape)}")
        resets = [False] * steps if episode_start is None else episode_start.any(0).tolist()
        if output_steps is not None and output_steps.shape != (steps,):
            raise ValueError(f"output_steps must have shape [{steps}], got {list(output_steps.shape)}")
        read = [True] * steps if output_steps is None else output_steps.tolist()
        last_read = max((t for t in range(steps) if read[t]), default=-1)
        outputs, pending = [], []
        for t in range(steps):
            if resets[t]:
                state = self.cell.reset_state(state, episode_start[:, t])
            step_input = InputProjection(*(p[t] for p in per_step))
            state, readout_input = self.cell.step_projected(step_input, state)
            if not read[t]:
                continue
            pending.append(readout_input)
            if len(pending) == chunk or t == last_read:
                stacked = pending[0].unsqueeze(1) if len(pending) == 1 else torch.stack(pending, dim=1)
                outputs.append(self.cell.readout(stacked))
                pending = []
        if output_steps is None:
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1), state
        full = x.new_zeros(batch, steps, self.cell.output_width)
        if outputs:
            full = full.index_put((torch.arange(batch).unsqueeze(1), output_steps.nonzero().view(1, -1)),
                                  torch.cat(outputs, dim=1))
        return full, state


def _validate_alphas(alphas: Sequence[AlphaSetting]) -> tuple[AlphaSetting, AlphaSetting, AlphaSetting]:
    message = ("alphas must be a tuple of three entries (alpha1, alpha2, alpha3), each None (learned) "
               f"or a number (fixed), got {alphas!r}")
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence) or len(alphas) != 3:
        raise ValueError(message)
    for alpha in alphas:
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ValueError(message)
    return tuple(None if a is None else float(a) for a in alphas)  # type: ignore[return-value]
