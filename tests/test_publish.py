"""``stm-rl publish``: what of a run is copied for committing, compressed and without the machine's paths, and
that every reader of game logs takes the compressed log."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from stm_rl.a3c.progress import GAME_METRICS
from stm_rl.cli import main as cli_main
from stm_rl.plotting import load_run
from stm_rl.publish import scrub_paths, write_gzip_jsonl
from stm_rl.run_dir import RunDir, read_jsonl, to_jsonable
from stm_rl.a3c import TrainConfig

CWD, HOME = Path("/work/place"), Path("/home/someone")


@pytest.mark.parametrize("text, expected", [
    ("/work/place/runs/fig3/lstm-skip32-seed0", "runs/fig3/lstm-skip32-seed0"),
    ("/work/place/.venv/bin/python -m stm_rl.sweep_run /work/place/runs/x/sweep-run.json",
     ".venv/bin/python -m stm_rl.sweep_run runs/x/sweep-run.json"),
    ("/home/someone/.pyenv/versions/3.11/bin/python", "~/.pyenv/versions/3.11/bin/python"),
    ("--run-dir /tmp/pytest-7/run", "--run-dir run"),
    ("/work/place", "."),
    ("see https://example.org/a/b and runs/x/y", "see https://example.org/a/b and runs/x/y"),
    ("lr 0.0005, skip 4/32", "lr 0.0005, skip 4/32"),
])
def test_absolute_paths_are_taken_out(text, expected):
    assert scrub_paths(text, CWD, HOME) == expected
    assert scrub_paths({"argv": [text], "n": 3, "nested": {"x": text}}, CWD, HOME) == {
        "argv": [expected], "n": 3, "nested": {"x": expected}}


def test_a_gzip_log_is_written_once_for_the_same_records(tmp_path):
    records = [{"game": i, "score": -21.0 + i} for i in range(1, 6)]
    path = tmp_path / "games.jsonl.gz"
    assert write_gzip_jsonl(records, path)
    first = path.read_bytes()
    assert not write_gzip_jsonl(records, path), "unchanged records: nothing written"
    assert write_gzip_jsonl(records + [{"game": 6, "score": 0.0}], path)
    path.unlink()
    write_gzip_jsonl(records, path)
    assert path.read_bytes() == first, "the same records give the same bytes (fixed gzip timestamp)"
    assert list(read_jsonl(path)) == records


def fake_run(run_dir: Path, games: int, torn: bool = False) -> None:
    """A run directory as a trainer leaves it, with an absolute path in its config and a checkpoint."""
    config = TrainConfig()
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"config": to_jsonable(config),
                                                     "argv": ["stm-rl", "train", "--run-dir", str(run_dir)]}))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "counters": {"games": games}}))
    (run_dir / "eval-final-skip4.json").write_text(json.dumps({"checkpoint": str(run_dir / "checkpoints/final.pt"),
                                                               "scores": [1.0, 2.0], "greedy": True}))
    lines = [json.dumps({"game": i, "frames": 1000 * i, "agent_steps": 250 * i, "wall_time": float(i),
                         "score": -21.0 + i % 5}) for i in range(1, games + 1)]
    (run_dir / "games.jsonl").write_text("\n".join(lines) + "\n" + ('{"game": 99, "fra' if torn else ""))
    metrics = [{"step": 1000 * i, "wall_time": float(i), **dict(zip(GAME_METRICS, (-21.0, -21.0, 90, i)))}
               for i in range(1, games + 1)]
    metrics += [{"step": 5000, "wall_time": 5.0, "losses/value_loss": 80.0, "losses/entropy": 1.7},
                {"step": 6000, "wall_time": 6.0, "charts/frames_per_second": 900.0}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"weights")


def test_publish_copies_logs_compressed_and_no_checkpoints(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "lstm-skip4-seed0", games=30)
    fake_run(sweep / "stm-skip4-seed0", games=12, torn=True)  # still training: a line being written
    (sweep / "sweep.json").write_text(json.dumps({"out": str(sweep), "runs": []}))
    out = tmp_path / "results" / "fig3"
    assert cli_main(["publish", str(sweep), "--to", str(out)]) == 0
    assert "published 2 run(s), 42 games" in capsys.readouterr().out
    published = out / "stm-skip4-seed0"
    assert sorted(p.name for p in published.iterdir()) == ["config.json", "eval-final-skip4.json", "games.jsonl.gz",
                                                          "metrics.jsonl.gz", "summary.json"]
    assert list(read_jsonl(published / "metrics.jsonl.gz")) == [
        {"step": 5000, "wall_time": 5.0, "losses/value_loss": 80.0, "losses/entropy": 1.7},
        {"step": 6000, "wall_time": 6.0, "charts/frames_per_second": 900.0}], "the per-game rows are the game log's"
    with gzip.open(published / "games.jsonl.gz", "rt") as f:
        assert [json.loads(line)["game"] for line in f] == list(range(1, 13)), "complete lines only"
    for path in out.rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), f"{path} names a folder of this machine"
    assert json.loads((published / "config.json").read_text())["argv"][-1] == "stm-skip4-seed0"
    assert (out / "sweep.json").exists()
    # every reader takes the compressed log where there is no plain one
    assert RunDir(published).game_log.name == "games.jsonl.gz"
    run = load_run(published)
    assert run.games == 12 and run.scores[0] == -20.0


def test_publish_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert cli_main(["publish", str(tmp_path / "missing"), "--to", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert cli_main(["publish", str(tmp_path / "empty"), "--to", str(tmp_path / "out")]) == 2
    assert "no runs found" in capsys.readouterr().err
    fake_run(tmp_path / "a" / "run", games=3)
    fake_run(tmp_path / "b" / "run", games=3)
    assert cli_main(["publish", str(tmp_path / "a"), str(tmp_path / "b"), "--to", str(tmp_path / "out")]) == 2
    assert "two runs are named run" in capsys.readouterr().err


def test_publish_takes_a_supervised_runs_evaluation_log(tmp_path, monkeypatch, capsys):
    from stm_rl.supervised.config import resolve_config
    from stm_rl.supervised.train import train

    monkeypatch.chdir(tmp_path)  # a run started from the checkout, as `python -m stm_rl.supervised` runs are
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "stm_rl" / "supervised" / "__main__.py"), "--task", "copy"])
    train(resolve_config("copy", "lstm", "smoke", run_dir="runs/copy-lstm", iterations=2, eval_every=1),
          progress=False)
    assert cli_main(["publish", "runs/copy-lstm", "--to", "results"]) == 0
    published = tmp_path / "results" / "copy-lstm"
    assert sorted(p.name for p in published.iterdir()) == ["config.json", "evaluations.jsonl", "metrics.jsonl.gz",
                                                          "summary.json"]
    logged = list(read_jsonl(published / "evaluations.jsonl"))
    assert logged == list(read_jsonl(tmp_path / "runs" / "copy-lstm" / "evaluations.jsonl"))
    assert [(r["split"], r["iteration"]) for r in logged] == [("valid", 1), ("valid", 2), ("test", 2)]
    config = json.loads((published / "config.json").read_text())
    assert config["argv"][0] == "stm_rl/supervised/__main__.py", "no folder of this machine"


def test_a_run_being_trained_is_published_as_running_even_after_a_completed_segment(tmp_path, capsys):
    """A completed run extended past its budget keeps its old 'completed' summary while it trains on; its
    published copy must not pass for a completed run (plot --completed-only, sweep --adopt)."""
    sweep = tmp_path / "sweep"
    fake_run(sweep / "lstm-skip0-seed0", games=30)
    layout = RunDir(sweep / "lstm-skip0-seed0")
    layout.summary.write_text(json.dumps({"status": "completed", "counters": {"frames": 30}}))
    out = tmp_path / "results"
    with layout.lock():
        assert cli_main(["publish", str(sweep), "--to", str(out)]) == 0
    assert "lstm-skip0-seed0" in (line := capsys.readouterr().out) and "published as running" in line
    assert RunDir(out / "lstm-skip0-seed0").read_summary() == {"status": "running", "counters": {"frames": 30}}
    assert cli_main(["publish", str(sweep), "--to", str(out)]) == 0  # the extension ended: copied as it is
    assert "published as running" not in capsys.readouterr().out
    assert RunDir(out / "lstm-skip0-seed0").status() == "completed"


def test_a_published_copy_that_trained_further_is_kept_unless_forced(tmp_path, capsys):
    """On a new machine a campaign's run starts again from zero (checkpoints are not committed): publishing it
    must not replace the longer log already committed."""
    out = tmp_path / "results"
    fake_run(tmp_path / "old" / "stm-skip0-seed0", games=40)
    fake_run(tmp_path / "old" / "lstm-skip0-seed0", games=5)
    assert cli_main(["publish", str(tmp_path / "old"), "--to", str(out)]) == 0
    capsys.readouterr()
    fake_run(tmp_path / "new" / "stm-skip0-seed0", games=12)  # restarted: 3,000 agent steps where the copy has 10,000
    fake_run(tmp_path / "new" / "lstm-skip0-seed0", games=9)  # trained further than its copy: replaced
    assert cli_main(["publish", str(tmp_path / "new"), "--to", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "stm-skip0-seed0        kept: " in printed and "(10,000 agent steps) than this run (3,000 agent steps)" in printed
    assert "published 1 run(s)" in printed and "kept the further-trained copies of stm-skip0-seed0" in printed
    assert len(list(read_jsonl(out / "stm-skip0-seed0" / "games.jsonl.gz"))) == 40
    assert len(list(read_jsonl(out / "lstm-skip0-seed0" / "games.jsonl.gz"))) == 9
    assert cli_main(["publish", str(tmp_path / "new"), "--to", str(out), "--force"]) == 0
    assert len(list(read_jsonl(out / "stm-skip0-seed0" / "games.jsonl.gz"))) == 12
