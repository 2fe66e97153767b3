"""The memory core against a slow reference written straight from ../shared/spec/STM.md."""

from __future__ import annotations

import math

import pytest
import torch

from stm_rl import SAM, STM, STMCell, STMState, outer_product_attention

SIZES = dict(d=4, num_slots=3, rel_size=5, attn_size=3, mlp_size=6)


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---------------------------------------------------------------- slow reference (loops, one sample at a time)
def linear(layer, x):
    return layer.weight @ x + layer.bias


@torch.no_grad()
def ref_sam(sam: SAM, S):
    d, N = sam.d, sam.num_slots
    P = torch.stack([linear(sam.qkv_proj, S[r]) for r in range(d)])  # row r of S -> row r of P, d x 3N
    mean, var = P.mean(), ((P - P.mean()) ** 2).mean()
    P = (P - mean) / math.sqrt(var + 1e-5) * sam.qkv_norm.weight + sam.qkv_norm.bias
    out = torch.zeros(N, d, d)
    for i in range(N):
        for j in range(N):
            q, k, v = P[:, i], P[:, N + j], P[:, 2 * N + j]
            for a in range(d):
                for c in range(d):
                    out[i, a, c] += math.tanh(q[a] * k[a]) * v[c]
    return out


@torch.no_grad()
def ref_step(cell: STMCell, x, Mi, Mr):
    """One STM step for ONE sample, spec section 3 steps 1-9."""
    d, N = cell.d, cell.num_slots
    alpha1, alpha2, alpha3 = (getattr(cell, f"alpha{i}").item() for i in (1, 2, 3))
    u = linear(cell.f1, x)
    if cell.gated:
        M_new = torch.zeros(d, d)
        gin = linear(cell.gate_in, u)
        for r in range(d):
            G = linear(cell.gate_mem, torch.tanh(Mi[r])) + gin
            for c in range(d):
                i_gate = torch.sigmoid(G[c] + cell.input_bias)
                f_gate = torch.sigmoid(G[d + c] + cell.forget_bias)
                M_new[r, c] = i_gate * math.tanh(u[r] * u[c]) + f_gate * Mi[r, c]
    else:
        M_new = Mi + torch.outer(u, u)
    sam_in = M_new.clone()
    if alpha2 != 0.0 or "alpha2" in dict(cell.named_parameters()):
        w, z = linear(cell.f2, x), linear(cell.f3, x)
        p = torch.softmax(z, 0)
        v_r = torch.zeros(d)
        for f in range(d):
            for n in range(N):
                for e in range(d):
                    v_r[f] += p[n] * w[e] * Mr[n, e, f]
        sam_in = sam_in + alpha2 * torch.outer(v_r, w)
    A = ref_sam(cell.sam, sam_in)
    Mr_out = alpha1 * Mr + A
    Mi_out = M_new.clone()
    if alpha3 != 0.0:
        T = torch.zeros(d, d)
        for c in range(d):
            for e in range(d):
                T[c, e] = cell.G1.bias[e] + sum(
                    cell.G1.weight[e, n * d + a] * A[n, a, c] for n in range(N) for a in range(d))
        Mi_out = Mi_out + alpha3 * T
    g = torch.cat([linear(cell.G2, Mr_out[n].reshape(-1)) for n in range(N)])
    y = linear(cell.G3, g)
    if cell.out_norm is not None:
        y = cell.out_norm(y)
    if cell.head is not None:
        y = cell.head(y)
    return y, Mi_out, Mr_out


CONFIGS = {
    "gated-learned": dict(gated=True, alphas=(None, None, None)),
    "ungated-learned": dict(gated=False, alphas=(None, None, None)),
    "gated-fixed": dict(gated=True, alphas=(0.5, -0.3, 0.2)),
    "rar-preset": dict(gated=True, alphas=(0, 0, None)),
    "babi-preset": dict(gated=True, alphas=(1, None, 0), out_layernorm=True),
}


def set_learned_alphas(module, value):
    """Learned alphas start at 0, which hides the relational paths; give them a visible value."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "alpha" in name:
                param.fill_(value)


def make_cell(config, output_size=2, seed=0):
    torch.manual_seed(seed)
    cell = STMCell(5, output_size, **SIZES, **config)
    with torch.no_grad():  # move every parameter off its initial value so that each path matters
        for name, param in cell.named_parameters():
            if name.startswith("alpha"):
                param.fill_(0.4 + 0.1 * int(name[-1]))
            elif "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return cell


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("output_size", [None, 2])
def test_cell_matches_reference(config, output_size):
    cell = make_cell(config, output_size)
    B, steps = 2, 3
    xs = torch.randn(steps, B, 5)
    state = cell.initial_state(B)
    ref = [(state.item[b], state.relational[b]) for b in range(B)]
    for x in xs:
        y, state = cell(x, state)
        for b in range(B):
            y_ref, Mi_ref, Mr_ref = ref_step(cell, x[b], *ref[b])
            ref[b] = (Mi_ref, Mr_ref)
            torch.testing.assert_close(y[b], y_ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(state.item[b], Mi_ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(state.relational[b], Mr_ref, atol=1e-5, rtol=0)


def test_sam_matches_reference():
    torch.manual_seed(1)
    sam = SAM(4, 3)
    with torch.no_grad():
        sam.qkv_norm.weight.add_(torch.randn_like(sam.qkv_norm.weight))
    S = torch.randn(2, 4, 4)
    out = sam(S)
    assert out.shape == (2, 3, 4, 4)
    for b in range(2):
        torch.testing.assert_close(out[b], ref_sam(sam, S[b]), atol=1e-5, rtol=0)


def test_outer_product_attention_is_eq2():
    q, k, v = torch.randn(3, 2, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 6)
    out = outer_product_attention(q, k, v)
    assert out.shape == (3, 2, 4, 6)
    expected = sum(torch.tanh(q * k[:, None, j, :]).unsqueeze(-1) * v[:, None, None, j, :] for j in range(5))
    torch.testing.assert_close(out, expected)


def test_proposition_1_dot_product_attention_is_a_contraction_of_opa():
    """With linear S (no softmax) and linear F, sum_a A(q, K, V)[a, :] = sum_j (q . k_j) v_j."""
    q, k, v = torch.randn(7, 1, 4), torch.randn(7, 5, 4), torch.randn(7, 5, 6)
    opa = outer_product_attention(q, k, v, activation=lambda t: t)  # [7, 1, 4, 6]
    dot_product_attention = (q @ k.transpose(1, 2)) @ v  # [7, 1, 6]
    torch.testing.assert_close(opa.sum(dim=2), dot_product_attention)
    # ...and with tanh the identity no longer holds, so the test can tell the two apart.
    assert not torch.allclose(outer_product_attention(q, k, v).sum(dim=2), dot_product_attention)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_gradients_reach_used_parameters_and_not_fixed_alphas(config):
    cell = make_cell(config)
    state = cell.initial_state(2)
    total = 0.0
    for x in torch.randn(3, 2, 5):
        y, state = cell(x, state)
        total = total + y.pow(2).sum()
    total.backward()
    fixed = cell.fixed_alphas
    unused = set()
    if fixed.get(1) == 0.0 and fixed.get(2) == 0.0:
        unused.add("initial_relational")  # the old relational memory is never read
    for name, param in cell.named_parameters():
        if name in unused:
            assert param.grad is None or param.grad.abs().sum() == 0, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {name}"
    for i, value in fixed.items():
        alpha = getattr(cell, f"alpha{i}")
        assert not alpha.requires_grad and alpha.item() == value
        assert f"alpha{i}" not in dict(cell.named_parameters())
    # A fixed 0 switches its path off: the layers it would feed are not created at all.
    assert hasattr(cell, "G1") == (fixed.get(3) != 0.0)
    assert hasattr(cell, "f2") == (fixed.get(2) != 0.0)


def test_initial_state_is_learned_and_resets():
    cell = make_cell(CONFIGS["gated-learned"])
    s0 = cell.initial_state(3)
    assert s0.item.shape == (3, 4, 4) and s0.relational.shape == (3, 3, 4, 4)
    torch.testing.assert_close(s0.item[2], cell.initial_item)
    torch.testing.assert_close(s0.relational[1], cell.initial_relational)
    bound_item, bound_rel = 1 / math.sqrt(2 * 4), 1 / math.sqrt(2 * 4 + 3)
    fresh = STMCell(5, **SIZES)
    assert fresh.initial_item.abs().max() <= bound_item and fresh.initial_relational.abs().max() <= bound_rel
    # a step with state=None starts from the initial memories
    x = torch.randn(3, 5)
    y_none, _ = cell(x)
    y_init, s1 = cell(x, s0)
    torch.testing.assert_close(y_none, y_init)
    assert not torch.allclose(s1.item, s0.item)
    # a reset after some steps gives the same initial memories again, whatever came before
    torch.testing.assert_close(cell.initial_state(3).item, s0.item)


def test_carrying_state_equals_whole_sequence():
    torch.manual_seed(3)
    model = STM(5, 2, **SIZES)
    set_learned_alphas(model, 0.3)
    x = torch.randn(2, 7, 5)
    y_whole, state_whole = model(x)
    y_a, state = model(x[:, :3])
    y_b, state = model(x[:, 3:], state)
    torch.testing.assert_close(torch.cat([y_a, y_b], 1), y_whole)
    torch.testing.assert_close(state.relational, state_whole.relational)
    # and the sequence module is the cell stepped by hand
    state, ys = None, []
    for t in range(7):
        y, state = model.cell(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_whole)
    assert isinstance(state_whole, STMState)
    detached = state_whole.detach()
    assert not detached.item.requires_grad and not detached.relational.requires_grad


def test_float32_and_device_follow_the_input():
    cell = STMCell(5, 3, **SIZES).float()
    y, state = cell(torch.randn(2, 5, dtype=torch.float32))
    assert y.dtype == state.item.dtype == state.relational.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cell = make_cell(CONFIGS["gated-learned"])
    x = torch.randn(2, 4, 5)
    model = STM(5, 2, **SIZES)
    model.cell = cell
    y_cpu, _ = model(x)
    y_gpu, _ = model.cuda()(x.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu)


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_size=0), "input_size must be a positive integer"),
    (dict(input_size=5, d=-1), "d must be a positive integer"),
    (dict(input_size=5, num_slots=0), "num_slots must be a positive integer"),
    (dict(input_size=5, output_size=0), "output_size must be a positive integer"),
    (dict(input_size=5, alphas=(None, None)), "alphas must be a tuple of three"),
    (dict(input_size=5, alphas=(None, "x", None)), "alphas must be a tuple of three"),
])
def test_invalid_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STMCell(**kwargs)


def test_wrong_input_width_raises():
    cell = STMCell(5, **SIZES)
    with pytest.raises(ValueError, match=r"input of shape \[B, 5\]"):
        cell(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"\[B, T, 5\]"):
        STM(5, **SIZES)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="SAM expects memories"):
        SAM(4, 2)(torch.randn(1, 3, 4))


def test_relational_update_gradcheck():
    """The operator M_r = alpha1 * M_r_prev + scores^T V (eq. 12), in float64."""
    from stm_rl.memory.ops import relational_update

    alpha = torch.tensor(0.7, requires_grad=True)
    memory = torch.randn(2, 3, 4, 4, requires_grad=True)
    scores = torch.randn(2, 3, 3 * 4, requires_grad=True)  # [B, N(key), N*d]
    values = torch.randn(2, 3, 4, requires_grad=True)
    expected = alpha * memory + torch.einsum("bjna,bjc->bnac", scores.view(2, 3, 3, 4), values)
    torch.testing.assert_close(relational_update(memory, alpha, scores, values), expected)
    assert torch.autograd.gradcheck(relational_update, (memory, alpha, scores, values))
    # an expanded batch (the learned initial memory broadcast over the batch) works too
    base = torch.randn(3, 4, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, *rest: relational_update(b.expand(2, 3, 4, 4), *rest),
                                    (base, alpha, scores, values))
    with pytest.raises(ValueError, match="0-dimensional"):
        relational_update(memory, torch.ones(1), scores, values)


def test_relational_read_gradcheck():
    """The operator of the relational read (eq. 11), in float64, against its definition."""
    from stm_rl.memory.ops import relational_read

    memory = torch.randn(2, 3, 4, 4, requires_grad=True)
    p = torch.softmax(torch.randn(2, 3), -1).requires_grad_()
    w = torch.randn(2, 4, requires_grad=True)
    expected = torch.einsum("bn,be,bnef->bf", p, w, memory)
    torch.testing.assert_close(relational_read(memory, p, w), expected)
    assert torch.autograd.gradcheck(relational_read, (memory, p, w))
    base = torch.randn(3, 4, 4, requires_grad=True)  # the initial memory, expanded over the batch
    assert torch.autograd.gradcheck(lambda m, p, w: relational_read(m.expand(2, 3, 4, 4), p, w), (base, p, w))


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_sequence_gradients_match_finite_differences(config):
    """Backward of the whole sequence module (custom autograd functions in context) by gradcheck."""
    from torch.func import functional_call

    torch.manual_seed(4)
    model = STM(5, 2, **SIZES, **config)
    model.cell = make_cell(config)
    names = [n for n, _ in model.named_parameters()
             if n.split(".")[-1] in ("alpha1", "alpha2", "alpha3", "initial_relational", "initial_item")]
    values = tuple(dict(model.named_parameters())[n].detach().clone().requires_grad_() for n in names)

    def run(x, *params):
        return functional_call(model, dict(zip(names, params)), (x,))[0]

    x = torch.randn(2, 3, 5, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x, *values), fast_mode=True)


def test_episode_start_resets_inside_a_sequence():
    torch.manual_seed(4)
    model = STM(5, 2, **SIZES)
    set_learned_alphas(model, 0.3)
    x = torch.randn(2, 5, 5)
    start = torch.zeros(2, 5, dtype=torch.bool)
    start[1, 3] = True  # sample 1 starts a new episode at step 3
    y, _ = model(x, None, start)
    y_whole, _ = model(x)
    torch.testing.assert_close(y[0], y_whole[0])  # sample 0 is untouched
    y_fresh, _ = model(x[1:, 3:])  # sample 1 from step 3 on = a fresh sequence
    torch.testing.assert_close(y[1, 3:], y_fresh[0])
    assert not torch.allclose(y[1, 3:], y_whole[1, 3:])
    with pytest.raises(ValueError, match="episode_start must have shape"):
        model(x, None, start[:, :2])


def test_output_steps_read_out_only_there_with_the_same_values_and_gradients():
    """STM(..., output_steps): the read-out at the chosen steps only; the memories do not depend on the outputs,
    so those outputs and every gradient through them are the full run's; the other steps are zeros."""
    from stm_rl import STM

    torch.manual_seed(0)
    model = STM(input_size=6, output_size=5, num_slots=2, d=8, rel_size=8).double()
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    chosen = torch.tensor([False, True, False, False, True, False, True])
    full, full_state = model(x)
    part, part_state = model(x, output_steps=chosen)
    torch.testing.assert_close(part[:, chosen], full[:, chosen])
    assert torch.equal(part[:, ~chosen], torch.zeros_like(part[:, ~chosen]))
    torch.testing.assert_close(part_state.relational, full_state.relational)
    weights = torch.randn_like(full)
    grads_full = torch.autograd.grad((full[:, chosen] * weights[:, chosen]).sum(), list(model.parameters()),
                                     allow_unused=True)
    grads_part = torch.autograd.grad((part * weights).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(grads_full, grads_part):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a)
    nothing, _ = model(x, output_steps=torch.zeros(7, dtype=torch.bool))
    assert torch.equal(nothing, torch.zeros_like(full))
    with pytest.raises(ValueError, match="output_steps must have shape"):
        model(x, output_steps=chosen[:3])
