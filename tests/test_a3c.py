"""The A3C trainer end to end (real Pong), its learning on a toy memory task, and its failure handling."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from stm_rl.a3c import SharedAdam, TrainConfig, load_agent_from_checkpoint
from stm_rl.a3c.config import RunConfig
from stm_rl.a3c.messages import NonFinite
from stm_rl.a3c.progress import RunLog
from stm_rl.a3c.worker import WorkerContext, advantages_and_returns, train_worker
from stm_rl.cli import main as cli_main
from stm_rl.logger import METRICS_FILE, read_metrics
from stm_rl.run_dir import read_jsonl

FAST = ["--encoder", "small", "--workers", "2", "--envs-per-worker", "1", "--adam-eps", "1e-3", "--no-progress"]
"""Small, and independent of the A3C defaults: one env per worker (a 640-frame update at skip 32)."""


# ---------------------------------------------------------------- end to end on Pong
@pytest.mark.parametrize("agent, skip, frames", [("lstm", 0, 400), ("stm", 0, 300), ("lstm", 32, 8000),
                                                 ("stm", 32, 8000)])
def test_short_pong_run_writes_everything(tmp_path, agent, skip, frames, summary_of, monkeypatch):
    monkeypatch.setattr(RunLog, "UPDATE_LOG_INTERVAL_S", 0.0)  # every update's losses and memory norms
    run_dir = tmp_path / "run"
    code = cli_main(["train", "--agent", agent, "--frame-skip", str(skip), "--frames", str(frames),
                     "--run-dir", str(run_dir), *FAST])
    assert code == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["agent"]["agent"] == agent and config["config"]["env"]["frame_skip"] == skip
    assert "torch" in config["versions"]
    compute = config["compute"]  # what computed the numbers: kernels, matrix-product library, CPU features
    assert compute["threads_per_process"] == 1 and compute["fp32_matmul"] in ("onednn", "mkl")
    assert compute["fused_kernels"]["state"] in ("on", "off") or compute["fused_kernels"]["state"].startswith("unavailable")
    assert config["command"].startswith("stm-rl train") and f"--run-dir {run_dir}" in config["command"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "games.jsonl").exists()
    # every finished game is also a metric (metrics.jsonl and tensorboard), at the run's frame count
    returns = [(r["step"], r["charts/episodic_return"]) for r in read_metrics(run_dir / METRICS_FILE)
               if "charts/episodic_return" in r]
    assert returns == [(g["frames"], g["score"]) for g in read_jsonl(run_dir / "games.jsonl")]
    updates = [r for r in read_metrics(run_dir / METRICS_FILE) if "losses/grad_norm" in r]
    assert updates and all(r["memory/lstm_cell_norm"] > 0 for r in updates)
    assert all(("memory/stm_item_norm" in r and "memory/stm_relational_norm_max" in r) == (agent == "stm")
               for r in updates)
    summary = summary_of(run_dir)
    assert summary["status"] == "completed"
    assert summary["counters"]["frames"] >= frames
    assert summary["counters"]["agent_steps"] * max(skip, 1) >= summary["counters"]["frames"] - 2000  # resets
    model, loaded, record = load_agent_from_checkpoint(run_dir / "checkpoints" / "final.pt")
    assert loaded.agent.agent == agent and (model.stm is not None) == (agent == "stm")
    assert record["counters"]["frames"] == summary["counters"]["frames"]
    assert record["optimizer"]["state"], "the checkpoint carries the optimizer's moments"


def test_resume_continues_the_counters(tmp_path, games_of, summary_of):
    run_dir = tmp_path / "run"
    assert cli_main(["train", "--agent", "lstm", "--frame-skip", "32", "--frames", "6000",
                     "--run-dir", str(run_dir), *FAST]) == 0
    first = summary_of(run_dir)["counters"]
    games_before = games_of(run_dir)
    with open(run_dir / "games.jsonl", "a") as f:  # as if the run had gone on past its checkpoint, then died
        f.write(json.dumps({**games_before[-1], "game": len(games_before) + 1}) + "\n")
    assert cli_main(["train", "--resume", str(run_dir), "--frames", "14000", "--no-progress"]) == 0
    second = summary_of(run_dir)["counters"]
    assert second["segments"] == 2
    assert second["frames"] >= 14000 > first["frames"]
    assert second["updates"] > first["updates"] and second["agent_steps"] > first["agent_steps"]
    assert second["wall_time"] > first["wall_time"]
    games = games_of(run_dir)
    assert [g["game"] for g in games] == list(range(1, len(games) + 1)), "game indices continue"
    assert games[:len(games_before)] == games_before, "games after the checkpoint were dropped, the rest kept"
    assert len(games) > len(games_before)
    # resuming a run whose budget is spent says so
    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 2


@pytest.mark.parametrize("agent", ["lstm", "stm"])
def test_a_one_worker_run_is_reproduced_by_its_seed(tmp_path, agent, tiny_train):
    """The seed fixes everything a one-worker run draws: the initial weights, the games and the sampled actions
    (with several workers, Hogwild's interleaving of updates is the only freedom left); another seed starts
    from other weights."""
    flags = [*tiny_train, "--agent", agent, "--envs-per-worker", "2", "--frames", "4000"]

    def final_weights(name: str, seed: int) -> dict:
        assert cli_main(["train", *flags, "--seed", str(seed), "--run-dir", str(tmp_path / name)]) == 0
        return torch.load(tmp_path / name / "checkpoints" / "final.pt", weights_only=False)["model"]

    first, again, other = final_weights("a", 0), final_weights("b", 0), final_weights("c", 1)
    assert all(torch.equal(first[key], again[key]) for key in first), "the same seed gave other weights"
    assert not torch.equal(first["critic.weight"], other["critic.weight"])


def test_the_initial_weights_are_the_seeds_and_leave_the_global_rng_alone(finished_run):
    from stm_rl.a3c.checkpoint import load_training_checkpoint
    from stm_rl.a3c.trainer import Trainer
    config = load_training_checkpoint(finished_run / "checkpoints" / "final.pt")["config"]
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = Trainer(config).shared_model.state_dict()
    assert torch.equal(torch.rand(3), expected_draw), "building the trainer drew from the global generator"
    second = Trainer(config).shared_model.state_dict()
    reseeded = Trainer(dataclasses.replace(config, run=dataclasses.replace(config.run, seed=config.run.seed + 1)))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["actor.weight"], reseeded.shared_model.state_dict()["actor.weight"])


def test_an_agent_step_budget_ends_the_run_and_a_larger_one_resumes_it(tmp_path, summary_of, capsys):
    """--agent-steps alone replaces the frame budget: at skip 32 the run ends after its steps, not after the
    default 20M frames; --agent-steps on --resume raises it, and the counters go on."""
    run_dir = tmp_path / "run"
    assert cli_main(["train", "--agent", "lstm", "--frame-skip", "32", "--agent-steps", "300",
                     "--final-eval-games", "2", "--run-dir", str(run_dir), *FAST]) == 0
    first = summary_of(run_dir)["counters"]
    # two workers x one env: each update is 20 steps, and a worker finishing its update may pass the budget
    assert 300 <= first["agent_steps"] < 300 + 2 * 20
    config = json.loads((run_dir / "config.json").read_text())["config"]["run"]
    assert (config["frames"], config["agent_steps"]) == (0, 300)
    assert "budget 300 agent steps" in capsys.readouterr().out
    # the completed run played its greedy games with its final weights, as `stm-rl evaluate --checkpoint final`
    report = json.loads((run_dir / "eval-final-skip32.json").read_text())
    assert report["greedy"] and report["checkpoint_name"] == "final" and len(report["scores"]) == 2
    assert report["trained_frames"] == first["frames"] and all(-21 <= score <= 21 for score in report["scores"])
    assert cli_main(["train", "--resume", str(run_dir), "--agent-steps", "600", "--no-progress"]) == 0
    second = summary_of(run_dir)["counters"]
    assert 600 <= second["agent_steps"] < 600 + 2 * 20 and second["segments"] == 2
    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    assert "already used its budget of 600 agent steps" in capsys.readouterr().err


def test_the_first_budget_reached_ends_a_run():
    run = RunConfig(frames=1000, agent_steps=100)
    assert not run.budget_reached(999, 99)
    assert run.budget_reached(1000, 10) and run.budget_reached(10, 100)
    assert RunConfig(frames=0, agent_steps=100).budget_used(10**9, 50) == 0.5, "frames=0: no frame budget"
    assert RunConfig(frames=1000).budget_used(500, 10**9) == 0.5, "agent_steps=0: no step budget"
    with pytest.raises(ValueError, match="frames must be > 0 when there is no --agent-steps budget"):
        RunConfig(frames=0)


# ---------------------------------------------------------------- it learns
@pytest.mark.parametrize("agent", ["lstm", "stm"])
def test_a3c_learns_a_memory_task(tmp_path, agent, capfd, games_of, summary_of):
    """Cue-memory: remember a cue over 2 blank frames. Without memory the mean score is 0, perfect is +1.

    Also the progress a user follows without a terminal: plain progress lines (interval shortened here)
    and the milestone of the 100-game average reaching 0, announced, and recorded in summary.json."""
    run_dir = tmp_path / "run"
    code = cli_main(["train", *FAST, "--agent", agent, "--game", "cue-memory", "--frames", "9000", "--lr", "1e-3",
                     "--envs-per-worker", "4", "--progress-interval", "1", "--run-dir", str(run_dir)])
    assert code == 0
    games = games_of(run_dir)
    scores = np.array([g["score"] for g in games])
    assert len(scores) >= 2500
    assert abs(scores[:300].mean()) < 0.35, "starts near chance"
    assert scores[-300:].mean() > 0.6, f"{agent} did not learn: last 300 games average {scores[-300:].mean():.2f}"
    err = capfd.readouterr().err
    assert err.count("progress: ") >= 2 and "frames/s | ETA" in err and "avg100" in err
    milestone = summary_of(run_dir)["milestones"]["+0"]
    # Cue-memory scores are whole numbers: compare window sums exactly (no floating-point ties at 0).
    window_sums = np.convolve(scores.round().astype(np.int64), np.ones(100, dtype=np.int64), mode="valid")
    first = int(np.nonzero(window_sums >= 0)[0][0]) + 100  # game 100 onwards
    assert milestone["games"] == first and milestone["frames"] == games[first - 1]["frames"]
    assert "milestone: the 100-game average reached +0" in err and f"{first} games" in err
    assert summary_of(run_dir)["milestones"]["-15"]["games"] == 100, "scores of -1..1 pass -15 at the first full window"


# ---------------------------------------------------------------- pieces of the algorithm
def test_advantages_and_returns_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    last_value = torch.tensor([10.0])
    dones = torch.tensor([[False, True, False]])  # the game ends at step 1; step 2 starts a new one
    gamma, lam = 0.9, 0.5
    adv, ret = advantages_and_returns(rewards, values, last_value, dones, gamma, lam)
    d2 = 2.0 + gamma * 10.0 - 0.1
    d1 = 0.0 - 0.2  # terminal: no bootstrap from the next game
    d0 = 1.0 + gamma * 0.2 - 0.5
    torch.testing.assert_close(adv, torch.tensor([[d0 + gamma * lam * d1, d1, d2]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0 + gamma * 0.0, 0.0, 2.0 + gamma * 10.0]]))


def _step_shared_adam(optimizer: SharedAdam, model: torch.nn.Linear, seed: int) -> None:
    torch.manual_seed(seed)
    model.weight.grad = torch.randn_like(model.weight)
    model.bias.grad = torch.randn_like(model.bias)
    optimizer.step()


def test_shared_adam_is_shared_between_processes():
    model = torch.nn.Linear(4, 3)
    model.share_memory()
    optimizer = SharedAdam(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    ctx = mp.get_context("spawn")
    for seed in (1, 2):
        process = ctx.Process(target=_step_shared_adam, args=(optimizer, model, seed))
        process.start()
        process.join(timeout=60)
        assert process.exitcode == 0
    state = optimizer.state[model.weight]
    assert state["step"].item() == 2, "both processes stepped the same shared step counter"
    assert state["exp_avg"].abs().sum() > 0 and state["max_exp_avg_sq"].abs().sum() > 0
    assert not torch.equal(model.weight, before), "the parameters in shared memory moved"


def test_nan_loss_stops_the_worker_without_touching_the_shared_model(monkeypatch):
    config = TrainConfig.from_dict(json.loads(json.dumps(_config_dict(frames=10_000))))
    from agents import build_agent
    shared = build_agent(config.agent, 6)
    shared.share_memory()
    optimizer = SharedAdam(shared.parameters())
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    events, stop = queue.Queue(), threading.Event()
    ctx = WorkerContext(config, shared, optimizer, torch.zeros(1, 3, dtype=torch.int64), 0, 0, stop, events)

    def nan_advantages(rewards, *args):
        return torch.full_like(rewards, float("nan")), torch.zeros_like(rewards)

    monkeypatch.setattr("stm_rl.a3c.worker.advantages_and_returns", nan_advantages)
    train_worker(0, ctx)
    messages = [events.get_nowait() for _ in range(events.qsize())]
    assert any(isinstance(m, NonFinite) and "non-finite loss" in m.detail for m in messages)
    assert stop.is_set()
    for key, value in shared.state_dict().items():
        torch.testing.assert_close(value, before[key])


class _GradientSpy:
    """An optimizer that records the gradients a worker hands to the shared model instead of stepping."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.grads = model, []

    def step(self) -> None:
        self.grads.append([p.grad.clone() for p in self.model.parameters()])


@pytest.mark.parametrize("agent", ["stm", "lstm"])
def test_the_acting_graph_and_the_replay_give_the_same_update(agent):
    """gradient_pass=acting back-propagates through the acting pass, replay through a batched replay of the
    rollout: from the same weights and seed, one update plays the same games and hands the shared model the
    same gradients (episode ends inside the rollout included: cue-memory games last 4 steps)."""
    data = _config_dict(frames=1)  # one update, then the budget is spent
    data["agent"]["agent"] = agent
    data["env"]["game"] = "cue-memory"
    data["a3c"].update(envs_per_worker=3, rollout_steps=10)
    torch.manual_seed(0)
    from agents import build_agent
    shared = build_agent(TrainConfig.from_dict(data).agent, 6)  # cue-memory keeps Pong's action set
    grads = {}
    for gradient_pass in ("acting", "replay"):
        data["a3c"]["gradient_pass"] = gradient_pass
        config = TrainConfig.from_dict(json.loads(json.dumps(data)))
        assert config.a3c.keeps_acting_graph(config.agent) == (gradient_pass == "acting")
        spy = _GradientSpy(shared)
        ctx = WorkerContext(config, shared, spy, torch.zeros(1, 3, dtype=torch.int64), 0, 0, threading.Event(),
                            queue.Queue())
        train_worker(0, ctx)
        assert len(spy.grads) == 1 and int(ctx.counters[0, 2]) == 1, "exactly one update"
        grads[gradient_pass] = spy.grads[0]
    names = [name for name, _ in shared.named_parameters()]
    assert any(g.abs().sum() > 0 for g in grads["acting"])
    for name, acting, replay in zip(names, grads["acting"], grads["replay"]):
        torch.testing.assert_close(acting, replay, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_auto_gradient_pass_keeps_the_acting_graph_where_it_measured_faster():
    config = TrainConfig()
    assert config.a3c.keeps_acting_graph(config.agent), "the default STM agent with 16 games per worker"
    lstm = dataclasses.replace(config.agent, agent="lstm")
    assert not config.a3c.keeps_acting_graph(lstm)
    assert config.a3c.keeps_acting_graph(dataclasses.replace(lstm, encoder="paper"))
    one_game = dataclasses.replace(config.a3c, envs_per_worker=1)
    assert not one_game.keeps_acting_graph(config.agent), "at batch 1 the replay is faster"
    with pytest.raises(ValueError, match="gradient_pass"):
        dataclasses.replace(config.a3c, gradient_pass="both")


def _config_dict(frames: int) -> dict:
    from stm_rl.run_dir import to_jsonable

    config = TrainConfig()
    data = to_jsonable(config)
    data["agent"].update(agent="lstm", encoder="small")
    data["env"].update(frame_skip=4, obs_size=42)
    data["run"].update(frames=frames, workers=1)
    return data


# ---------------------------------------------------------------- faults
def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    pids = []
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(pid))
    return pids


def _start_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stm_rl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_updates(run_dir: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until the run has written its first 'latest' checkpoint (workers are running by then)."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoints" / "latest.pt").exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.5)


def _start_long_run(run_dir: Path) -> tuple[subprocess.Popen, list[int]]:
    """A run with a large budget, once its workers are training; returns the trainer and the worker pids."""
    process = _start_cli(["train", "--agent", "lstm", "--frames", "100M", "--checkpoint-interval", "1",
                          "--run-dir", str(run_dir), *FAST])
    _wait_for_updates(run_dir, process)
    deadline = time.monotonic() + 120.0  # the first checkpoint can precede the workers' start on a busy machine
    while len(workers := _worker_pids(process.pid)) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.5)
    return process, workers


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killed_worker_ends_the_run_cleanly(tmp_path, summary_of):
    run_dir = tmp_path / "run"
    process, workers = _start_long_run(run_dir)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 1
    assert "died (killed by SIGKILL)" in output
    assert summary_of(run_dir)["status"] == "failed"
    for pid in workers[1:]:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], \
            "no orphan worker is left running"
    load_agent_from_checkpoint(run_dir / "checkpoints" / "latest.pt")  # still a good checkpoint


def test_ctrl_c_stops_cleanly_with_a_final_checkpoint(tmp_path, summary_of):
    run_dir = tmp_path / "run"
    process, workers = _start_long_run(run_dir)
    second = _start_cli(["train", "--resume", str(run_dir), "--no-progress"])  # a second trainer of the run
    refusal, _ = second.communicate(timeout=90)
    assert second.returncode == 2 and f"is in use: process {process.pid}" in refusal and "Traceback" not in refusal
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert f"continue it with `stm-rl train --resume {run_dir}`" in output or "MAKELEVEL" in os.environ
    assert summary_of(run_dir)["status"] == "interrupted"
    assert (run_dir / "checkpoints" / "final.pt").exists()
    time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "workers are gone"


def test_corrupt_checkpoint_gives_a_clear_error_on_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"\x80\x02not really a checkpoint")
    assert cli_main(["train", "--resume", str(run_dir)]) == 2
    assert "corrupt or not a checkpoint" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no run directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--agent", "gru"], "invalid choice: 'gru'"),
    (["--frame-skip", "-1"], "--frame-skip must be an integer >= 0"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--frames", "lots"], "not a count: 'lots'"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--agent-steps", "-5"], "--agent-steps must be >= 0"),
    (["--frames", "0"], "--frames must be > 0 when there is no --agent-steps budget"),
])
def test_bad_flags_give_clear_errors(tmp_path, capsys, argv, message):
    try:
        code = cli_main(["train", *argv, "--run-dir", str(tmp_path / "run")])
    except SystemExit as exit_:  # argparse rejects choices and types itself
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_changing_settings_on_resume_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli_main(["train", "--agent", "lstm", "--frame-skip", "32", "--frames", "2000",
                     "--run-dir", str(run_dir), *FAST]) == 0
    assert cli_main(["train", "--resume", str(run_dir), "--agent", "stm"]) == 2
    assert "cannot change --agent when resuming" in capsys.readouterr().err
    assert cli_main(["train", "--agent", "lstm", "--run-dir", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err



def test_evaluator_plays_greedy_games_at_fixed_update_counts(tmp_path):
    run_dir = tmp_path / "run"
    assert cli_main(["train", "--agent", "lstm", "--encoder", "small", "--game", "cue-memory", "--workers", "1",
                     "--frames", "1200", "--envs-per-worker", "1", "--eval-every-updates", "15", "--eval-games", "4",
                     "--run-dir", str(run_dir), "--no-progress"]) == 0
    evaluations = list(read_jsonl(run_dir / "evaluations.jsonl"))
    assert evaluations, "no evaluation was recorded"
    assert all(e["updates"] >= 15 * (i + 1) for i, e in enumerate(evaluations))  # one per multiple of 15, in order
    assert [e["updates"] // 15 for e in evaluations] == sorted({e["updates"] // 15 for e in evaluations})
    assert all(len(e["scores"]) == 4 and set(e["scores"]) <= {-1.0, 1.0} for e in evaluations)


def test_copy_weights_syncs_parameters_and_buffers():
    from agents import AgentConfig, build_agent
    from stm_rl.a3c.worker import copy_weights

    source, target = (build_agent(AgentConfig(agent="stm", encoder="small"), 6) for _ in range(2))
    copy_weights(source, target)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_worker_context_knows_when_its_trainer_is_gone():
    """Workers and the evaluator stop when the process that made their context is no longer their parent
    (also when the trainer died before they first looked); a loop run in the trainer's own process goes on."""
    from stm_rl.a3c.worker import trainer_alive

    config = TrainConfig.from_dict(json.loads(json.dumps(_config_dict(frames=1000))))
    args = (config, None, None, torch.zeros(1, 3, dtype=torch.int64), 0, 0, threading.Event(), queue.Queue())
    assert trainer_alive(WorkerContext(*args))  # made here, checked here
    assert trainer_alive(WorkerContext(*args, trainer_pid=os.getppid()))  # checked in a child of the trainer
    assert not trainer_alive(WorkerContext(*args, trainer_pid=2**22 + 1))  # the trainer is gone


def test_a_preset_is_the_base_that_given_flags_override(tmp_path, capsys):
    from stm_rl.a3c.train_command import config_from_args
    from stm_rl.cli import build_parser

    parser = build_parser()
    paper = config_from_args(parser.parse_args(["train", "--preset", "paper"]))
    assert (paper.agent.encoder, paper.env.obs_size, paper.a3c.lr, paper.a3c.adam_eps, paper.a3c.envs_per_worker) \
        == ("paper", 80, 1e-4, 1e-3, 1)
    assert paper.run.run_dir.name == "stm-paper-skip4-seed0"
    mixed = config_from_args(parser.parse_args(["train", "--preset", "paper", "--lr", "3e-4", "--encoder", "small"]))
    assert (mixed.a3c.lr, mixed.agent.encoder, mixed.env.obs_size, mixed.a3c.envs_per_worker) == (3e-4, "small", 42, 1)
    assert config_from_args(parser.parse_args(["train"])) == config_from_args(parser.parse_args(["train", "--preset", "cpu"]))
    # A resumed run keeps its settings: a preset there is refused like any other setting.
    assert cli_main(["train", "--resume", str(tmp_path), "--preset", "paper"]) == 2
    assert "--preset" in capsys.readouterr().err


def test_the_default_run_is_the_configuration_measured_to_learn_within_the_hour():
    """README's `make train` promise (results/pong/stm-default-acting-skip4): STM agent, small encoder, 16 games per
    worker, lr 5e-4, Adam eps 1e-5, fp32, frame skip 4, gradients from the acting pass, written to
    runs/stm-small-skip4-seed0; every agent, environment and A3C setting equal to the measured run's."""
    from stm_rl.a3c.train_command import config_from_args, default_run_dir
    from stm_rl.cli import build_parser

    config = config_from_args(build_parser().parse_args(["train"]))
    assert (config.agent.agent, config.agent.encoder, config.agent.precision, config.env.frame_skip) \
        == ("stm", "small", "fp32", 4)
    assert (config.a3c.envs_per_worker, config.a3c.lr, config.a3c.adam_eps) == (16, 5e-4, 1e-5)
    assert default_run_dir(config.agent, config.env, config.run.seed).as_posix() == "runs/stm-small-skip4-seed0"
    assert config.a3c.keeps_acting_graph(config.agent)
    measured_file = Path(__file__).parents[1] / "results" / "pong" / "stm-default-acting-skip4" / "config.json"
    measured = TrainConfig.from_dict(json.loads(measured_file.read_text())["config"])
    assert (measured.agent, measured.env, measured.a3c) == (config.agent, config.env, config.a3c)
