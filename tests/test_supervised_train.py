"""Training loop and command line of ``python -m stm_rl.supervised``: every task with every model for a few
smoke iterations, learning on copy, checkpoints, resume, eval-only, Ctrl-C, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stm_rl.run_dir import load_checkpoint, read_jsonl
from stm_rl.supervised.__main__ import main
from stm_rl.supervised.config import resolve_config
from stm_rl.supervised.models import MODELS, build_model, model_options
from stm_rl.supervised.tasks import TASKS, make_task
from stm_rl.supervised.train import CHECKPOINT_KIND, TrainingInterrupted, train

from test_supervised_tasks import write_babi

torch.set_num_threads(1)


@pytest.fixture
def babi_dir(tmp_path):
    return str(write_babi(tmp_path / "babi"))


def smoke_task(name, babi_dir):
    config = resolve_config(name, "lstm", "smoke", task_options={"data_dir": babi_dir} if name == "babi" else {})
    return make_task(name, **config.task_options)


@pytest.mark.parametrize("task_name", list(TASKS))
def test_every_model_trains_on_every_task(task_name, babi_dir):
    task = smoke_task(task_name, babi_dir)
    rng = np.random.default_rng(0)
    for model_name in MODELS:
        torch.manual_seed(0)
        model = build_model(model_name, task, model_options(model_name, task_name, "smoke"))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            batch = task.sample(3, rng)
            outputs = model(batch.inputs)
            assert outputs.shape == (*batch.mask.shape, task.output_size)
            loss = task.loss(outputs, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert torch.isfinite(loss)
        values = task.summarize({k: t / c for k, (t, c) in task.metrics(outputs.detach(), batch).items() if c})
        assert task.main_metric in values


@pytest.mark.parametrize("model_name", ["stm", "lstm"])
def test_loss_goes_down_on_copy(model_name, fit_fixed_batch):
    task = make_task("copy", bits=4, max_length=3)
    torch.manual_seed(0)
    model = build_model(model_name, task, model_options(model_name, "copy", "smoke"))
    losses = fit_fixed_batch(model, task, task.sample(16, np.random.default_rng(0)), steps=40)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_train_writes_logs_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    config = resolve_config("copy", "stm", "smoke", run_dir=str(run_dir), iterations=4, eval_every=2)
    summary = train(config, progress=False)
    assert summary["iterations"] == 4 and "bit_error" in summary["test"]
    records = list(read_jsonl(run_dir / "evaluations.jsonl"))
    assert [(r["split"], r["iteration"]) for r in records] == [("valid", 2), ("valid", 4), ("test", 4)]
    latest = load_checkpoint(run_dir / "checkpoints" / "latest.pt", CHECKPOINT_KIND)
    assert latest["train_state"]["iteration"] == 4 and latest["config"]["task"] == "copy"
    assert {"model", "optimizer", "rng"} <= set(latest)
    assert (run_dir / "checkpoints" / "best.pt").exists() and any((run_dir / "tb").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["config"]["preset"] == "smoke"

    assert main(["--resume", str(run_dir), "--iterations", "6", "--no-progress"]) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt", CHECKPOINT_KIND)["train_state"]["iteration"] == 6
    assert main(["--eval-only", str(run_dir / "checkpoints" / "best.pt")]) == 0


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    whole = resolve_config("nth-farthest", "lstm", "smoke", run_dir=str(tmp_path / "a"), iterations=4, eval_every=2)
    train(whole, progress=False)
    half = resolve_config("nth-farthest", "lstm", "smoke", run_dir=str(tmp_path / "b"), iterations=2, eval_every=2)
    train(half, progress=False)
    assert main(["--resume", str(tmp_path / "b"), "--iterations", "4", "--no-progress"]) == 0
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt", CHECKPOINT_KIND)["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt", CHECKPOINT_KIND)["model"]
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_ctrl_c_saves_latest_checkpoint(tmp_path, monkeypatch):
    from stm_rl.supervised.tasks.copy import CopyTask

    calls = {"n": 0}
    original = CopyTask.sample

    def interrupted(self, batch_size, rng):
        calls["n"] += 1
        if calls["n"] == 4:  # the first call builds the validation set
            raise KeyboardInterrupt
        return original(self, batch_size, rng)

    monkeypatch.setattr(CopyTask, "sample", interrupted)
    config = resolve_config("copy", "lstm", "smoke", run_dir=str(tmp_path / "run"), iterations=10, eval_every=100)
    with pytest.raises(TrainingInterrupted):
        train(config, progress=False)
    latest = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", CHECKPOINT_KIND)
    assert latest["train_state"]["iteration"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["iterations"], summary["test"]) == ("interrupted", 2, None)
    monkeypatch.setattr(CopyTask, "sample", original)
    assert main(["--resume", str(tmp_path / "run"), "--eval-every", "4", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["iterations"]) == ("completed", 10)


def test_ctrl_c_during_the_final_test_leaves_only_the_test_to_resume(tmp_path, monkeypatch, capsys):
    from stm_rl.supervised.tasks.copy import CopyTask

    original = CopyTask.eval_batches

    def interrupted_at_the_test(self, split, *args, **kwargs):
        if split == "test":
            raise KeyboardInterrupt
        return original(self, split, *args, **kwargs)

    monkeypatch.setattr(CopyTask, "eval_batches", interrupted_at_the_test)
    run_dir = tmp_path / "run"
    config = resolve_config("copy", "lstm", "smoke", run_dir=str(run_dir), iterations=4, eval_every=2)
    with pytest.raises(TrainingInterrupted):
        train(config, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["iterations"], summary["test"]) == ("interrupted", 4, None)
    assert summary["message"].startswith("stopped during the final test after iteration 4")
    weights = load_checkpoint(run_dir / "checkpoints" / "latest.pt", CHECKPOINT_KIND)["model"]

    monkeypatch.setattr(CopyTask, "eval_batches", original)
    assert main(["--resume", str(run_dir), "--no-progress"]) == 0  # no larger --iterations needed: only the test
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["iterations"]) == ("completed", 4) and "bit_error" in summary["test"]
    assert summary["final_valid"] is not None  # the validation of iteration 4, from the log
    latest = load_checkpoint(run_dir / "checkpoints" / "latest.pt", CHECKPOINT_KIND)["model"]
    assert all(torch.equal(weights[k], latest[k]) for k in weights), "no training step was taken"
    logged = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert [(r["split"], r["iteration"]) for r in logged] == [("valid", 2), ("valid", 4), ("test", 4)]
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--no-progress"]) == 2  # now there is nothing left to do
    assert "already did 4 iterations; pass a larger --iterations" in capsys.readouterr().err


def test_a_resumed_runs_log_ends_with_exactly_one_test(tmp_path):
    run_dir = tmp_path / "run"
    train(resolve_config("copy", "lstm", "smoke", run_dir=str(run_dir), iterations=4, eval_every=2), progress=False)
    (run_dir / "summary.json").unlink()  # killed after logging its test, before writing the summary
    assert main(["--resume", str(run_dir), "--no-progress"]) == 0
    logged = list(read_jsonl(run_dir / "evaluations.jsonl"))
    assert [(r["split"], r["iteration"]) for r in logged] == [("valid", 2), ("valid", 4), ("test", 4)]
    assert main(["--resume", str(run_dir), "--iterations", "6", "--no-progress"]) == 0  # extended: a new test
    logged = list(read_jsonl(run_dir / "evaluations.jsonl"))
    assert [(r["split"], r["iteration"]) for r in logged] == [("valid", 2), ("valid", 4), ("valid", 6), ("test", 6)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"] == {k: v for k, v in logged[-1].items() if k not in ("iteration", "split", "elapsed_s")}


def test_babi_trains_from_a_fixture(tmp_path, babi_dir):
    args = ["--task", "babi", "--model", "stm", "--preset", "smoke", "--data-dir", babi_dir,
            "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0


@pytest.mark.parametrize("args, message", [
    (["--task", "nope", "--model", "stm"], "unknown task"),
    (["--task", "copy", "--model", "nope"], "unknown model"),
    (["--task", "copy", "--model", "stm", "--preset", "huge"], "unknown preset"),
    (["--task", "copy", "--model", "stm", "--iterations", "0"], "--iterations must be > 0"),
    (["--task", "copy", "--model", "stm", "--task-option", "bits=0"], "bits must be"),
    (["--task", "babi", "--model", "stm", "--data-dir", "/nonexistent/babi"], "--data-dir /nonexistent/babi: no such"),
    (["--task", "babi", "--model", "stm"], "bAbI needs --data-dir"),
    (["--task", "copy"], "--task and --model are required"),
    (["--eval-only", "/nonexistent/best.pt"], "no checkpoint file"),
    (["--task", "copy", "--model", "stm", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--task", "copy", "--model", "stm", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["--task", "copy", "--model", "stm", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["--task", "copy", "--model", "stm", "--seed", "-3"], "--seed must be >= 0, got -3"),
    (["--task", "copy", "--model", "stm", "--time-limit-minutes", "nan"], "--time-limit-minutes must be >= 0"),
    (["--task", "copy", "--model", "stm", "--task-option", "bitz=3"],
     "task copy has no option 'bitz'; its options: bits, min_length, max_length"),
    (["--task", "copy", "--model", "ntm", "--model-option", "slots=3"], "model ntm has no option 'slots'; its options: "
     "hidden_size, num_slots, slot_size, read_heads"),
    (["--task", "copy", "--model", "stm", "--model-option", "dd=3"], "model stm has no option 'dd'; its options: "),
    (["--task", "copy", "--model", "stm", "--task-option", "one_length_per_batch=3"],
     "task copy: one_length_per_batch must be True or False, got 3"),
    (["--task", "copy", "--model", "stm", "--rmsprop-alpha", "1"], "--rmsprop-alpha must be in [0, 1), got 1.0"),
    (["--task", "copy", "--model", "stm", "--model-option", "readout='tpr'"],
     "model stm: readout must be head or unbind, got 'tpr'"),
])
def test_cli_errors_are_one_line(args, message, capsys, tmp_path):
    assert main([*args, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing half-made


def test_cli_unwritable_run_dir_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["--task", "copy", "--model", "lstm", "--preset", "smoke", "--run-dir", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stm-rl supervised: error: --run-dir {blocker / 'run'}: cannot be created")
    assert "Traceback" not in err


def test_threads_are_saved_and_kept_on_resume(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    assert main(["--task", "copy", "--model", "lstm", "--preset", "smoke", "--threads", "1", "--run-dir", run_dir,
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["run"]["threads"] == 1
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["--resume", run_dir, "--iterations", "5", "--no-progress"]) == 0
    assert calls == [1]


def test_sigterm_stops_with_a_checkpoint_and_exit_130(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "stm_rl.supervised", "--task", "copy", "--model", "lstm", "--preset", "smoke",
         "--iterations", "100000000", "--eval-every", "50", "--threads", "1", "--no-progress", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 600  # generous: on a loaded machine the start-up alone can take minutes
    while not (run_dir / "checkpoints" / "latest.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run_dir / "checkpoints" / "latest.pt").exists(), "no first checkpoint within 600 s"
    process.terminate()
    _, err = process.communicate(timeout=300)  # stopping saves a checkpoint: slow on a loaded machine
    assert process.returncode == 130, err
    assert "latest checkpoint saved" in err and "Traceback" not in err
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt", CHECKPOINT_KIND)["train_state"]["iteration"] >= 50


def test_cli_malformed_babi_file_names_file_and_line(tmp_path, capsys):
    folder = write_babi(tmp_path / "babi", tasks=(1,))
    (folder / "qa1_valid.txt").write_text("1 Mary moved.\nnot a line\n")
    assert main(["--task", "babi", "--model", "lstm", "--preset", "smoke", "--data-dir", str(folder),
                 "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "qa1_valid.txt, line 2" in err and len(err.strip().splitlines()) == 1


def test_cli_resume_rejects_a_different_task_and_existing_run(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["--task", "copy", "--model", "lstm", "--preset", "smoke", "--run-dir", run_dir, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["--resume", run_dir, "--task", "rar", "--iterations", "9"]) == 2
    assert "cannot change --task when resuming" in capsys.readouterr().err
    assert main(["--task", "copy", "--model", "lstm", "--preset", "smoke", "--run-dir", run_dir]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--resume", run_dir]) == 2
    assert "larger --iterations" in capsys.readouterr().err


def test_cli_subprocess_list_and_exit_code():
    listed = subprocess.run([sys.executable, "-m", "stm_rl.supervised", "--list"], capture_output=True, text=True)
    assert listed.returncode == 0 and "associative-retrieval-30" in listed.stdout and "attn-lstm" in listed.stdout
    bad = subprocess.run([sys.executable, "-m", "stm_rl.supervised", "--task", "x", "--model", "stm"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("stm-rl supervised: error: unknown task")
    assert "Traceback" not in bad.stderr
