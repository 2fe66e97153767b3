"""Bad input to every ``stm-rl`` command: a one-line error naming the flag, exit code 2, nothing created.

One table; each row is a command line, the text its error must contain, and whether it needs a real
checkpoint. ``{out}`` in a row is a fresh folder that must still not exist afterwards; ``{file}`` is a
regular file (a path below it can never be created), ``{dir}`` an existing folder; ``{run}`` is a finished
tiny run, which must come out untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stm_rl.a3c.config import TrainConfig
from stm_rl.cli import main as cli_main
from stm_rl.run_dir import to_jsonable

TRAIN = ["train", "--agent", "lstm", "--encoder", "small", "--no-progress", "--run-dir", "{out}/run"]

CASES = [
    # train: values checked before a run directory exists
    (TRAIN + ["--seed", "-1"], "--seed must be in 0.."),
    (TRAIN + ["--frames", "1e30"], "--frames 1e+30 is beyond any run's reach"),
    (TRAIN + ["--frames", "0"], "--frames must be > 0"),
    (TRAIN + ["--frame-skip", "1000000"], "--frame-skip must be at most 1000"),
    (TRAIN + ["--frame-skip", "-1"], "--frame-skip must be an integer >= 0"),
    (TRAIN + ["--workers", "100000"], "--workers 100000 is more than 4 per CPU core"),
    (TRAIN + ["--workers", "0"], "--workers must be >= 1"),
    (TRAIN + ["--max-episode-frames", "0"], "--max-episode-frames must be a positive integer"),
    (TRAIN + ["--lr", "0"], "--lr must be > 0"),
    (TRAIN + ["--envs-per-worker", "0"], "--envs-per-worker must be >= 1"),
    (TRAIN + ["--sticky-action-prob", "2"], "--sticky-action-prob must be in [0, 1]"),
    (TRAIN + ["--frames", "lots"], "not a count: 'lots'"),
    (TRAIN + ["--agent", "gru"], "invalid choice: 'gru'"),
    (["train", "--run-dir", "{file}/run", "--no-progress"], "--run-dir {file}/run: cannot be created, {file} is not a directory"),
    (["train", "--run-dir", "{file}", "--no-progress"], "--run-dir {file}: exists and is not a directory"),
    (["train", "--resume", "{out}/missing"], "cannot resume: no run directory at {out}/missing"),
    (["train", "--resume", "{run}", "--encoder", "paper"], "cannot change --encoder when resuming"),
    (["train", "--resume", "{run}", "--frames", "1000"], "already used its budget"),
    # evaluate: every flag and output path before a game is played
    (["evaluate", "{run}", "--episodes", "0"], "--episodes must be >= 1"),
    (["evaluate", "{run}", "--seed", "-1"], "--seed must be in 0.."),
    (["evaluate", "{run}", "--frame-skip", "1000000"], "--frame-skip must be in 0..1000"),
    (["evaluate", "{run}", "--max-frames", "0"], "--max-frames must be >= 1"),
    (["evaluate", "{run}", "--video", "{out}/v", "--video-episodes", "-1"], "--video-episodes must be >= 1"),
    (["evaluate", "{run}", "--video-episodes", "2"], "--video-episodes needs --video DIR"),
    (["evaluate", "{run}", "--output", "{file}/scores.json"], "--output {file}/scores.json: cannot be created"),
    (["evaluate", "{run}", "--output", "{dir}"], "--output {dir}: is a directory; give a file name"),
    (["evaluate", "{run}", "--video", "{file}"], "--video {file}: exists and is not a directory"),
    (["evaluate", "{out}/missing"], "no run directory or checkpoint file at {out}/missing"),
    (["evaluate", "{run}", "--checkpoint", "worst"], "invalid choice: 'worst'"),
    # plot
    (["plot", "{run}", "--window", "0"], "--window must be >= 1"),
    (["plot", "{run}", "--output", "{out}/figure.txt"], "unknown figure format '.txt'"),
    (["plot", "{run}", "--output", "{file}/figure.png"], "--output {file}/figure.png: cannot be created"),
    (["plot", "{run}", "--table-csv", "{file}/t.csv"], "--table-csv {file}/t.csv: cannot be created"),
    (["plot", "{run}", "--thresholds", "nan"], "--thresholds must be finite"),
    (["plot", "{run}", "--at-steps", "0", "5M"], "--at-steps must be agent-step counts >= 1, got 0 5000000"),
    (["plot", "{run}", "--at-steps", "many"], "argument --at-steps: not a count: 'many'"),
    (["plot", "{out}/missing"], "no such directory: {out}/missing"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(argv[:1] + argv[-2:]) for argv, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(argv, message, finished_run_template, tmp_path, capsys):
    out, file, folder = tmp_path / "out", tmp_path / "a-file", tmp_path / "a-dir"
    file.write_text("not a folder")
    folder.mkdir()
    names = {"out": str(out), "file": str(file), "dir": str(folder), "run": str(finished_run_template)}
    run_before = sorted((p.relative_to(finished_run_template), p.stat().st_mtime_ns)
                        for p in finished_run_template.rglob("*") if p.name != ".lock")
    try:
        code = cli_main([arg.format(**names) for arg in argv])
    except SystemExit as exit_:  # argparse rejects choices and types itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.format(**names) in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    assert not out.exists(), "nothing is created for a command that never started"
    assert list(folder.iterdir()) == []
    after = sorted((p.relative_to(finished_run_template), p.stat().st_mtime_ns)
                   for p in finished_run_template.rglob("*") if p.name != ".lock")
    assert after == run_before, "the run used as input was not touched"



@pytest.mark.parametrize("variable, value", [("STM_RL_FP32_MATMUL", "openblas"), ("STM_RL_FUSED_KERNELS", "fast")])
def test_a_bad_environment_setting_is_one_line_naming_the_variable(variable, value, monkeypatch, tmp_path, capsys):
    """The settings read from the environment (stm_rl/fastpath/fp32_matmul.py, stm_rl/fastpath/kernels.py) are
    checked before a run starts, like flags."""
    monkeypatch.setenv(variable, value)
    code = cli_main(["train", "--frames", "1000", "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"{variable}={value!r}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()

# ---------------------------------------------------------------- plot: what it averages, where it writes
def write_run(run_dir: Path, seed: int, scores, **changes) -> Path:
    """A synthetic run: config.json (defaults, lstm skip 4, with ``changes`` as {"group.field": value}) and its
    game log."""
    data = to_jsonable(TrainConfig())
    data["agent"]["agent"], data["env"]["frame_skip"], data["run"]["seed"] = "lstm", 4, seed
    for key, value in changes.items():
        group, name = key.split(".")
        data[group][name] = value
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"config": data}))
    (run_dir / "games.jsonl").write_text("".join(
        json.dumps({"game": i, "frames": 1000 * i, "wall_time": 2.0 * i, "score": s}) + "\n"
        for i, s in enumerate(scores, start=1)))
    return run_dir


def test_plot_refuses_to_average_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
    scores = np.linspace(-21, 0, 30).tolist()
    write_run(tmp_path / "runs" / "a", 0, scores, **{"agent.encoder": "small", "a3c.lr": 0.0001})
    write_run(tmp_path / "runs" / "b", 1, scores, **{"agent.encoder": "paper", "a3c.lr": 0.001, "env.obs_size": 80})
    write_run(tmp_path / "runs" / "c", 2, scores, **{"agent.encoder": "small", "a3c.lr": 0.0001,
                                                      "run.checkpoint_interval": 5.0})
    figure = tmp_path / "f.png"
    assert cli_main(["plot", str(tmp_path / "runs"), "--output", str(figure)]) == 2
    err = capsys.readouterr().err
    assert "differ in more than the seed" in err and "--force" in err
    assert "--encoder: small (a c), paper (b)" in err and "--lr: 0.0001 (a c), 0.001 (b)" in err
    assert "checkpoint-interval" not in err, "settings that do not change learning may differ"
    assert "obs-size" not in err, "derived settings are not reported (they follow the encoder)"
    assert not figure.exists()
    assert cli_main(["plot", str(tmp_path / "runs"), "--output", str(figure), "--force"]) == 0
    assert "warning: runs averaged into one curve differ" in capsys.readouterr().err and figure.exists()


def test_plot_refuses_a_repeated_seed(tmp_path, capsys):
    write_run(tmp_path / "runs" / "first", 3, [-21, -20])
    write_run(tmp_path / "runs" / "copy", 3, [-21, -20])
    assert cli_main(["plot", str(tmp_path / "runs"), "--output", str(tmp_path / "f.png")]) == 2
    assert "seed 3 repeated (copy first)" in capsys.readouterr().err


def test_plot_output_without_a_suffix_says_the_file_it_wrote(tmp_path, capsys):
    write_run(tmp_path / "run", 0, [-21, -20, -19])
    assert cli_main(["plot", str(tmp_path / "run"), "--output", str(tmp_path / "fig")]) == 0
    assert f"figure written to {tmp_path / 'fig.png'}" in capsys.readouterr().out
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "fig").exists()


def test_errors_name_flags_not_fields():
    from stm_rl.config_cli import with_flag_names

    assert with_flag_names("max_episode_frames must be > 0, got 0", ["max_episode_frames", "frames"]) == \
        "--max-episode-frames must be > 0, got 0"
    assert with_flag_names("frames must be > 0", ["frames"]) == "--frames must be > 0"
    assert with_flag_names("unknown game 'x'", ["game"]) == "unknown game 'x'", "one-word names only in front"


def test_help_shows_the_real_default_run_directory(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: runs/<agent>-<encoder>-skip<frame skip>-seed<seed>)" in help_text
    assert "runs/pong" not in help_text


def test_follow_up_commands_are_spelled_for_make_users(monkeypatch):
    from stm_rl.conventions import suggest

    monkeypatch.delenv("MAKELEVEL", raising=False)
    assert suggest("train", ["--resume", "runs/my run"]) == "stm-rl train --resume 'runs/my run'"
    monkeypatch.setenv("MAKELEVEL", "1")
    assert suggest("train", ["--resume", "runs/a"]) == 'make train ARGS="--resume runs/a"'
