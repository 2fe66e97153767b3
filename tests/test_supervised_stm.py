"""The STM as a supervised model: learned alphas at exactly 0 get gradients, the alphas and gate biases are
logged, the paper's bAbI read-out (the relational memory unbound with question vectors) has the right shapes,
is causal, computes the unbinding of the paper's equations and learns a fixed batch; the authors' optimizer
settings (RMSprop smoothing, warm-up and one decay) and one length per batch for copy/RAR."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stm_rl.logger import METRICS_FILE, read_metrics
from stm_rl.supervised.__main__ import main
from stm_rl.supervised.config import OptimizerConfig, preset_config
from stm_rl.supervised.models import MODELS, build_model, model_options
from stm_rl.supervised.models import stm as stm_module
from stm_rl.supervised.models.unbinding_readout import unbind
from stm_rl.supervised.tasks import make_task
from stm_rl.supervised.train import learning_rate, make_optimizer

from test_supervised_tasks import write_babi

torch.set_num_threads(1)
SMOKE_STM = dataclasses.asdict(model_options("stm", "copy", "smoke"))


@pytest.mark.parametrize("kernels", ["auto", "off"])
@pytest.mark.parametrize("readout, alphas", [("head", (None, None, None)), ("unbind", (None, None, None)),
                                             ("unbind", (1.0, None, 0.0))])
def test_learned_alphas_at_exactly_zero_get_gradients(kernels, readout, alphas, monkeypatch):
    monkeypatch.setenv("STM_RL_FUSED_KERNELS", kernels)  # with 1 thread "auto" takes the fused CPU kernels
    torch.manual_seed(0)
    core = MODELS["stm"].CORE(5, 3, **{**SMOKE_STM, "readout": readout, "alphas": alphas})
    cell = core.stm.cell if readout == "head" else core.cell
    learned = [f"alpha{i}" for i, a in enumerate(alphas, start=1) if a is None]
    assert all(getattr(cell, name).item() == 0.0 for name in learned)
    core(torch.randn(2, 5, 5)).square().sum().backward()
    for name in learned:
        assert getattr(cell, name).grad is not None and getattr(cell, name).grad.abs().item() > 0, name


def test_alphas_and_gate_biases_are_logged_with_the_metrics(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--task", "copy", "--model", "stm", "--preset", "smoke", "--iterations", "10", "--no-progress",
                 "--run-dir", str(run_dir)]) == 0
    records = [r for r in read_metrics(run_dir / METRICS_FILE) if "train/loss" in r]
    names = ("stm/alpha1", "stm/alpha2", "stm/alpha3", "stm/input_bias", "stm/forget_bias", "train/lr")
    assert [r["step"] for r in records] == [1, 10] and all(name in r for r in records for name in names)
    assert records[0]["stm/forget_bias"] != 1.0 and records[0]["stm/alpha1"] != 0.0  # moved by the first step
    fixed = MODELS["stm"].CORE(5, 3, **{**SMOKE_STM, "alphas": (0.0, 0.0, None), "gated": False})
    assert set(fixed.diagnostics()) == {"stm/alpha3"}  # fixed alphas and absent gates are not reported
    assert build_model("lstm", make_task("copy", bits=4), model_options("lstm", "copy", "smoke")).diagnostics() == {}


# ---- the paper's bAbI read-out -------------------------------------------------------------------------------

def unbinding_core(seed=0, **changes):
    torch.manual_seed(seed)
    options = {**dataclasses.asdict(model_options("stm", "babi", "smoke")), **changes}
    return MODELS["stm"].CORE(6, 4, **options)


def test_babi_stm_uses_the_unbinding_readout_with_the_papers_sizes():
    paper = model_options("stm", "babi", "paper")
    assert (paper.readout, paper.num_slots, paper.d, paper.alphas, paper.question_hidden_size) == \
        ("unbind", 20, 90, (1.0, None, 0.0), 80)
    assert model_options("stm", "copy", "paper").readout == "head"
    assert isinstance(unbinding_core(), stm_module.STMQuestionAnswering)


def test_unbinding_equals_the_sums_of_the_paper():
    memory, e, r = torch.randn(2, 3, 4, 4), torch.randn(2, 4), torch.randn(2, 3)
    expected = torch.einsum("bnac,ba,bn->bc", memory, e, r)
    torch.testing.assert_close(unbind(memory, e, r), expected)


def test_unbinding_readout_shapes_and_causality():
    core = unbinding_core()
    x = torch.randn(3, 7, 6)
    changed = x.clone()
    changed[:, 5:] = torch.randn(3, 2, 6)
    with torch.no_grad():
        a, b = core(x), core(changed)
    assert a.shape == (3, 7, 4)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_the_answer_is_the_storys_memory_unbound_with_the_question():
    """The output at the last step (the question) reads the memory written by the steps before it only."""
    core = unbinding_core(seed=2)
    story, question = torch.randn(2, 4, 6), torch.randn(2, 1, 6)
    with torch.no_grad():
        answer = core(torch.cat([story, question], dim=1))[:, -1]
        state = None
        for t in range(story.shape[1]):
            state = core.cell.update_memory(story[:, t], state)
        torch.testing.assert_close(answer, core.answer(question[:, 0], state.relational))


def test_babi_stm_learns_a_fixed_batch(tmp_path, fit_fixed_batch):
    task = make_task("babi", data_dir=str(write_babi(tmp_path / "babi")), embedding_size=8)
    torch.manual_seed(0)
    model = build_model("stm", task, model_options("stm", "babi", "smoke"))
    losses = fit_fixed_batch(model, task, task.dataset("train", 0, seed=0), steps=40)
    assert losses[-1] < 0.2 * losses[0]


# ---- the authors' optimizer settings and batches ----------------------------------------------------------------

def test_rmsprop_takes_its_smoothing_constant_and_the_schedule_warms_up_and_decays_once():
    model = torch.nn.Linear(2, 2)
    settings = OptimizerConfig("rmsprop", lr=1e-4, momentum=0.9, rmsprop_alpha=0.95, warmup_iterations=3,
                               warmup_factor=0.1, decay_below_valid_loss=0.1, decay_factor=0.5)
    group = make_optimizer(model, settings).param_groups[0]
    assert (group["alpha"], group["momentum"]) == (0.95, 0.9)
    assert [learning_rate(settings, i, False) for i in (0, 2, 3)] == pytest.approx([1e-5, 1e-5, 1e-4])
    assert learning_rate(settings, 10, True) == pytest.approx(5e-5)
    with pytest.raises(ValueError, match="rmsprop_alpha must be in"):
        OptimizerConfig(rmsprop_alpha=1.0)


def test_paper_preset_is_the_authors_settings():
    copy, ar, nth = (preset_config(name, "stm", "paper") for name in ("copy", "associative-retrieval-30",
                                                                        "nth-farthest"))
    assert (copy.optimization.optimizer, copy.optimization.lr, copy.optimization.momentum,
            copy.optimization.rmsprop_alpha, copy.optimization.clip_value) == ("rmsprop", 1e-4, 0.9, 0.95, 10.0)
    assert (copy.training.iterations, copy.training.batch_size, copy.task_options) == \
        (50_000, 128, {"one_length_per_batch": True})
    assert (ar.optimization.optimizer, ar.optimization.rmsprop_alpha, ar.optimization.clip_value) == \
        ("rmsprop", 0.99, 10.0)
    assert (ar.training.iterations, ar.training.train_size, ar.training.eval_every) == (100_000, 100_000, 781)
    assert (nth.optimization.optimizer, nth.optimization.clip_value, nth.training.iterations) == \
        ("adam", 10.0, 1_000_000)
    assert preset_config("copy", "stm", "small").task_options.get("one_length_per_batch") is None


@pytest.mark.parametrize("name, options", [("copy", {"bits": 4, "max_length": 9}),
                                           ("rar", {"bits": 4, "max_items": 5}),
                                           ("rar-as-run", {"bits": 4})])
def test_one_length_per_batch_in_training_and_per_sample_in_fixed_sets(name, options):
    task = make_task(name, **options, one_length_per_batch=True)
    rng = np.random.default_rng(0)
    batches = [task.sample(8, rng) for _ in range(6)]
    assert all(len(set(b.lengths.tolist())) == 1 for b in batches)
    assert len({int(b.lengths[0]) for b in batches}) > 1
    fixed = task.dataset("valid", 32, seed=0)
    assert len(set(fixed.lengths.tolist())) > 1
    per_sample = make_task(name, **options).dataset("valid", 32, seed=0)
    torch.testing.assert_close(fixed.inputs, per_sample.inputs)  # the option changes training batches only


@pytest.mark.parametrize("task_name", ["associative-retrieval-30", "copy"])
def test_the_stm_reads_out_only_at_answer_steps_with_the_same_loss_and_gradients(task_name):
    """Training passes the answer steps (batch.mask.any(0)): the STM skips its read-out elsewhere, and the loss,
    the metrics and every gradient are those of the full read-out."""
    task = make_task(task_name)
    torch.manual_seed(0)
    model = build_model("stm", task, model_options("stm", task_name, "smoke")).double()
    batch = task.sample(4, np.random.default_rng(0))
    inputs = batch.inputs.double() if batch.inputs.is_floating_point() else batch.inputs  # tokens stay indices
    answer_steps = batch.mask.any(0)
    assert not answer_steps.all(), "the task scores some steps only"
    losses, grads = [], []
    for steps in (None, answer_steps):
        loss = task.loss(model(inputs, answer_steps=steps), batch)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True))
    torch.testing.assert_close(losses[1], losses[0])
    for full, part in zip(*grads):
        assert (full is None) == (part is None)
        if full is not None:
            torch.testing.assert_close(part, full)
