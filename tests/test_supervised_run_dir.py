"""The supervised side on the shared experiment layer: ``stm-rl supervised`` next to ``train``, the run lock,
summary.json with a RunStatus, the resume rule shared with RL (``config_cli.differing_settings``), exit codes
(a NaN loss fails with 1), and run directories written before the config was split into groups."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from stm_rl.cli import main as cli_main
from stm_rl.conventions import RunStatus
from stm_rl.logger import METRICS_FILE, read_metrics
from stm_rl.run_dir import RunDir, load_checkpoint, read_jsonl, save_checkpoint
from stm_rl.supervised.__main__ import main
from stm_rl.supervised.config import SupervisedConfig
from stm_rl.supervised.tasks.copy import CopyTask
from stm_rl.supervised.train import CHECKPOINT_KIND

torch.set_num_threads(1)
SMOKE = ["--task", "copy", "--model", "lstm", "--preset", "smoke", "--no-progress"]


def summary_of(run_dir):
    return json.loads(RunDir(run_dir).summary.read_text())


@pytest.fixture
def smoke_run(tmp_path, capsys):
    """A completed smoke run of 4 iterations (validated at 2 and 4)."""
    run_dir = tmp_path / "run"
    assert main([*SMOKE, "--iterations", "4", "--eval-every", "2", "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    return run_dir


def test_stm_rl_supervised_is_a_command_with_the_same_flags(tmp_path, capsys):
    assert cli_main(["supervised", "--list"]) == 0
    assert "options: hidden_size, num_slots, slot_size, read_heads" in capsys.readouterr().out  # the NTM's
    assert cli_main(["supervised", *SMOKE, "--run-dir", str(tmp_path / "run")]) == 0
    assert summary_of(tmp_path / "run")["status"] == "completed"
    capsys.readouterr()
    assert cli_main(["supervised", "--task", "nope", "--model", "stm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stm-rl supervised: error: unknown task 'nope'") and len(err.strip().splitlines()) == 1


def test_summary_records_status_best_final_and_test_metrics(smoke_run):
    summary = summary_of(smoke_run)
    valid = [r for r in read_jsonl(RunDir(smoke_run).evaluations) if r["split"] == "valid"]
    assert summary["status"] == RunStatus.COMPLETED and summary["iterations"] == 4
    assert summary["main_metric"] == "bit_error"
    assert summary["best_valid"] == min(r["bit_error"] for r in valid)
    assert summary["final_valid"]["bit_error"] == valid[-1]["bit_error"] and "bit_error" in summary["test"]


def test_scalars_go_through_the_shared_logger_and_a_resume_drops_later_records(smoke_run):
    records = read_metrics(smoke_run / METRICS_FILE)
    assert [r["step"] for r in records if "valid/bit_error" in r] == [2, 4]
    assert [r["step"] for r in records if "train/loss" in r] == [1] and any((smoke_run / "tb").iterdir())
    assert [r["step"] for r in records if "test/bit_error" in r] == [4]
    latest = RunDir(smoke_run).checkpoint("latest")
    record = load_checkpoint(latest, CHECKPOINT_KIND)
    record["train_state"]["iteration"] = 2  # as if the process had been killed before saving iteration 4
    save_checkpoint(latest, CHECKPOINT_KIND, {k: v for k, v in record.items() if k not in ("format", "version", "kind")})
    assert main(["--resume", str(smoke_run), "--iterations", "4", "--no-progress"]) == 0
    steps = [r["step"] for r in read_metrics(smoke_run / METRICS_FILE) if "valid/bit_error" in r]
    assert steps == [2, 4]
    assert [r["iteration"] for r in read_jsonl(RunDir(smoke_run).evaluations)] == [2, 4, 4]


def test_non_finite_loss_fails_with_exit_1_and_keeps_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = CopyTask.loss

    def poisoned(self, outputs, batch):
        calls["n"] += 1
        loss = original(self, outputs, batch)
        return loss * float("nan") if calls["n"] > 2 and self is not None and torch.is_grad_enabled() else loss

    monkeypatch.setattr(CopyTask, "loss", poisoned)
    run_dir = tmp_path / "run"
    assert main([*SMOKE, "--iterations", "10", "--eval-every", "2", "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    validation_line, error_line = err.strip().splitlines()  # the validation at iteration 2, then one error line
    assert validation_line.startswith("iteration 2: valid bit_error")
    assert error_line.startswith("stm-rl supervised: error: the loss became nan at iteration 3")
    assert summary_of(run_dir)["status"] == "failed" and "nan" in summary_of(run_dir)["message"]
    latest = load_checkpoint(RunDir(run_dir).checkpoint("latest"), CHECKPOINT_KIND)
    assert latest["train_state"]["iteration"] == 2
    assert all(bool(torch.isfinite(t).all()) for t in latest["model"].values())


def test_a_second_process_on_the_run_dir_is_refused(smoke_run, tmp_path, capsys):
    with RunDir(smoke_run).lock():
        assert main(["--resume", str(smoke_run), "--iterations", "6"]) == 2
        err = capsys.readouterr().err
        assert "is in use" in err and len(err.strip().splitlines()) == 1
        fresh = tmp_path / "fresh"
        with RunDir(fresh).lock():
            assert main([*SMOKE, "--run-dir", str(fresh)]) == 2
            assert "is in use" in capsys.readouterr().err
    assert load_checkpoint(RunDir(smoke_run).checkpoint("latest"), CHECKPOINT_KIND)["train_state"]["iteration"] == 4


@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.5"], "--lr"),
    (["--model-option", "hidden_size=7"], "--model-option hidden_size"),
    (["--task-option", "bits=3"], "--task-option bits"),
    (["--batch-size", "5", "--seed", "3"], "--batch-size, --seed"),
    (["--model", "stm"], "--model"),
])
def test_resume_refuses_settings_outside_the_list_naming_the_flags(smoke_run, flags, named, capsys):
    assert main(["--resume", str(smoke_run), "--iterations", "6", *flags]) == 2
    err = capsys.readouterr().err
    assert f"cannot change {named}" in err and "when resuming" in err and len(err.strip().splitlines()) == 1
    assert load_checkpoint(RunDir(smoke_run).checkpoint("latest"), CHECKPOINT_KIND)["train_state"]["iteration"] == 4


def test_resume_takes_the_listed_settings_and_equal_values(smoke_run):
    saved = json.loads(RunDir(smoke_run).config.read_text())["config"]
    lr = str(saved["optimization"]["lr"])
    assert main(["--resume", str(smoke_run), "--iterations", "7", "--eval-every", "3", "--threads", "1",
                 "--lr", lr, "--task", "copy", "--no-progress"]) == 0
    config = json.loads(RunDir(smoke_run).config.read_text())["config"]
    assert config["training"]["iterations"] == 7 and config["training"]["eval_every"] == 3
    assert config["run"]["threads"] == 1
    valid = [r["iteration"] for r in read_jsonl(RunDir(smoke_run).evaluations) if r["split"] == "valid"]
    assert valid == [2, 4, 6, 7]


def flat_config(config: dict) -> dict:
    """The flat form of the config that runs wrote before the config was split into groups."""
    optimizer = dict(config["optimization"])
    optimizer["name"] = optimizer.pop("optimizer")
    run = {key: value for key, value in config["run"].items() if key != "progress"}
    run["threads"] = run["threads"] or 0
    return {"task": config["task"], "model": config["model"], "preset": config["preset"], **config["training"],
            "optimizer": optimizer, "task_options": config["task_options"], "model_options": config["model_options"],
            **run}


def test_a_run_saved_with_the_flat_config_resumes(smoke_run, capsys):
    layout = RunDir(smoke_run)
    for name in ("latest", "best"):
        record = load_checkpoint(layout.checkpoint(name), CHECKPOINT_KIND)
        record["config"] = flat_config(record["config"])
        save_checkpoint(layout.checkpoint(name), CHECKPOINT_KIND,
                        {k: v for k, v in record.items() if k not in ("format", "version", "kind")})
    assert main(["--eval-only", str(layout.checkpoint("best"))]) == 0
    assert main(["--resume", str(smoke_run), "--iterations", "6", "--no-progress"]) == 0
    resumed = load_checkpoint(layout.checkpoint("latest"), CHECKPOINT_KIND)
    assert resumed["train_state"]["iteration"] == 6 and "training" in resumed["config"]
    nested = SupervisedConfig.from_dict(resumed["config"])
    flat = SupervisedConfig.from_dict(flat_config(resumed["config"]))  # flat configs had no progress setting
    assert flat == dataclasses.replace(nested, run=dataclasses.replace(nested.run, progress=True))


def _stop_or_dump(process: subprocess.Popen, stderr_path, timeout: float) -> int:
    """The exit code of ``process`` within ``timeout``; past it, the test fails with the stacks of all its threads
    (the child runs with ``PYTHONFAULTHANDLER``, which prints them on SIGABRT) and its stderr."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(timeout=30)
        pytest.fail(f"the run did not stop within {timeout:.0f} s; its stderr and stacks:\n{stderr_path.read_text()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_background_run_stops_on_ctrl_c_or_sigterm_with_its_checkpoint(tmp_path, signum):
    """A background job of a script starts with SIGINT ignored, and Python then sets no Ctrl-C handler of its own:
    the run still stops on SIGINT (as on SIGTERM) with its latest checkpoint and the interrupted exit status."""
    run_dir, stderr_path = tmp_path / "run", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "stm_rl.supervised", "--task", "copy", "--model", "lstm", "--preset", "smoke",
               "--iterations", "1000000", "--eval-every", "1", "--no-progress", "--run-dir", str(run_dir)]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the run
    try:
        with open(stderr_path, "w") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                       env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "evaluations.jsonl").exists() or not (run_dir / "evaluations.jsonl").read_text():
            assert time.monotonic() < deadline and process.poll() is None, "the run never validated"
            time.sleep(0.2)
        process.send_signal(signum)
        assert _stop_or_dump(process, stderr_path, timeout=60) == 130, stderr_path.read_text()
    finally:
        process.kill()
        process.wait()
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and (run_dir / "checkpoints" / "latest.pt").exists()
    assert f"{signal.Signals(signum).name}: stopping after the current iteration" in stderr_path.read_text()


def test_a_stop_signal_during_logging_lets_the_logging_finish_and_stops_after_that_iteration(tmp_path):
    """The signal arrives while the run flushes its metrics (TensorBoard's writer queue and its lock in use): the
    flush completes, and the run stops at the start of the next iteration with that iteration's checkpoint.
    A signal raised as an exception inside the flush could leave the queue or the lock half-updated, and the
    run's cleanup then waited on them forever (once, a CI run's SIGTERM hung here)."""
    run_dir, stderr_path = tmp_path / "run", tmp_path / "stderr.txt"
    script = ("import os, signal, sys\n"
              "from stm_rl.logger import MetricLogger\n"
              "from stm_rl.supervised.__main__ import main\n"
              "flush = MetricLogger.flush\n"
              "flushes = []\n"
              "def signal_inside_flush(self):\n"
              "    flushes.append(1)\n"
              "    if len(flushes) == 3:\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "        sum(range(10**6))  # Python code after the signal: an exception raised by it would land here\n"
              f"        open({str(tmp_path / 'flush-finished')!r}, 'w').close()\n"
              "    flush(self)\n"
              "MetricLogger.flush = signal_inside_flush\n"
              f"sys.exit(main([*{SMOKE!r}, '--iterations', '1000', '--eval-every', '1', '--run-dir', {str(run_dir)!r}]))\n")
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        assert _stop_or_dump(process, stderr_path, timeout=120) == 130, stderr_path.read_text()
    finally:
        process.kill()
        process.wait()
    assert (tmp_path / "flush-finished").exists(), "the stop signal was raised inside the flush"
    assert "Traceback" not in stderr_path.read_text()
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and summary["iterations"] == 3, summary
    assert load_checkpoint(RunDir(run_dir).checkpoint("latest"), CHECKPOINT_KIND)["train_state"]["iteration"] == 3
    assert [logged["iteration"] for logged in read_jsonl(RunDir(run_dir).evaluations)] == [1, 2, 3]
