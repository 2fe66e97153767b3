"""``stm-rl sweep``, ``evaluate`` and ``plot``: a tiny real sweep, evaluation of its checkpoints, plots of
synthetic game logs checked against hand-computed numbers, and the clear errors for bad inputs."""

from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stm_rl import plotting, sweep, sweep_run
from stm_rl.a3c import TrainConfig
from stm_rl.cli import build_parser
from stm_rl.cli import main as cli_main
from stm_rl.run_dir import RunDir, to_jsonable

SWEEP = ["sweep", "--agents", "lstm", "--frame-skips", "32", "--seeds", "0", "1", "--frames", "3000",
         "--workers-per-run", "1", "--max-parallel", "1", "--encoder", "small", "--envs-per-worker", "1", "--no-progress",
         "--poll-interval", "0.2"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    """Two real training runs (lstm, skip 32, seeds 0 and 1, 3000 frames each), shared by the tests below."""
    out = tmp_path_factory.mktemp("sweep") / "fig3"
    assert cli_main([*SWEEP, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- sweep
def test_sweep_runs_every_configuration_and_writes_its_manifest(tiny_sweep):
    manifest = json.loads((tiny_sweep / "sweep.json").read_text())
    runs = {run["name"]: run for run in manifest["runs"]}
    assert set(runs) == {"lstm-skip32-seed0", "lstm-skip32-seed1"}
    for name, run in runs.items():
        assert run["state"] == "done" and run["exit_code"] == 0
        log = Path(run["log"]).read_text()
        assert "completed:" in log and log.count("\n$ ") == 1, "each run started once, with its run file"
        summary = json.loads((tiny_sweep / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["counters"]["frames"] >= 3000
        assert run["frames_done"] == summary["counters"]["frames"]
        config = json.loads((tiny_sweep / name / "config.json").read_text())["config"]
        assert config["agent"]["encoder"] == "small", "training flags pass through to every run"
        assert config["run"]["seed"] == run["seed"] and config["run"]["workers"] == 1


def test_rerunning_a_finished_sweep_starts_no_training(tiny_sweep, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("a completed run was started again")

    monkeypatch.setattr(sweep_run.RunProcess, "start", no_training)
    start = time.monotonic()
    assert cli_main([*SWEEP, "--out", str(tiny_sweep)]) == 0
    assert time.monotonic() - start < 10
    assert "2 already completed" in capsys.readouterr().out


def test_a_fresh_out_adopts_the_published_completed_runs_instead_of_training_them(tiny_sweep, tmp_path,
                                                                                 monkeypatch, capsys):
    """A campaign continued on a machine that never trained it: ``--adopt results/...`` takes the runs the
    committed folder holds completed; one trained with other settings, or cut short there, trains again."""
    published = tmp_path / "results"
    assert cli_main(["publish", str(tiny_sweep), "--to", str(published)]) == 0
    summary = published / "lstm-skip32-seed1" / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"interrupted"'))  # published mid-run
    started = []
    monkeypatch.setattr(sweep_run.RunProcess, "start", lambda run_dir: started.append(Path(run_dir).name) or 1 / 0)
    out = tmp_path / "fresh"
    capsys.readouterr()
    assert cli_main([*SWEEP, "--seeds", "0", "1", "--out", str(out), "--adopt", str(published), "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert f"lstm-skip32-seed0  adopt ({published})" in report
    assert "lstm-skip32-seed1 in" in report and "would not be adopted: not completed" in report
    assert not out.exists(), "a dry run writes nothing"
    with pytest.raises(ZeroDivisionError):  # the sweep goes on to train the run it could not adopt
        cli_main([*SWEEP, "--out", str(out), "--adopt", str(published)])
    assert started == ["lstm-skip32-seed1"]
    assert f"adopted lstm-skip32-seed0 from {published}" in capsys.readouterr().out
    adopted = out / "lstm-skip32-seed0"
    assert sorted(path.name for path in adopted.iterdir()) == sorted(
        path.name for path in (published / "lstm-skip32-seed0").iterdir())
    options = sweep.options_from_args(build_parser().parse_args([*SWEEP, "--out", str(out)]))
    assert sweep.disk_state(sweep.RunSpec("lstm", 32, 0, adopted), options) == "done"
    # other settings than the published run's: not adopted, and the reason is printed
    other = tmp_path / "other"
    assert cli_main([*SWEEP, "--seeds", "0", "--lr", "1e-3", "--out", str(other), "--adopt", str(published),
                     "--dry-run"]) == 0
    assert "would not be adopted: trained with other settings: --lr" in capsys.readouterr().out
    assert cli_main([*SWEEP, "--out", str(other), "--adopt", str(tmp_path / "missing")]) == 2
    assert "--adopt" in capsys.readouterr().err


def test_sweep_resumes_interrupted_runs_and_starts_new_ones(tmp_path):
    """What each run is handed and what the sweep would do with it, from what is on disk (no training here)."""
    options = sweep.SweepOptions(agents=("lstm",), frame_skips=(32,), seeds=(0,), out=tmp_path, frames=5000,
                                 workers_per_run=1, max_parallel=1, settings={"AgentConfig": {"encoder": "small"}})
    spec = options.runs()[0]
    assert sweep_run.command(sweep_run.run_file(spec.run_dir))[1:] == ["-m", "stm_rl.sweep_run", str(spec.run_dir / "sweep-run.json")]
    assert sweep.disk_state(spec, options) == "start"
    (spec.run_dir / "checkpoints").mkdir(parents=True)
    (spec.run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    (spec.run_dir / "summary.json").write_text(json.dumps({"status": "interrupted", "counters": {"frames": 900}}))
    assert sweep.disk_state(spec, options) == "resume (interrupted)"
    assert not sweep.is_finished(spec, options)


def test_sweep_reports_a_failed_run_and_goes_on(tmp_path, monkeypatch, capsys):
    """A child that exits with an error is marked failed, the others still run, the sweep exits 1."""
    def fake_command(run_file):
        run_dir = Path(run_file).parent
        code = 3 if run_dir.name.endswith("-seed0") else 0
        write_summary = (f"import json,pathlib; pathlib.Path({str(run_dir)!r}, 'summary.json').write_text("
                         f"json.dumps({{'status': 'completed', 'counters': {{'frames': 99999}}}}))")
        return ["python", "-c", f"import sys; {write_summary if code == 0 else 'pass'}; sys.exit({code})"]

    monkeypatch.setattr(sweep_run, "command", fake_command)
    assert cli_main([*SWEEP, "--retries", "1", "--out", str(tmp_path)]) == 1
    runs = {r["seed"]: r for r in json.loads((tmp_path / "sweep.json").read_text())["runs"]}
    assert runs[0]["state"] == "failed" and runs[0]["exit_code"] == 3 and runs[0]["attempts"] == 2, "retried once"
    assert runs[1]["state"] == "done"
    assert "failed: lstm-skip32-seed0" in capsys.readouterr().out


def test_a_sweep_without_a_terminal_logs_its_progress(tmp_path, monkeypatch, capsys):
    """In a log file (no terminal) the sweep prints a status line at its interval: runs done, what is running."""
    def slow_command(run_file):
        run_dir = Path(run_file).parent
        write_summary = (f"import json,pathlib,time; time.sleep(1.5); pathlib.Path({str(run_dir)!r}, 'summary.json')"
                         f".write_text(json.dumps({{'status': 'completed', 'counters': {{'frames': 99999}}}}))")
        return ["python", "-c", write_summary]

    monkeypatch.setattr(sweep_run, "command", slow_command)
    monkeypatch.setattr(sweep, "STATUS_INTERVAL_S", (0.5, 0.5))
    assert cli_main([*SWEEP, "--progress", "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sweep: ")]
    assert any(line.startswith("sweep: 0/2 runs done | running lstm-skip32-seed0 | frames") for line in lines), lines
    assert all(" | ETA " in line for line in lines), lines


def test_sweep_rejects_an_unknown_agent(tmp_path, capsys):
    assert cli_main(["sweep", "--agents", "lstm", "gru", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "unknown agent 'gru'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists(), "nothing starts when a configuration is invalid"


# ---------------------------------------------------------------- evaluate
def test_evaluate_plays_games_writes_scores_and_a_video(tiny_sweep, tmp_path, capsys):
    run_dir = tiny_sweep / "lstm-skip32-seed0"
    videos = tmp_path / "videos"
    code = cli_main(["evaluate", str(run_dir), "--episodes", "1", "--max-frames", "2000", "--video", str(videos),
                     "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "game 1: score" in out and "mean score" in out
    checkpoint = "best" if (run_dir / "checkpoints" / "best.pt").exists() else "final"
    report = json.loads((run_dir / f"eval-{checkpoint}-skip32.json").read_text())
    assert len(report["scores"]) == 1 and report["games"][0]["frames"] <= 2000 + 32
    assert report["agent"] == "lstm" and report["frame_skip"] == 32 and report["greedy"]
    assert [p.stat().st_size > 0 for p in videos.glob("*.mp4")] == [True]


def test_evaluate_a_checkpoint_file_at_another_frame_skip(tiny_sweep, tmp_path):
    output = tmp_path / "eval.json"
    code = cli_main(["evaluate", str(tiny_sweep / "lstm-skip32-seed1" / "checkpoints" / "latest.pt"),
                     "--frame-skip", "16", "--sample", "--episodes", "1", "--max-frames", "500",
                     "--output", str(output), "--no-progress"])
    assert code == 0
    report = json.loads(output.read_text())
    assert report["frame_skip"] == 16 and report["trained_frame_skip"] == 32 and not report["greedy"]


def test_evaluate_errors(tiny_sweep, tmp_path, capsys):
    def error_of(target: Path, *flags: str) -> str:
        assert cli_main(["evaluate", str(target), "--no-progress", *flags]) == 2
        return capsys.readouterr().err

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert "corrupt or not a checkpoint" in error_of(corrupt)
    (tmp_path / "empty_run").mkdir()
    assert "has no checkpoints" in error_of(tmp_path / "empty_run")
    assert "no run directory or checkpoint file" in error_of(tmp_path / "missing")
    assert "has no best checkpoint" in error_of(tmp_path / "empty_run", "--checkpoint", "best")
    # an lstm state dict under an stm config
    record = torch.load(tiny_sweep / "lstm-skip32-seed0" / "checkpoints" / "final.pt", weights_only=False)
    record["config"]["agent"]["agent"] = "stm"
    mismatched = tmp_path / "mismatched.pt"
    torch.save(record, mismatched)
    assert "do not match a 'stm' agent" in error_of(mismatched)


# ---------------------------------------------------------------- plot
def write_run(run_dir: Path, agent: str, frame_skip: int, seed: int, scores, frames_per_game: int = 1000) -> Path:
    """A synthetic run: config.json and one games.jsonl line per score."""
    config = TrainConfig.from_dict(to_jsonable(TrainConfig()))
    data = to_jsonable(config)
    data["agent"]["agent"], data["env"]["frame_skip"], data["run"]["seed"] = agent, frame_skip, seed
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"config": data}))
    with open(run_dir / "games.jsonl", "w") as f:
        for game, score in enumerate(scores, start=1):
            f.write(json.dumps({"game": game, "frames": game * frames_per_game, "wall_time": game * 2.0,
                                "agent_steps": game * frames_per_game // max(frame_skip, 1), "score": score}) + "\n")
    return run_dir


def test_moving_average_mean_band_and_thresholds_by_hand(tmp_path):
    # directory names lie on purpose: grouping must come from config.json
    a = plotting.load_run(write_run(tmp_path / "x", "stm", 4, 0, [-3, -1, 1, 3, 5]))
    b = plotting.load_run(write_run(tmp_path / "y", "stm", 4, 1, [-1, -1, 1, 1]))
    np.testing.assert_allclose(plotting.moving_average(a.scores, 2), [-3, -2, 0, 2, 4])
    curve = plotting.aggregate([a, b], "games", window=2, band="std")
    np.testing.assert_allclose(curve.x, [1, 2, 3, 4])  # the range both runs cover
    # b's moving average: [-1, -1, 0, 1]
    np.testing.assert_allclose(curve.mean, [-2, -1.5, 0, 1.5])
    np.testing.assert_allclose(curve.band, np.std([[-3, -2, 0, 2], [-1, -1, 0, 1]], axis=0, ddof=1))
    sem = plotting.aggregate([a, b], "games", window=2, band="sem")
    np.testing.assert_allclose(sem.band, curve.band / np.sqrt(2))
    by_frames = plotting.aggregate([a, b], "frames", window=2, band="std")
    assert by_frames.x[0] == 1000 and by_frames.x[-1] == 4000
    assert plotting.frames_to_reach(a, 0, window=2) == 3000 and plotting.frames_to_reach(b, 2, window=2) is None
    summary = plotting.summarize(("stm", 4), [a, b], window=2, thresholds=(0, 2, -2.5))
    assert summary.final_average == (4.0, 1.0) and summary.best_average == (4.0, 1.0)
    # the best average is a full window's: a lucky first game (5 alone) is not a best of 2-game averages
    lucky = plotting.load_run(write_run(tmp_path / "z", "stm", 4, 2, [5, -5, -5, -5]))
    assert plotting.summarize(("stm", 4), [lucky], window=2, thresholds=()).best_average == (0.0,)
    assert summary.frames_to_threshold == {0: (3000, 3000), 2: (4000, None), -2.5: (2000, 2000)}
    # thresholds count only full windows: a's first game (-3 alone) is not an average of 2 games >= -2.5
    assert summary.reached[2] == (plotting.Reached(games=4, agent_steps=1000, frames=4000), None)
    row = plotting.table_rows([summary], "std")[0]
    assert (row["reached_2"], row["games_to_2_mean"], row["agent_steps_to_2_mean"]) == ("1/2", 4.0, 1000.0)
    assert row["agent_steps_mean"] == (1250 + 1000) / 2 and row["greedy_mean"] is None


def test_plot_writes_the_figure_and_the_table(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for agent in ("lstm", "stm"):
        for skip in (4, 32):
            for seed in (0, 1):
                scores = np.clip(np.linspace(-21, 21 if agent == "stm" else 10, 150) + rng.normal(0, 2, 150), -21, 21)
                write_run(tmp_path / "sweep" / f"run{agent}{skip}{seed}", agent, skip, seed, scores.tolist())
    # the final agents' greedy games of two runs
    for seed, scores in ((0, [20.0, 21.0]), (1, [18.0, 19.0])):
        (tmp_path / "sweep" / f"runstm32{seed}" / "eval-final-skip32.json").write_text(
            json.dumps({"greedy": True, "scores": scores}))
    csv_path, md_path = tmp_path / "table.csv", tmp_path / "table.md"
    assert cli_main(["plot", str(tmp_path / "sweep"), "--table-csv", str(csv_path), "--table-md", str(md_path),
                     "--x", "games", "frames"]) == 0
    figure = tmp_path / "sweep" / "figure3.png"
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "to +18: games, steps (runs)" in out and "stm" in out
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("agent,frame_skip,runs")
    markdown = md_path.read_text().splitlines()
    assert markdown[0].startswith("| agent | skip |") and len([line for line in markdown if line.startswith("| ")]) == 5
    stm32 = next(line for line in markdown if line.startswith("| stm | 32 |"))
    assert "+19.50 +- 1.41 (2 x 2 g)" in stm32, "greedy: mean of the runs' means +- their std"
    assert cli_main(["plot", str(tmp_path / "sweep"), "--x", "frames", "--band", "sem",
                     "--output", str(tmp_path / "f.svg")]) == 0
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


def test_plot_draws_training_metrics_below_the_scores(tmp_path, capsys):
    """--metrics: a row per metric of the runs' metrics.jsonl (or the .gz a published run has), each point at the
    x of its frame count through the game log, between the run's first and last game, as a trailing mean."""
    lstm = write_run(tmp_path / "runs" / "lstm", "lstm", 4, 0, [-21, -20, -19, -18, -17])  # games at 1000..5000
    records = [{"step": step, "wall_time": 0.0, "losses/entropy": value, "losses/grad_norm": 10.0 ** value}
               for step, value in ((500, 9.0), (1000, 1.0), (2000, 2.0), (3000, 4.0), (6000, 9.0))]
    (lstm / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    stm = write_run(tmp_path / "runs" / "stm", "stm", 4, 0, [-21, -21, -20])
    with gzip.open(stm / "metrics.jsonl.gz", "wt") as f:
        f.write(json.dumps({"step": 2000, "wall_time": 0.0, "losses/entropy": 0.5, "losses/grad_norm": 1e6}) + "\n")
        f.write(json.dumps({"step": 3000, "wall_time": 0.0, "losses/entropy": 0.25, "losses/grad_norm": 1e7}) + "\n")
    runs = plotting.load_runs([tmp_path / "runs"], metrics=("losses/entropy",))
    by_agent = {run.agent: run for run in runs}
    [(x, y)] = plotting.metric_lines([by_agent["lstm"]], "losses/entropy", "games")
    np.testing.assert_allclose(x, [1, 2, 3])  # 500 is before the first game, 6000 after the last
    np.testing.assert_allclose(y, [1, 1.5, 7 / 3])  # trailing means
    [(x, y)] = plotting.metric_lines([by_agent["stm"]], "losses/entropy", "frames")
    np.testing.assert_allclose(x, [2000, 3000])
    np.testing.assert_allclose(y, [0.5, 0.375])
    figure = tmp_path / "f.png"
    assert cli_main(["plot", str(tmp_path / "runs"), "--metrics", "losses/entropy", "losses/grad_norm",
                     "--output", str(figure)]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cli_main(["plot", str(tmp_path / "runs"), "--metrics", "memory/stm_item_norm",
                     "--output", str(figure)]) == 2
    assert "--metrics memory/stm_item_norm: no run logged it" in capsys.readouterr().err
    (lstm / "metrics.jsonl").write_text(json.dumps({"step": 9000, "losses/value_loss": 1.0}) + "\n")  # after its games
    table = tmp_path / "t.md"
    assert cli_main(["plot", str(lstm), "--metrics", "losses/value_loss", "--output", str(figure),
                     "--table-md", str(table)]) == 2
    assert "--metrics losses/value_loss: no run logged it twice between its first" in capsys.readouterr().err
    assert not table.exists(), "refused before anything is written"



def test_a_panel_whose_runs_did_not_log_a_metric_says_so(tmp_path):
    import matplotlib

    logged = write_run(tmp_path / "runs" / "logged", "stm", 0, 0, [-21, -20, -19])
    (logged / "metrics.jsonl").write_text("".join(json.dumps({"step": 1000 * i, "memory/stm_item_norm": 20.0 + i})
                                                  + "\n" for i in (1, 2, 3)))
    write_run(tmp_path / "runs" / "older", "stm", 32, 0, [-21, -21])  # from before the metric existed
    figure = tmp_path / "f.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text kept as text, to be read here
        assert cli_main(["plot", str(tmp_path / "runs"), "--metrics", "memory/stm_item_norm",
                         "--output", str(figure)]) == 0
    drawn = figure.read_text()
    assert "no run at skip 32 logged" in drawn and "no run at skip 0 logged" not in drawn
    assert "STM (1 run, in training)" in drawn  # neither run has a summary saying completed


def test_plot_errors(tmp_path, capsys):
    def error_of(*paths: Path) -> str:
        assert cli_main(["plot", *map(str, paths)]) == 2
        return capsys.readouterr().err

    (tmp_path / "nothing").mkdir()
    assert "no runs found" in error_of(tmp_path / "nothing")
    empty = write_run(tmp_path / "empty", "lstm", 4, 0, [])
    assert "no finished training game" in error_of(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert "not valid JSON" in error_of(broken)
    (broken / "config.json").write_text(json.dumps({"config": {"agent": {"agent": "gru"}}}))
    assert "is not a training config" in error_of(broken)
    good = write_run(tmp_path / "good", "lstm", 4, 0, [-21, -20])
    assert cli_main(["plot", str(good), str(empty), "--skip-empty", "--output", str(tmp_path / "f.png")]) == 0


def test_plot_completed_only_leaves_out_runs_in_progress(tmp_path, capsys):
    """--completed-only: a campaign's run in progress (summary status other than completed, or no summary)
    stays out of the cell's mean; the completed runs make the table."""
    done = write_run(tmp_path / "runs" / "done", "lstm", 32, 0, [-21, -20, -19])
    going = write_run(tmp_path / "runs" / "going", "lstm", 32, 1, [-21, -21])
    fresh = write_run(tmp_path / "runs" / "fresh", "lstm", 32, 2, [-21])
    (done / "summary.json").write_text(json.dumps({"status": "completed"}))
    (going / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    table = tmp_path / "t.csv"
    assert cli_main(["plot", str(tmp_path / "runs"), "--completed-only", "--window", "1", "--table-csv", str(table),
                     "--output", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert f"leaving out {going}: interrupted" in out and f"leaving out {fresh}: no summary" in out
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 1 and rows[0]["runs"] == "1" and float(rows[0]["final_average_mean"]) == -19.0
    assert cli_main(["plot", str(going), "--completed-only", "--output", str(tmp_path / "g.png")]) == 2
    assert "none of the runs has completed" in capsys.readouterr().err


def test_runs_in_training_are_named_in_the_legend_and_the_table(tmp_path, capsys):
    """Without --completed-only a run in progress is drawn and averaged, and says so: a curve that ends early
    because its run is still training must not read as an agent that stopped learning."""
    done = write_run(tmp_path / "runs" / "done", "lstm", 0, 0, [-21, -20, -19])
    going = write_run(tmp_path / "runs" / "going", "lstm", 0, 1, [-21, -21])
    alone = write_run(tmp_path / "runs" / "alone", "stm", 0, 0, [-21, -20])
    (done / "summary.json").write_text(json.dumps({"status": "completed"}))
    (going / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    runs = {run.run_dir.name: run for run in map(plotting.load_run, (done, going, alone))}
    assert [run.completed for run in runs.values()] == [True, False, False]
    assert plotting.curve_label("lstm", [runs["done"]]) == "LSTM (1 run)"
    assert plotting.curve_label("lstm", [runs["done"], runs["going"]]) == "LSTM (2 runs, 1 in training)"
    assert plotting.curve_label("stm", [runs["alone"]]) == "STM (1 run, in training)"
    table = tmp_path / "t.md"
    assert cli_main(["plot", str(tmp_path / "runs"), "--window", "1", "--table-md", str(table),
                     "--output", str(tmp_path / "f.png")]) == 0
    rows = {line.split(" | ")[0]: line for line in table.read_text().splitlines() if line.startswith("| ")}
    assert "| 0 | 2 (0 1; 1 in training) |" in rows["| lstm"] and "| 0 | 1 (0; 1 in training) |" in rows["| stm"]
    with RunDir(done).lock():  # a completed run being extended is in training again
        assert not plotting.load_run(done).completed


def test_plot_completed_only_leaves_out_a_completed_run_being_extended(tmp_path, capsys):
    """A completed run trained on past its budget keeps its earlier segment's 'completed' summary until the
    extension ends: while a process holds its lock, it is running, and its partial extension stays out."""
    done = write_run(tmp_path / "runs" / "done", "lstm", 32, 0, [-21, -20, -19])
    extended = write_run(tmp_path / "runs" / "extended", "lstm", 32, 1, [-21, -21])
    for run in (done, extended):
        (run / "summary.json").write_text(json.dumps({"status": "completed"}))
    table = tmp_path / "t.csv"
    command = ["plot", str(tmp_path / "runs"), "--completed-only", "--window", "1", "--table-csv", str(table),
               "--output", str(tmp_path / "f.png")]
    with RunDir(extended).lock():
        assert RunDir(extended).status() == "running"
        assert cli_main(command) == 0
    assert f"leaving out {extended}: running" in capsys.readouterr().out
    assert list(csv.DictReader(table.open()))[0]["runs"] == "1"
    assert RunDir(extended).status() == "completed"  # the extension ended
    assert cli_main(command) == 0 and list(csv.DictReader(table.open()))[0]["runs"] == "2"


def test_runs_are_compared_at_equal_agent_steps(tmp_path, capsys):
    """--at-steps: where each run stood at the same agent steps (a run in progress against completed ones)."""
    a = write_run(tmp_path / "runs" / "a", "lstm", 4, 0, [-21, -19, -17, -15])  # games end at 250, 500, 750, 1000 steps
    b = write_run(tmp_path / "runs" / "b", "lstm", 4, 1, [-20, -18])  # 250, 500: has not trained to 1,000
    c = write_run(tmp_path / "runs" / "c", "stm", 4, 0, [-21, -21, -9], frames_per_game=2000)  # 500, 1000, 1500
    runs = {run.run_dir.name: run for run in map(plotting.load_run, (a, b, c))}
    assert plotting.standing_at(runs["a"], 600, window=2) == plotting.Standing(-20.0, 2)  # its last game by then
    assert plotting.standing_at(runs["b"], 600, window=2) is None
    assert plotting.standing_at(runs["c"], 400, window=2) is None  # no game of it had ended by then
    # a run trains on past its last game: its summary's agent steps say how far
    assert plotting.standing_at(runs["a"], 1_200, window=2) is None  # its last game ended at 1,000
    (a / "summary.json").write_text(json.dumps({"status": "completed", "counters": {"agent_steps": 1_200}}))
    assert plotting.standing_at(plotting.load_run(a), 1_200, window=2) == plotting.Standing(-16.0, 4)
    table_md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    assert cli_main(["plot", str(tmp_path / "runs"), "--window", "2", "--at-steps", "1k", "500", "--table-md",
                     str(table_md), "--table-csv", str(table_csv), "--output", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "at 500 steps: avg (games, runs)" in out and "at 1.00k steps: avg (games, runs)" in out
    markdown = table_md.read_text()
    assert "| lstm | 4 | -19.50 +- 0.71 (2 g, 2/2) | -16.00 (4 g, 1/2) |" in markdown
    assert "| stm | 4 | -21.00 (1 g, 1/1) | -21.00 (2 g, 1/1) |" in markdown
    stm = next(row for row in csv.DictReader(table_csv.open()) if row["agent"] == "stm")
    assert (stm["runs_at_1000"], float(stm["average_at_1000_mean"]), float(stm["games_at_1000_mean"])) == ("1/1", -21.0, 2.0)
