"""The progress display every run uses when no terminal watches (``stm_rl.progress``): a plain line per interval
with the work done, its rate since the line before, the ETA and the elapsed time; and supervised runs use it."""

from __future__ import annotations

import re

from stm_rl import progress
from stm_rl.progress import ProgressDisplay
from stm_rl.supervised.__main__ import main as supervised_main


def test_plain_lines_give_rate_since_the_previous_line_eta_and_elapsed(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    display = ProgressDisplay(1000, 200, "iterations", "it/s", "task/model", live=False, interval=5.0)
    now[0] = 104.0
    display.update(240, elapsed_s=50.0, status="loss 0.5")  # before the interval: no line
    assert capsys.readouterr().err == ""
    now[0] = 110.0
    display.update(300, elapsed_s=60.0, status="loss 0.4")  # 100 iterations in 10 s since the start (of 200)
    now[0] = 130.0
    display.update(340, elapsed_s=80.0)  # 40 in 20 s since that line
    display.close()
    assert capsys.readouterr().err.splitlines() == [
        "progress: 300/1.00k iterations (30.0%) | 10 it/s | ETA 0:01:10 | elapsed 0:01:00 | loss 0.4",
        "progress: 340/1.00k iterations (34.0%) | 2 it/s | ETA 0:05:30 | elapsed 0:01:20",
    ]


def test_a_supervised_run_without_a_terminal_prints_progress_lines(tmp_path, capsys):
    code = supervised_main(["--task", "copy", "--model", "lstm", "--preset", "smoke", "--iterations", "40",
                            "--progress-interval", "0.001", "--threads", "1", "--run-dir", str(tmp_path / "run")])
    assert code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 2
    pattern = r"progress: \d+/40 iterations \(\d+\.\d%\) \| [\d.,]+ it/s \| ETA (\d+:\d\d:\d\d|-) \| elapsed \d+:\d\d:\d\d"
    assert all(re.match(pattern, line) for line in lines), lines[:3]
    assert any("loss " in line for line in lines)


def test_progress_interval_must_be_positive(tmp_path, capsys):
    code = supervised_main(["--task", "copy", "--model", "lstm", "--preset", "smoke", "--progress-interval", "0",
                            "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err.strip() == "stm-rl supervised: error: --progress-interval must be > 0, got 0.0"
    assert not (tmp_path / "run").exists()
