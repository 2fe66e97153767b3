"""The fault table of issue 14, one test per row that can be automated: what a run directory survives.

Each test damages a copy of a finished tiny run (or starts a tiny one) the way the fault would, then checks
that the user gets a one-line message, the exit code of the convention, and nothing good is lost.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stm_rl.a3c.checkpoint import NonFiniteWeightsError, load_training_checkpoint, save_training_checkpoint
from stm_rl.a3c.messages import ProcessFailed
from stm_rl.a3c.scores import Counters, Milestones, ScoreTracker
from stm_rl.a3c.progress import StallWatch
from stm_rl.a3c.trainer import RunStatus, Trainer
from stm_rl.cli import main as cli_main
from stm_rl.run_dir import RunDir, read_jsonl, repair_jsonl


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- one trainer per run directory
def test_a_second_trainer_of_a_run_directory_is_refused(tiny_train, finished_run, capsys, games_of):
    games = games_of(finished_run)
    with RunDir(finished_run).lock():  # as if a trainer were running in it
        assert cli_main(["train", "--resume", str(finished_run), "--frames", "9000"]) == 2
        assert f"is in use: process {os.getpid()}" in _one_line_error(capsys.readouterr().err)
        assert cli_main(["train", *tiny_train, "--run-dir", str(finished_run)]) == 2
        assert "is in use" in _one_line_error(capsys.readouterr().err)
    assert games_of(finished_run) == games, "the refused trainers touched nothing"


def test_the_lock_of_a_killed_trainer_is_taken_over(finished_run, games_of):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from stm_rl.run_dir import RunDir\n"
                               f"with RunDir({str(finished_run)!r}).lock():\n print('locked', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert RunDir(finished_run).lock_holder().endswith(str(holder.pid))
    holder.kill()
    holder.wait()
    assert str(holder.pid) in (finished_run / ".lock").read_text(), "the dead holder's name is still in the file"
    assert RunDir(finished_run).lock_holder() is None
    assert cli_main(["train", "--resume", str(finished_run), "--frames", "6000"]) == 0
    assert len(games_of(finished_run)) >= 1


# ---------------------------------------------------------------- kills while writing, and before the first checkpoint
def test_temporary_files_of_a_killed_write_are_removed(finished_run, capsys):
    stale = [finished_run / "checkpoints" / ".latest.pt.x1y2.tmp", finished_run / ".summary.json.a1b2.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert cli_main(["train", "--resume", str(finished_run), "--frames", "6000"]) == 0
    assert not any(path.exists() for path in stale)
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not list(finished_run.rglob("*.tmp"))


def test_a_run_killed_before_its_first_periodic_checkpoint_resumes_from_its_start(tiny_train, tmp_path, games_of, summary_of):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "stm_rl.cli", "train", *tiny_train, "--frames", "100M",
                                "--checkpoint-interval", "3600", "--run-dir", str(run_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 480  # a loaded machine takes minutes to start the worker
        while not (run_dir / "games.jsonl").exists() or not (run_dir / "games.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    assert load_training_checkpoint(run_dir / "checkpoints" / "latest.pt")["counters"]["frames"] == 0
    assert cli_main(["train", "--resume", str(run_dir), "--frames", "3000", "--no-progress"]) == 0
    games = games_of(run_dir)
    assert [g["game"] for g in games] == list(range(1, len(games) + 1)), "the lost attempt's games were dropped"
    assert summary_of(run_dir)["counters"]["segments"] == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_during_the_first_checkpoint_ends_the_run_cleanly(tiny_train, tmp_path, signum, summary_of):
    """The signal a sweep forwards can arrive as soon as the run holds its lock, before any worker started: the
    run still stops with the interrupted exit code, a final checkpoint and its summary (once, this was a
    KeyboardInterrupt traceback and no summary)."""
    run_dir = tmp_path / "run"
    script = ("import os, sys\n"
              "from stm_rl.a3c.trainer import Trainer\n"
              "from stm_rl.cli import main\n"
              "save = Trainer._save\n"
              "def save_then_signal(self, name):\n"
              "    result = save(self, name)\n"
              "    if not self.stop:  # once: a second Ctrl-C aborts on purpose\n"
              f"        os.kill(os.getpid(), {int(signum)})\n"
              "    return result\n"
              "Trainer._save = save_then_signal\n"
              f"sys.exit(main(['train', *{list(tiny_train)!r}, '--frames', '100M', '--run-dir', {str(run_dir)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and signal.Signals(signum).name in summary["message"]
    assert summary["counters"]["frames"] == 0, "no worker started after the stop request"
    assert (run_dir / "checkpoints" / "final.pt").exists() and RunDir(run_dir).lock_holder() is None


def test_a_run_without_any_checkpoint_starts_over_on_resume(tiny_train, finished_run, capsys, games_of):
    """A run of an older version (or killed within its first second) has a config and games, no checkpoint."""
    old_games = (finished_run / "games.jsonl").read_text()
    for path in (finished_run / "checkpoints").iterdir():
        path.unlink()
    assert cli_main(["train", *tiny_train, "--run-dir", str(finished_run)]) == 2
    assert "stopped before its first checkpoint" in _one_line_error(capsys.readouterr().err)
    assert cli_main(["train", "--resume", str(finished_run), "--frames", "3000"]) == 0
    assert "starting it over" in capsys.readouterr().err
    orphans = list(finished_run.glob("games.orphan-*.jsonl"))
    assert len(orphans) == 1 and orphans[0].read_text() == old_games
    assert games_of(finished_run)[0]["game"] == 1


def test_a_torn_last_line_of_the_game_log_is_cut_off_on_resume(finished_run, games_of, capsys):
    games = games_of(finished_run)
    with open(finished_run / "games.jsonl", "a") as f:
        f.write('{"game": 2, "worker": 0, "sco')
    assert cli_main(["train", "--resume", str(finished_run), "--frames", "9000"]) == 0
    assert "ended in a torn line" in capsys.readouterr().err
    after = games_of(finished_run)  # every line parses
    assert after[: len(games)] == games and [g["game"] for g in after] == list(range(1, len(after) + 1))
    assert cli_main(["plot", str(finished_run), "--output", str(finished_run / "f.png")]) == 0


def test_repair_jsonl_keeps_a_complete_last_record_without_its_newline(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')
    assert repair_jsonl(path) and path.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert not repair_jsonl(path)
    path.write_text('{"a": 1}\n{"a": ')
    assert repair_jsonl(path) and list(read_jsonl(path)) == [{"a": 1}]


# ---------------------------------------------------------------- checkpoints that cannot be written or read
def _fail_writes_after(monkeypatch, good_writes: int) -> list[int]:
    """Make checkpoint writes fail with ENOSPC (after writing some bytes) once ``good_writes`` have succeeded."""
    calls = [0]
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] > good_writes:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr("stm_rl.run_dir.torch.save", save)
    return calls


def test_a_full_disk_keeps_the_last_good_checkpoint_and_says_so(finished_run, monkeypatch, capsys, summary_of):
    before = (finished_run / "checkpoints" / "latest.pt").read_bytes()
    _fail_writes_after(monkeypatch, good_writes=0)
    assert cli_main(["train", "--resume", str(finished_run), "--frames", "9000"]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "no space left on device" in line and "previous latest.pt is kept" in line
    assert (finished_run / "checkpoints" / "latest.pt").read_bytes() == before
    assert not list(finished_run.rglob("*.tmp")), "no partial file is left behind"
    summary = summary_of(finished_run)
    assert summary["status"] == "failed" and "no space left" in summary["message"]


def test_a_run_whose_first_checkpoint_failed_can_be_started_again(tiny_train, tmp_path, monkeypatch, capsys, games_of):
    run_dir = tmp_path / "run"
    _fail_writes_after(monkeypatch, good_writes=0)
    assert cli_main(["train", *tiny_train, "--frames", "3000", "--run-dir", str(run_dir)]) == 1
    assert "no space left on device" in _one_line_error(capsys.readouterr().err)
    assert not (run_dir / "games.jsonl").exists(), "no worker started without a checkpoint to resume from"
    monkeypatch.undo()
    assert cli_main(["train", "--resume", str(run_dir), "--frames", "3000"]) == 0
    assert games_of(run_dir)


def test_a_corrupt_latest_checkpoint_points_to_an_intact_final_one(finished_run, capsys):
    latest = finished_run / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    assert cli_main(["train", "--resume", str(finished_run)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "corrupt or not a checkpoint" in line and f"{finished_run / 'checkpoints' / 'final.pt'} is intact" in line
    assert f"cp {finished_run / 'checkpoints' / 'final.pt'} {latest}" in line


def test_a_checkpoint_of_another_agent_is_refused(finished_run, capsys, games_of):
    """The run directory records an STM run; its latest.pt is an LSTM agent's (e.g. copied from elsewhere)."""
    games = games_of(finished_run)
    config_path = finished_run / "config.json"
    recorded = json.loads(config_path.read_text())
    recorded["config"]["agent"]["agent"] = "stm"
    config_path.write_text(json.dumps(recorded))
    assert cli_main(["train", "--resume", str(finished_run), "--frames", "9000"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "does not belong to the run" in line and "--agent stm in config.json, lstm in the checkpoint" in line
    assert games_of(finished_run) == games and json.loads(config_path.read_text()) == recorded


# ---------------------------------------------------------------- NaN
def test_non_finite_weights_are_never_saved_over_a_good_checkpoint(finished_run):
    path = finished_run / "checkpoints" / "latest.pt"
    before = path.read_bytes()
    trainer = Trainer(load_training_checkpoint(path)["config"])
    with torch.no_grad():
        next(trainer.shared_model.parameters())[0].fill_(float("nan"))
    with pytest.raises(NonFiniteWeightsError, match="NaN/inf"):
        save_training_checkpoint(path, trainer.shared_model, trainer.optimizer, {}, {}, trainer.config)
    assert path.read_bytes() == before and not list(path.parent.glob("*.tmp"))
    assert trainer._save("final").startswith("non-finite")


def test_the_best_checkpoint_waits_for_a_full_window(finished_run):
    """A run that never learns must not keep its first games' lucky streak as its 'best' weights."""
    from stm_rl.a3c.messages import GameFinished
    config = load_training_checkpoint(finished_run / "checkpoints" / "latest.pt")["config"]
    trainer = Trainer(dataclasses.replace(config, run=dataclasses.replace(config.run, moving_average_window=12)))

    class QuietLog:
        def game(self, *args): pass
        def milestone(self, *args): pass
        def note(self, *args): pass

    bests = []
    for score in [5.0] * 10 + [-21.0, -21.0, -20.0]:  # a lucky start, then the run's real level
        trainer._game_finished(GameFinished(0, {"score": score, "length": 10, "frames": 100}), QuietLog(),
                               Counters(), torch.zeros(1, 3, dtype=torch.int64), time.monotonic())
        bests.append(trainer.scores.best_average)
    assert bests[:11] == [-math.inf] * 11, "no best before the window is full"
    assert bests[11:] == [pytest.approx(8 / 12), pytest.approx(8 / 12)]


def test_a_worker_failing_on_nan_weights_is_named(finished_run):
    trainer = Trainer(load_training_checkpoint(finished_run / "checkpoints" / "latest.pt")["config"])
    with torch.no_grad():
        next(trainer.shared_model.parameters())[0].fill_(float("inf"))
    events: queue.Queue = queue.Queue()
    events.put(ProcessFailed(1, "Traceback ...\nRuntimeError: probability tensor contains either inf, nan"))
    status, message = trainer._drain_events(events, log=None, base=Counters(), worker_counters=torch.zeros(1, 3),
                                            start=time.monotonic())
    assert status == RunStatus.FAILED and "worker 1 failed after the shared weights became NaN/inf" in message
    assert "last good checkpoints were kept" in message and "Traceback" not in message


# ---------------------------------------------------------------- a stalled worker
def test_a_worker_that_stops_updating_is_reported_once_and_when_it_is_back():
    watch = StallWatch(seconds=60)
    assert watch.check([0, 0], now=0.0) == []
    assert watch.check([5, 0], now=59.0) == []
    lines = watch.check([9, 0], now=61.0)
    assert len(lines) == 1 and lines[0].startswith("worker 1 has made no update for 61 s")
    assert watch.check([12, 0], now=200.0) == [], "reported once"
    assert watch.check([13, 1], now=201.0) == ["worker 1 is making updates again"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_sigstopped_worker_is_reported_and_sigterm_still_stops_the_run_quickly(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", "import sys; from stm_rl.a3c import progress; "
                                "progress.STALL_SECONDS = 5.0; from stm_rl.cli import main; sys.exit(main(sys.argv[1:]))",
                                "train", "--agent", "lstm", "--encoder", "small", "--workers", "2", "--no-progress",
                                "--frames", "100M", "--run-dir", str(run_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 480
    while not (run_dir / "games.jsonl").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run did not start")
        time.sleep(0.5)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
               and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(workers[0], signal.SIGSTOP)
    time.sleep(15)
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert time.monotonic() - start < 20, "the stopped worker was woken up to stop"
    assert process.returncode == 130
    assert "has made no update for" in output


# ---------------------------------------------------------------- milestones on resume
def test_milestones_are_rebuilt_from_the_game_log():
    records = [{"game": i, "score": score, "frames": 100 * i, "wall_time": float(i), "agent_steps": 10 * i}
               for i, score in enumerate([-21, -21, -10, -10, 0, 20, 20], start=1)]
    milestones = Milestones.from_game_log(records, window=2)
    assert {t: m.games for t, m in milestones.reached.items()} == {-15.0: 4, 0.0: 6, 18.0: 7}
    assert milestones.reached[0.0].frames == 600 and milestones.reached[0.0].average == 10.0
    scores = ScoreTracker(window=2)
    again = Milestones(reached=dict(milestones.reached))
    scores.add(20)
    scores.add(20)
    assert again.check(scores, Counters(games=8)) == [], "a milestone is announced once per run"
