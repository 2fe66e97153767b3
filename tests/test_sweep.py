"""``stm-rl sweep`` on the local backend: what each run is handed, what a re-run checks before starting, the
run lock, a killed sweep, and bad input (the training itself is covered by test_sweep_eval_plot.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stm_rl import sweep, sweep_run
from stm_rl.a3c import A3CConfig, TrainConfig
from stm_rl.cli import main as cli_main
from stm_rl.run_dir import RunDir, StmRlError, to_jsonable

FLAGS = ["--agents", "lstm", "--frame-skips", "32", "--workers-per-run", "1", "--encoder", "small",
         "--envs-per-worker", "1", "--no-progress", "--poll-interval", "0.2"]


SETTINGS = {"AgentConfig": {"encoder": "small"}, "A3CConfig": {"envs_per_worker": 1}}
"""What FLAGS set, as SweepOptions.settings."""
DEFAULTS = A3CConfig()


def options(out: Path, **changes) -> sweep.SweepOptions:
    values = dict(agents=("lstm",), frame_skips=(32,), seeds=(0, 1), out=out, frames=5000, workers_per_run=1,
                  settings=SETTINGS)
    return sweep.SweepOptions(**{**values, **changes})


def fake_trained_run(spec: sweep.RunSpec, config: TrainConfig, status: str, frames: int, wall_time: float = 0.0) -> None:
    """A run directory as the trainer leaves it (config.json, summary.json, a latest checkpoint file)."""
    (spec.run_dir / "checkpoints").mkdir(parents=True)
    (spec.run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    (spec.run_dir / "config.json").write_text(json.dumps({"config": to_jsonable(config)}))
    (spec.run_dir / "summary.json").write_text(json.dumps({
        "status": status, "counters": {"frames": frames, "agent_steps": frames // 32, "games": 7, "wall_time": wall_time},
        "moving_average": -20.5,
        "best_moving_average": -19.25}))


def test_each_run_is_handed_its_whole_config(tmp_path):
    sweep_options = options(tmp_path)
    spec = sweep_options.runs()[1]
    config = sweep.run_config(spec, sweep_options)
    assert (config.agent.agent, config.agent.encoder, config.env.frame_skip) == ("lstm", "small", 32)
    assert (config.run.seed, config.run.workers, config.run.frames, config.run.run_dir) == (1, 1, 5000, spec.run_dir)
    assert config.env.obs_size == config.agent.obs_size and not config.run.progress
    path = sweep_run.write_run_file(config)
    assert sweep_run.read_run_file(path) == config
    assert sweep_run.command(sweep_run.run_file(spec.run_dir)) == [sys.executable, "-m", "stm_rl.sweep_run", str(path)]


def test_a_preset_is_every_runs_base_and_the_flags_given_override_it(tmp_path, capsys):
    paper = sweep.SweepOptions(agents=("stm",), frame_skips=(4,), seeds=(0,), out=tmp_path, frames=5000,
                               workers_per_run=1, settings={"A3CConfig": {"lr": 3e-4}}, preset="paper")
    config = sweep.run_config(paper.runs()[0], paper)
    assert (config.agent.agent, config.agent.encoder, config.agent.obs_size, config.env.obs_size) == (
        "stm", "paper", 80, 80)
    assert (config.a3c.envs_per_worker, config.a3c.adam_eps, config.a3c.lr) == (1, 1e-3, 3e-4), "lr is the flag's"
    assert sweep.run_config(paper.runs()[0], options(tmp_path)).agent.encoder == "small", "no preset: cpu"
    assert cli_main(["sweep", *FLAGS, "--preset", "paper", "--seeds", "0", "--frames", "5000",
                     "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sweep", *FLAGS, "--preset", "fast", "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "--preset" in capsys.readouterr().err


def test_runs_start_by_frame_skip_then_seed_with_both_agents_of_a_seed_together(tmp_path):
    both = options(tmp_path, agents=("lstm", "stm"), frame_skips=(32, 0), seeds=(0, 1))
    assert [spec.name for spec in both.runs()] == [
        "lstm-skip32-seed0", "stm-skip32-seed0", "lstm-skip32-seed1", "stm-skip32-seed1",
        "lstm-skip0-seed0", "stm-skip0-seed0", "lstm-skip0-seed1", "stm-skip0-seed1"]
    by_seed = dataclasses.replace(both, order="seed")
    assert [spec.name for spec in by_seed.runs()] == [
        "lstm-skip32-seed0", "stm-skip32-seed0", "lstm-skip0-seed0", "stm-skip0-seed0",
        "lstm-skip32-seed1", "stm-skip32-seed1", "lstm-skip0-seed1", "stm-skip0-seed1"]
    assert sorted(spec.name for spec in by_seed.runs()) == sorted(spec.name for spec in both.runs())


def test_a_run_summary_reads_as_empty_until_a_run_has_written_a_valid_one(tmp_path):
    layout = RunDir(tmp_path / "run")
    layout.path.mkdir()
    assert (layout.read_summary(), layout.status(), layout.trained_frames()) == ({}, None, None)
    for unreadable in ("{not json", "[1, 2]", '"completed"'):
        layout.summary.write_text(unreadable)
        assert (layout.read_summary(), layout.status(), layout.trained_frames()) == ({}, None, None), unreadable
    layout.summary.write_text(json.dumps({"status": "interrupted", "counters": {"frames": 1_116_006}}))
    assert (layout.status(), layout.trained_frames()) == ("interrupted", 1_116_006)
    layout.summary.write_text(json.dumps({"status": "completed", "counters": {"frames": "many"}}))
    assert (layout.status(), layout.trained_frames()) == ("completed", None)


def test_a_runs_training_counters_are_its_summarys_or_its_game_logs_if_newer(tmp_path):
    import gzip
    layout = RunDir(tmp_path / "run")
    layout.path.mkdir()
    assert layout.trained() == (0, 0, 0.0)
    layout.summary.write_text(json.dumps({"counters": {"frames": 4_000, "agent_steps": 1_000, "wall_time": 12.5}}))
    assert layout.trained() == (4_000, 1_000, 12.5)
    # a run training now: its game log has gone past the summary of its last segment (and a torn last line)
    game = {"frames": 6_000, "agent_steps": 1_500, "wall_time": 20.0, "score": -21}
    layout.games.write_text(json.dumps({**game, "frames": 5_000}) + "\n" + json.dumps(game) + "\n" + '{"fram')
    assert layout.trained() == (6_000, 1_500, 20.0)
    assert isinstance(layout.trained().frames, int) and isinstance(layout.trained().wall_time, float)
    # a published run has only the compressed log; values that are not numbers count as absent
    layout.games.unlink()
    layout.summary.write_text(json.dumps({"counters": {"frames": "many", "agent_steps": None, "wall_time": True}}))
    with gzip.open(layout.path / RunDir.GAMES_COMPRESSED, "wt") as f:
        f.write(json.dumps(game) + "\n" + json.dumps({**game, "frames": 7_000, "agent_steps": 1_750}) + "\n")
    assert layout.trained() == (7_000, 1_750, 20.0)

def test_agent_step_budgets_per_frame_skip(tmp_path, capsys):
    assert sweep.parse_agent_steps(["4M"], (32, 0)) == {32: 4_000_000, 0: 4_000_000}
    assert sweep.parse_agent_steps(["32=4M", "0=10M"], (32, 0)) == {32: 4_000_000, 0: 10_000_000}
    assert sweep.parse_agent_steps(None, (32,)) == {}
    per_skip = options(tmp_path, frame_skips=(32, 0), frames=0, agent_steps={32: 4_000_000, 0: 10_000_000})
    runs = {spec.frame_skip: sweep.run_config(spec, per_skip).run for spec in per_skip.runs()}
    assert (runs[32].frames, runs[32].agent_steps, runs[0].agent_steps) == (0, 4_000_000, 10_000_000)
    assert per_skip.describe_budget() == "4.0M agent steps at skip 32, 10.0M agent steps at skip 0 each"
    # a completed run is done when its own skip's budget is reached, and resumes when that budget grows
    spec = per_skip.runs()[0]
    fake_trained_run(spec, sweep.run_config(spec, per_skip), "completed", frames=128_000_000)
    assert sweep.trained(spec.run_dir) == (128_000_000, 4_000_000)
    assert sweep.is_finished(spec, per_skip)
    assert not sweep.is_finished(spec, dataclasses.replace(per_skip, agent_steps={32: 5_000_000, 0: 10_000_000}))
    # a run that owes a final evaluation is finished only with its report
    evaluated = dataclasses.replace(per_skip, settings={**SETTINGS, "RunConfig": {"final_eval_games": 20}})
    assert not sweep.is_finished(spec, evaluated)
    (spec.run_dir / "eval-final-skip32.json").write_text(json.dumps({"greedy": True, "scores": [1.0] * 20}))
    assert sweep.is_finished(spec, evaluated)
    assert cli_main(["sweep", *FLAGS, "--frame-skips", "32", "0", "--seeds", "0", "--agent-steps", "32=4M", "0=10M",
                     "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4.0M agent steps at skip 32, 10.0M agent steps at skip 0 each" in out
    assert "lstm-skip32-seed0  done" in out and "lstm-skip0-seed0   start" in out


@pytest.mark.parametrize("flags, message", [
    (["--frame-skips", "32", "0", "--agent-steps", "32=4M"], "--agent-steps must give one budget for each of "
                                                            "--frame-skips 32 0; none for 0"),
    (["--frame-skips", "32", "--agent-steps", "32=4M", "16=4M"], "16 is not swept"),
    (["--frame-skips", "32", "--agent-steps", "32:4M"], "SKIP=COUNT for each frame skip"),
    (["--frame-skips", "32", "0", "--agent-steps", "32=4M", "10M"], "--agent-steps takes one count, or SKIP=COUNT"),
    (["--frame-skips", "32", "--agent-steps", "lots"], "--agent-steps: not a count: 'lots'"),
    (["--frame-skips", "32", "--agent-steps", "32=0"], "--agent-steps must be > 0, got 0 for skip 32"),
])
def test_bad_agent_step_budgets_are_one_line_errors(tmp_path, capsys, flags, message):
    assert cli_main(["sweep", *FLAGS, "--seeds", "0", *flags, "--out", str(tmp_path / "s")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "s").exists()


def test_settings_that_may_change_between_segments(tmp_path):
    sweep_options = options(tmp_path)
    base = sweep.run_config(sweep_options.runs()[0], sweep_options)
    longer = sweep.run_config(sweep_options.runs()[0], options(tmp_path, frames=10**6, workers_per_run=4))
    assert sweep_run.settings_differ(base, longer) == []
    faster = sweep.run_config(sweep_options.runs()[0], options(tmp_path, settings={
        **SETTINGS, "A3CConfig": {"envs_per_worker": 1, "lr": DEFAULTS.lr * 2}}))
    assert sweep_run.settings_differ(base, faster) == [f"--lr {DEFAULTS.lr} -> {DEFAULTS.lr * 2}"]


def test_a_rerun_with_other_flags_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fig3"
    sweep_options = options(out)
    for spec in sweep_options.runs():
        fake_trained_run(spec, sweep.run_config(spec, sweep_options), "interrupted", 900)

    def no_training(*args, **kwargs):
        raise AssertionError("a run was started")

    monkeypatch.setattr(sweep_run.RunProcess, "start", no_training)
    argv = ["sweep", *FLAGS, "--seeds", "0", "1", "--frames", "5000", "--out", str(out)]
    assert cli_main([*argv, "--lr", str(DEFAULTS.lr * 2), "--entropy-coef", str(DEFAULTS.entropy_coef * 2)]) == 2
    error = capsys.readouterr().err
    assert "lstm-skip32-seed0 (and 1 more run(s))" in error and "was trained with other settings" in error
    assert f"--lr {DEFAULTS.lr} -> {DEFAULTS.lr * 2}" in error
    assert f"--entropy-coef {DEFAULTS.entropy_coef} -> {DEFAULTS.entropy_coef * 2}" in error
    assert not (out / "sweep.json").exists()
    # the dry run names every run that differs, and starts nothing either
    assert cli_main([*argv, "--encoder", "paper", "--dry-run"]) == 0
    report = capsys.readouterr().out
    assert report.count("was trained with other settings: --encoder small -> paper") == 2


def test_dry_run_lists_what_a_sweep_would_do(tmp_path, capsys):
    out = tmp_path / "fig3"
    sweep_options = options(out, seeds=(0, 1, 2))
    done, stopped, _ = sweep_options.runs()
    fake_trained_run(done, sweep.run_config(done, sweep_options), "completed", 5120, wall_time=100.0)
    fake_trained_run(stopped, sweep.run_config(stopped, sweep_options), "interrupted", 2048, wall_time=40.0)
    assert cli_main(["sweep", *FLAGS, "--seeds", "0", "1", "2", "--frames", "5000", "--out", str(out),
                     "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.strip().startswith("lstm-")}
    # a whole budget takes 140 s / (1 + 2048/5000) = 99.3 s here: 0.59 of one for seed 1, one for seed 2
    assert "time left, 1 at a time at the rates its runs have measured: 0:02:38" in lines
    assert rows["lstm-skip32-seed0"] == ["done", "5.1k", "160", "7", "-20.50", "-19.25"]
    assert rows["lstm-skip32-seed1"] == ["resume", "(interrupted)", "2.0k", "64", "7", "-20.50", "-19.25"]
    assert rows["lstm-skip32-seed2"] == ["start", "0", "0", "-", "-", "-"]
    assert sorted(p.name for p in out.iterdir()) == ["lstm-skip32-seed0", "lstm-skip32-seed1"], "nothing written"
    # --order seed: every skip of a seed before the next seed
    assert cli_main(["sweep", *FLAGS, "--frame-skips", "32", "4", "--seeds", "0", "1", "--frames", "5000",
                     "--out", str(tmp_path / "other"), "--order", "seed", "--dry-run"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip().startswith("lstm-")]
    assert listed == ["lstm-skip32-seed0", "lstm-skip4-seed0", "lstm-skip32-seed1", "lstm-skip4-seed1"]


def test_sweeps_of_parts_of_a_grid_share_one_manifest(tmp_path, monkeypatch, capsys):
    """A subset of the grid run out of order (or seeds added later) into the same --out: sweep.json keeps the
    lines of the runs the other sweep recorded, in their order, with what their directories say now."""
    out = tmp_path / "fig3"
    grid = options(out, seeds=(0, 1, 2))
    first, second, third = grid.runs()
    for spec in (first, second):
        fake_trained_run(spec, sweep.run_config(spec, grid), "completed", 5120)

    def no_training(*args, **kwargs):
        raise AssertionError("a run was started")

    monkeypatch.setattr(sweep_run.RunProcess, "start", no_training)
    argv = ["sweep", *FLAGS, "--frames", "5000", "--out", str(out)]
    assert cli_main([*argv, "--seeds", "0", "1"]) == 0

    def manifest_runs():
        return [(run["name"], run["state"], run["frames_done"])
                for run in json.loads((out / "sweep.json").read_text())["runs"]]

    assert manifest_runs() == [(first.name, "done", 5120), (second.name, "done", 5120)]
    # the first run's directory goes; the second is found interrupted (resumed elsewhere, stopped); the third
    # is run by a sweep of its own
    fake_trained_run(third, sweep.run_config(third, grid), "completed", 5120)
    summary = json.loads((second.run_dir / "summary.json").read_text())
    (second.run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    for path in sorted(first.run_dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    first.run_dir.rmdir()
    assert cli_main([*argv, "--seeds", "2"]) == 0
    assert manifest_runs() == [(second.name, "interrupted", 5120), (third.name, "done", 5120)]
    (out / "sweep.json").write_text("{not json")  # an unreadable manifest is rewritten with this sweep's runs
    assert cli_main([*argv, "--seeds", "2"]) == 0
    assert manifest_runs() == [(third.name, "done", 5120)]
    capsys.readouterr()


def test_a_run_waits_for_a_previous_trainer_of_its_directory(tmp_path):
    """A retry or re-run waits while another process holds the run directory's lock, then gives up clearly."""
    start = time.monotonic()
    sweep_run.wait_for_previous_trainer(tmp_path, wait_s=5.0)
    assert time.monotonic() - start < 1.0, "nobody holds the lock: no wait"
    with RunDir(tmp_path).lock():
        with pytest.raises(StmRlError, match=f"still being trained by {socket.gethostname()} {os.getpid()} after 1 s"):
            sweep_run.wait_for_previous_trainer(tmp_path, wait_s=1.0)
        assert time.monotonic() - start >= 1.0


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0", "-1"], "--seeds must be >= 0, got -1"),
    (["--seeds", "0", "--workers-per-run", "0"], "--workers-per-run must be >= 1, got 0"),
    (["--seeds", "0", "--retries", "-1"], "--retries must be >= 0, got -1"),
    (["--seeds", "0", "--frame-skips", "-4"], "--frame-skips must be >= 0, got -4"),
    (["--seeds", "0", "--lr", "-1"], "--lr must be > 0"),
    (["--seeds", "0", "--max-episode-frames", "0"], "--max-episode-frames must be a positive integer"),
])
def test_bad_values_are_rejected_before_anything_starts(tmp_path, capsys, flags, message):
    out = tmp_path / "sweep"
    assert cli_main(["sweep", *FLAGS, *flags, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not out.exists()


def test_an_unwritable_out_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli_main(["sweep", *FLAGS, "--seeds", "0", "--out", str(blocker / "sweep")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"stm-rl sweep: error: --out {blocker / 'sweep'}: cannot be created, {blocker} is not")
    assert error.count("\n") == 1


def test_a_killed_sweep_stops_its_runs_with_a_final_checkpoint(tmp_path):
    """SIGKILL the sweep: its training gets SIGTERM (it does not train on unseen) and stops cleanly."""
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "stm_rl.cli", "sweep", *FLAGS, "--seeds", "0", "--frames", "10M",
               "--checkpoint-interval", "1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = out / "lstm-skip32-seed0"
    deadline = time.monotonic() + 120
    while not ((run_dir / "games.jsonl").exists() and RunDir(run_dir).lock_holder()):
        assert time.monotonic() < deadline and process.poll() is None, "the run never started"
        time.sleep(0.2)
    trainer = int(RunDir(run_dir).lock_holder().split()[1])
    process.kill()
    process.wait()
    deadline = time.monotonic() + 60
    while _alive(trainer):
        assert time.monotonic() < deadline, "the run outlived its sweep by a minute"
        time.sleep(0.2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["message"]
    assert (run_dir / "checkpoints" / "final.pt").exists() and RunDir(run_dir).lock_holder() is None


def test_ctrl_c_stops_a_sweep_started_with_sigint_ignored(tmp_path):
    """A background job of a script starts with SIGINT ignored, and Python then installs no Ctrl-C handler of its
    own: the sweep still stops on SIGINT, its run with a final checkpoint."""
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "stm_rl.cli", "sweep", *FLAGS, "--seeds", "0", "--frames", "10M",
               "--checkpoint-interval", "1", "--out", str(out)]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the sweep
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        signal.signal(signal.SIGINT, previous)
    run_dir = out / "lstm-skip32-seed0"
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "checkpoints" / "latest.pt").exists() and RunDir(run_dir).lock_holder()):
            assert time.monotonic() < deadline and process.poll() is None, "the run never checkpointed"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()  # a sweep that ignored the signal; its run follows it (SIGTERM, die_with_parent)
        process.wait()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (run_dir / "checkpoints" / "final.pt").exists()


def test_a_stopping_sweep_sends_each_run_one_sigint(tmp_path):
    """The trainer takes a second SIGINT for "abort now" (no final checkpoint, no summary.json): the sweep's
    Ctrl-C must reach each run once, even though stopping both interrupts every run and then waits on each."""
    # The child sets its own Ctrl-C handler (a test run in the background inherits SIGINT ignored) and then says so.
    script = ("import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    sent: list[int] = []
    real_send_signal = child.send_signal

    def record(number: int) -> None:
        sent.append(number)
        real_send_signal(number)

    child.send_signal = record  # type: ignore[method-assign]
    backend = sweep.LocalBackend(options=None, processes={"run": sweep_run.RunProcess(child)})  # type: ignore[arg-type]
    try:
        codes = backend.stop(grace=30)
    finally:
        child.kill()
        child.wait()
    assert sent.count(signal.SIGINT) == 1 and codes == {"run": -signal.SIGINT}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: it only waits for its parent to read its exit status
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    return True


def test_exit_codes_are_documented_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli_main(["sweep", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 all runs completed, 1 some run failed, 2 bad input, 130 interrupted" in help_text


def test_a_final_evaluation_counts_only_for_the_weights_it_evaluated(tmp_path):
    """A run extended past its budget (a larger --agent-steps) owes a new final evaluation: the report of its
    earlier final weights (trained_frames) no longer counts, so the sweep evaluates the new ones."""
    from stm_rl.evaluate import has_final_evaluation

    run_dir = tmp_path / "lstm-skip0-seed0"
    run_dir.mkdir()

    def state(trained_frames: int, summary_frames: int, games: int = 20) -> bool:
        (run_dir / "eval-final-skip0.json").write_text(json.dumps(
            {"greedy": True, "scores": [-2.0] * games, "trained_frames": trained_frames}))
        (run_dir / "summary.json").write_text(json.dumps({"status": "completed",
                                                          "counters": {"frames": summary_frames}}))
        return has_final_evaluation(run_dir, 0, 20)

    assert state(10_024_202, 10_024_202)
    assert not state(10_024_202, 20_034_423), "the report is of the weights before the extension"
    assert not state(20_034_423, 20_034_423, games=19)


def test_the_sweeps_time_estimate_uses_each_kinds_measured_rate():
    lstm, stm = ("lstm", 0), ("stm", 0)
    timings = [sweep.RunTiming(lstm, 1.0, 100.0),  # a whole budget in 100 s
               sweep.RunTiming(lstm, 0.5, 60.0),   # half of one in 60 s: the kind's rate is 160 s per 1.5 budgets
               sweep.RunTiming(lstm, 0.0, 0.0),
               sweep.RunTiming(stm, 0.0, 0.0)]     # no stm run has trained: no rate to go by
    remaining = sweep.estimate_remaining(timings, parallel=1)
    assert remaining.seconds == pytest.approx(0.5 * 160 / 1.5 + 160 / 1.5)
    assert (remaining.untimed, remaining.interpolated) == ([stm], [])
    # two at a time halve the sum, but never below the longest run left
    assert sweep.estimate_remaining(timings, parallel=2).seconds == pytest.approx(160 / 1.5)
    assert sweep.describe_remaining(remaining) == "ETA >= 0:02:40 (stm at skip 0 not timed yet)"
    assert sweep.describe_remaining(sweep.Remaining(5 * 3600, [], [])) == "ETA 5.0 h"
    assert sweep.estimate_remaining([sweep.RunTiming(stm, 1.0, 50.0)], parallel=1) == (0.0, [], [])


def test_a_kind_with_no_run_yet_is_timed_from_its_agents_other_skips():
    """Seconds per agent step against emulator frames per agent step, a straight line through the agent's
    measured kinds: the network's cost per step plus the emulator's per frame."""
    timings = [sweep.RunTiming(("lstm", 0), 1.0, 1.0, frames=1000, agent_steps=1000, budget_steps=1000),  # 1 ms/step
               sweep.RunTiming(("lstm", 32), 1.0, 4.0, frames=32000, agent_steps=1000, budget_steps=1000),  # 4 ms/step
               sweep.RunTiming(("lstm", 16), 0.0, 0.0, budget_steps=2000),
               sweep.RunTiming(("stm", 32), 0.5, 9.0, frames=16000, agent_steps=500, budget_steps=1000),
               sweep.RunTiming(("stm", 16), 0.0, 0.0, budget_steps=2000)]  # one stm kind measured: no line
    per_step = 0.001 + 15 * 0.003 / 31  # 1 ms at 1 frame per step, 4 ms at 32: read at 16
    assert sweep.seconds_per_step(timings, "lstm", 16) == pytest.approx(per_step)
    assert sweep.seconds_per_step(timings, "stm", 16) is None
    remaining = sweep.estimate_remaining(timings, parallel=1)
    assert remaining.seconds == pytest.approx(2000 * per_step + 0.5 * 9.0 / 0.5)
    assert (remaining.interpolated, remaining.untimed) == ([("lstm", 16)], [("stm", 16)])
    assert sweep.describe_remaining(remaining) == (
        "ETA >= 0:00:14 (lstm at skip 16 timed from the agent's other skips; stm at skip 16 not timed yet)")
