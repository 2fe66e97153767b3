"""The baselines NTM, DNC, RMC and TPR-RNN (stm_rl/supervised/models): each one's defining mechanism against
a slow reference written from its paper's equations (loops over slots), the invariants of its addressing
(weights are distributions, DNC links), causality, and a few training steps through the registry."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from stm_rl.supervised.models import MODELS, build_model, model_options
from stm_rl.supervised.models import dnc as dnc_module
from stm_rl.supervised.models import ntm as ntm_module
from stm_rl.supervised.models import rmc as rmc_module
from stm_rl.supervised.models import tpr as tpr_module
from stm_rl.supervised.models.recurrent import split_sizes
from stm_rl.supervised.tasks import make_task

torch.set_num_threads(1)
BASELINES = ["ntm", "dnc", "rmc", "tpr"]


def run_steps(core, inputs):
    """Every intermediate state of a core over ``inputs [B, T, I]``."""
    state = core.initial_state(inputs.shape[0], inputs.device, inputs.dtype)
    states = []
    for t in range(inputs.shape[1]):
        _, state = core.step(inputs[:, t], state)
        states.append(state)
    return states


def cosine(a, b):
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)) + 1e-12)


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def oneplus(x):
    return 1 + math.log1p(math.exp(float(x)))


def sigmoid(x):
    return 1 / (1 + math.exp(-float(x)))


@pytest.mark.parametrize("name", BASELINES)
def test_registered_and_learns_a_little_on_copy(name, fit_fixed_batch):
    task = make_task("copy", bits=4, max_length=3)
    torch.manual_seed(0)
    model = build_model(name, task, model_options(name, "copy", "smoke"))
    losses = fit_fixed_batch(model, task, task.sample(16, np.random.default_rng(0)), steps=30)
    assert name in MODELS
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("name", BASELINES)
def test_outputs_do_not_see_the_future(name):
    torch.manual_seed(1)
    core = MODELS[name].CORE(5, 3, **dataclasses.asdict(model_options(name, "copy", "smoke")))
    x = torch.randn(2, 6, 5)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, 5)
    with torch.no_grad():
        a, b = core(x), core(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


# --- NTM (Graves et al. 2014, eqs. 2-9) ---------------------------------------------------------------------

def ntm_address_reference(memory, previous, key, strength, gate, shift, sharpen):
    """One head of one sample, eqs. 5-9 with loops: lists in, list out."""
    n = memory.shape[0]
    beta, g, gamma = oneplus(strength), sigmoid(gate), oneplus(sharpen)
    content = softmax([beta * cosine(key, memory[i]) for i in range(n)])
    interpolated = [g * content[i] + (1 - g) * float(previous[i]) for i in range(n)]
    s = softmax([float(v) for v in shift])  # s[0] shift -1, s[1] shift 0, s[2] shift +1
    shifted = [sum(interpolated[j] * s[(i - j) % n + 1] if (i - j) % n in (0, 1) else
                   (interpolated[j] * s[0] if (i - j) % n == n - 1 else 0.0) for j in range(n)) for i in range(n)]
    powered = [v ** gamma for v in shifted]
    return [v / sum(powered) for v in powered]


def test_ntm_step_equals_the_papers_equations():
    torch.manual_seed(2)
    core = ntm_module.NTM(4, 3, hidden_size=6, num_slots=5, slot_size=3, read_heads=1)
    x = torch.randn(1, 3, 4)
    with torch.no_grad():
        states = run_steps(core, x)
        previous, state = states[1], states[2]
        h, _ = core.controller(torch.cat([x[:, 2], previous.reads.flatten(1)], -1), (previous.h, previous.c))
        heads = core.heads(h).view(1, 2, -1)
        erase, add = core.write_vectors(h).chunk(2, -1)
    weights = []
    for head in range(2):
        p = split_sizes(heads[0, head], core.head_sizes)
        weights.append(ntm_address_reference(previous.memory[0], previous.weights[0, head], p["key"], p["strength"],
                                             p["gate"], p["shift"], p["sharpen"]))
    torch.testing.assert_close(state.weights[0], torch.tensor(weights), rtol=1e-4, atol=1e-6)
    write, e = weights[1], torch.sigmoid(erase[0])
    memory = [[float(previous.memory[0, i, k]) * (1 - write[i] * float(e[k])) + write[i] * float(add[0, k])
               for k in range(3)] for i in range(5)]  # eqs. 3-4
    torch.testing.assert_close(state.memory[0], torch.tensor(memory), rtol=1e-4, atol=1e-6)
    read = [sum(weights[0][i] * memory[i][k] for i in range(5)) for k in range(3)]  # eq. 2
    torch.testing.assert_close(state.reads[0, 0], torch.tensor(read), rtol=1e-4, atol=1e-6)


def test_ntm_weights_are_distributions():
    torch.manual_seed(3)
    core = ntm_module.NTM(4, 3, hidden_size=8, num_slots=7, slot_size=4, read_heads=2)
    with torch.no_grad():
        for state in run_steps(core, 3 * torch.randn(3, 10, 4)):
            assert (state.weights >= 0).all()
            torch.testing.assert_close(state.weights.sum(-1), torch.ones(3, 3))


# --- DNC (Graves et al. 2016, Methods) ----------------------------------------------------------------------

def test_dnc_allocation_equals_the_papers_product():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.0]])
    order = sorted(range(5), key=lambda i: float(usage[0, i]))
    expected = [0.0] * 5
    for j, slot in enumerate(order):
        expected[slot] = (1 - float(usage[0, slot])) * math.prod(float(usage[0, order[i]]) for i in range(j))
    torch.testing.assert_close(dnc_module.allocation_weights(usage)[0], torch.tensor(expected))
    assert float(dnc_module.allocation_weights(usage).sum()) <= 1 + 1e-6


def test_dnc_links_zero_diagonal_rows_and_columns_at_most_one():
    torch.manual_seed(4)
    core = dnc_module.DNC(4, 3, hidden_size=8, num_slots=6, slot_size=4, read_heads=2)
    with torch.no_grad():
        core.interface.weight.mul_(5)  # decisive gates: the bounds must hold at the extremes too
        states = run_steps(core, 3 * torch.randn(4, 12, 4))
    for state in states:
        links = state.links
        assert (links >= -1e-6).all()
        assert torch.diagonal(links, dim1=1, dim2=2).abs().max() == 0
        assert (links.sum(-1) <= 1 + 1e-5).all() and (links.sum(-2) <= 1 + 1e-5).all()
        assert ((state.usage >= 0) & (state.usage <= 1 + 1e-6)).all()
        assert (state.write_weights >= 0).all() and (state.write_weights.sum(-1) <= 1 + 1e-5).all()
        assert (state.read_weights >= -1e-6).all() and (state.read_weights.sum(-1) <= 1 + 1e-5).all()
        assert (state.precedence.sum(-1) <= 1 + 1e-5).all()
    assert max(float(s.links.sum()) for s in states) > 0.1  # the links were exercised, not all zero


def test_dnc_step_equals_the_papers_equations():
    torch.manual_seed(5)
    n, w, r = 4, 3, 2
    core = dnc_module.DNC(3, 2, hidden_size=6, num_slots=n, slot_size=w, read_heads=r)
    x = torch.randn(1, 4, 3)
    with torch.no_grad():
        states = run_steps(core, x)
        prev, state = states[2], states[3]
        h, _ = core.controller(torch.cat([x[:, 3], prev.reads.flatten(1)], -1), (prev.h, prev.c))
        io = {k: v[0] for k, v in split_sizes(core.interface(h), core.interface_sizes).items()}
    m0 = prev.memory[0]
    free = [sigmoid(v) for v in io["free_gates"]]
    psi = [math.prod(1 - free[i] * float(prev.read_weights[0, i, s]) for i in range(r)) for s in range(n)]
    u_prev, ww_prev = prev.usage[0], prev.write_weights[0]
    usage = [(float(u_prev[s]) + float(ww_prev[s]) - float(u_prev[s]) * float(ww_prev[s])) * psi[s] for s in range(n)]
    order = sorted(range(n), key=lambda s: usage[s])
    alloc = [0.0] * n
    for j, s in enumerate(order):
        alloc[s] = (1 - usage[s]) * math.prod(usage[order[i]] for i in range(j))
    beta_w = oneplus(io["write_strength"][0])
    content_w = softmax([beta_w * cosine(io["write_key"], m0[s]) for s in range(n)])
    ga, gw = sigmoid(io["allocation_gate"][0]), sigmoid(io["write_gate"][0])
    write = [gw * (ga * alloc[s] + (1 - ga) * content_w[s]) for s in range(n)]
    erase = [sigmoid(v) for v in io["erase"]]
    memory = torch.tensor([[float(m0[s, k]) * (1 - write[s] * erase[k]) + write[s] * float(io["write_vector"][k])
                            for k in range(w)] for s in range(n)])
    p_prev, l_prev = prev.precedence[0], prev.links[0]
    links = [[0.0 if i == j else (1 - write[i] - write[j]) * float(l_prev[i, j]) + write[i] * float(p_prev[j])
              for j in range(n)] for i in range(n)]
    read_weights = []
    for head in range(r):
        wr = prev.read_weights[0, head]
        forward = [sum(links[i][j] * float(wr[j]) for j in range(n)) for i in range(n)]
        backward = [sum(links[j][i] * float(wr[j]) for j in range(n)) for i in range(n)]
        key = io["read_keys"][head * w:(head + 1) * w]
        content = softmax([oneplus(io["read_strengths"][head]) * cosine(key, memory[s]) for s in range(n)])
        modes = softmax([float(v) for v in io["read_modes"][3 * head:3 * head + 3]])
        read_weights.append([modes[0] * backward[s] + modes[1] * content[s] + modes[2] * forward[s] for s in range(n)])
    torch.testing.assert_close(state.usage[0], torch.tensor(usage), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state.write_weights[0], torch.tensor(write), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state.memory[0], memory, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state.links[0], torch.tensor(links), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state.read_weights[0], torch.tensor(read_weights), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state.reads[0], torch.tensor(read_weights) @ memory, rtol=1e-4, atol=1e-6)


# --- RMC (Santoro et al. 2018) -----------------------------------------------------------------------------

def test_rmc_attention_and_gated_update_equal_a_per_head_loop():
    torch.manual_seed(6)
    core = rmc_module.RelationalMemoryCore(3, 2, num_slots=3, heads=2, head_size=2, mlp_layers=1)
    x = torch.randn(1, 3, 3)
    with torch.no_grad():
        states = run_steps(core, x)
        prev, state = states[1], states[2]
        inp = core.input_projection(x[:, 2])[0]
        m = prev.memory[0]
        rows = torch.cat([m, inp[None]], 0)
        q, k, v = core.query(m), core.key(rows), core.value(rows)
        attended = torch.zeros(3, 4)
        for head in range(2):
            cols = slice(2 * head, 2 * head + 2)
            for slot in range(3):
                weights = softmax([float(q[slot, cols] @ k[j, cols]) / math.sqrt(2) for j in range(4)])
                torch.testing.assert_close(state.attention[0, head, slot], torch.tensor(weights), rtol=1e-4, atol=1e-6)
                attended[slot, cols] = sum(weights[j] * v[j, cols] for j in range(4))
        candidate = core.attention_norm(m + attended)
        candidate = core.mlp_norm(candidate + core.mlp(candidate))
        for slot in range(3):
            gates = core.gate_input(inp) + core.gate_memory(torch.tanh(m[slot]))
            i, f = torch.sigmoid(gates[:4]), torch.sigmoid(gates[4:] + 1)
            torch.testing.assert_close(state.memory[0, slot], i * torch.tanh(candidate[slot]) + f * m[slot],
                                       rtol=1e-4, atol=1e-6)


# --- TPR-RNN (Schlag & Schmidhuber 2018) -------------------------------------------------------------------

def test_tpr_update_equals_the_papers_sums():
    torch.manual_seed(7)
    e, r = 3, 2
    f = 0.3 * torch.randn(1, e, r, e)
    e1, e2, r1, r2, r3 = torch.randn(1, e), torch.randn(1, e), torch.randn(1, r), torch.randn(1, r), torch.randn(1, r)

    def bind(ent, rel):
        return [sum(float(f[0, a, b, c]) * float(ent[0, a]) * float(rel[0, b]) for a in range(e) for b in range(r))
                for c in range(e)]

    w1, w2, w3 = bind(e1, r1), bind(e1, r2), bind(e2, r3)
    updated = torch.zeros(e, r, e)
    for a in range(e):
        for b in range(r):
            for c in range(e):
                updated[a, b, c] = (float(f[0, a, b, c])
                                    + float(e1[0, a]) * float(r1[0, b]) * (float(e2[0, c]) - w1[c])
                                    + float(e1[0, a]) * float(r2[0, b]) * (w1[c] - w2[c])
                                    + float(e2[0, a]) * float(r3[0, b]) * (float(e1[0, c]) - w3[c]))
    expected = updated / max(1.0, float(updated.norm()))
    torch.testing.assert_close(tpr_module.tpr_update(f, e1, e2, r1, r2, r3)[0], expected, rtol=1e-4, atol=1e-6)


def test_tpr_retrieves_what_it_bound():
    e1, e2 = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 1.0, 0]])
    r1, r2, r3 = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 0, 0.0]]), torch.tensor([[0, 1.0, 0]])
    f = tpr_module.tpr_update(torch.zeros(1, 3, 3, 3), e1, e2, r1, r2, r3)
    # F = (e1 x r1 x e2 + e2 x r3 x e1) / sqrt(2): the pair (e1, r1) recalls e2, the pair (e2, r3) recalls e1
    torch.testing.assert_close(tpr_module.bind(f, e1, r1), e2 / math.sqrt(2))
    torch.testing.assert_close(tpr_module.bind(f, e2, r3), e1 / math.sqrt(2))
    torch.testing.assert_close(tpr_module.bind(f, e2, r1), torch.zeros(1, 3))
