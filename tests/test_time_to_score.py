"""benchmarks/time_to_score.py: milestones read from a game log, report and figure."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

from stm_rl.a3c.config import TrainConfig, training_command
from stm_rl.run_dir import to_jsonable, write_json_atomic

_SPEC = importlib.util.spec_from_file_location(
    "time_to_score", Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_score.py")
time_to_score = importlib.util.module_from_spec(_SPEC)
sys.modules["time_to_score"] = time_to_score  # dataclasses look their module up while the class is made
_SPEC.loader.exec_module(time_to_score)


def _write_run(run_dir: Path, scores: list[float], config: TrainConfig, **record) -> None:
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "config.json", {"config": to_jsonable(config), "versions": {"torch": "x"},
                                                "machine": "2 cores, test CPU", **record})
    with open(run_dir / "games.jsonl", "w") as log:
        for i, score in enumerate(scores):
            log.write(json.dumps({"game": i + 1, "wall_time": 10.0 * (i + 1), "frames": 1000 * (i + 1),
                                  "agent_steps": 250 * (i + 1), "score": score}) + "\n")


def test_milestones_need_a_full_window_and_mark_the_first_game_reaching_each_threshold(tmp_path):
    # 4 games at +21 first: a 4-game window would pass 0 at game 4 if partial windows counted.
    scores = [21.0] * 3 + [-21.0] * 7 + [0.0] * 10 + [20.0] * 10
    _write_run(tmp_path / "run", scores, TrainConfig())
    score = time_to_score.score_run(tmp_path / "run", window=10, thresholds=(-15.0, 0.0, 18.0, 20.5))
    # Game 10 (first full window): mean of 3*21 - 7*21 = -8.4 >= -15.
    assert score.milestones[-15.0].games == 10
    assert score.milestones[-15.0].frames == 10_000 and score.milestones[-15.0].agent_steps == 2_500
    averages = [sum(scores[i - 9:i + 1]) / 10 for i in range(9, len(scores))]
    first_zero = next(i for i, a in enumerate(averages) if a >= 0) + 10
    assert score.milestones[0.0].games == first_zero
    assert score.milestones[0.0].wall_time == pytest.approx(10.0 * first_zero)
    assert score.milestones[18.0].games == 29  # games 20..29: one 0 and nine 20s
    assert score.milestones[20.5] is None  # never reached
    assert score.best.threshold == pytest.approx(20.0) and score.best.games == 30
    assert score.machine == "2 cores, test CPU"


def test_command_lists_the_settings_that_differ_from_the_defaults(tmp_path):
    config = TrainConfig.from_dict({**to_jsonable(TrainConfig()),
                                    "a3c": {**to_jsonable(TrainConfig().a3c), "lr": 0.003},
                                    "agent": {**to_jsonable(TrainConfig().agent), "agent": "lstm"}})
    command = training_command(config)
    assert command.startswith("stm-rl train")
    assert "--lr 0.003" in command and "--agent lstm" in command
    assert "--gamma" not in command  # unchanged settings are left out


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_the_command_starts_the_same_run(preset):
    from stm_rl.a3c.config import preset_config
    from stm_rl.a3c.train_command import config_from_args
    from stm_rl.cli import build_parser

    base = preset_config(preset)
    config = dataclasses.replace(base, a3c=dataclasses.replace(base.a3c, lr=0.003, amsgrad=not base.a3c.amsgrad),
                                 run=dataclasses.replace(base.run, run_dir=Path("runs/x"), seed=3, frames=2_000_000))
    arguments = shlex.split(training_command(config))[1:]  # after "stm-rl"
    assert config_from_args(build_parser().parse_args(arguments)) == config


def test_the_recorded_command_is_reported_and_an_older_run_gets_a_rebuilt_one(tmp_path):
    # The command recorded when the run started holds with the defaults of the code that ran it; a run without
    # one gets the command rebuilt against today's defaults, marked so.
    _write_run(tmp_path / "new", [0.0] * 5, TrainConfig(), command="stm-rl train --lr 0.001 --run-dir x")
    _write_run(tmp_path / "old", [0.0] * 5, TrainConfig())
    assert time_to_score.score_run(tmp_path / "new", 5, (0.0,)).command == "stm-rl train --lr 0.001 --run-dir x"
    rebuilt = time_to_score.score_run(tmp_path / "old", 5, (0.0,)).command
    assert rebuilt == f"{training_command(TrainConfig())} {time_to_score.REBUILT}"


def test_report_and_figure_are_written(tmp_path):
    _write_run(tmp_path / "runs" / "a", [-21.0] * 5 + [-10.0] * 5, TrainConfig())
    code = time_to_score.main([str(tmp_path / "runs"), "--window", "5", "--markdown", str(tmp_path / "t.md"),
                               "--figure", str(tmp_path / "t.png")])
    assert code == 0
    report = (tmp_path / "t.md").read_text()
    assert "| a |" in report and "-10.00 at" in report
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert time_to_score.main([str(tmp_path / "missing")]) == 2
    assert time_to_score.main(["--launch", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("time_to_score.py: error:") for line in err)
    assert "--run-dir" in err[1]


def test_a_run_records_the_machine_its_times_were_measured_on(tmp_path):
    from stm_rl.run_dir import machine_description, read_json, write_config

    write_config(tmp_path, TrainConfig())
    machine = read_json(tmp_path / "config.json")["machine"]
    assert machine == machine_description() and machine.split()[1] == "cores,"
    _write_run(tmp_path / "old", [-21.0] * 3, TrainConfig())  # a config.json with a recorded machine
    assert time_to_score.score_run(tmp_path / "old", window=2, thresholds=(0.0,)).machine == "2 cores, test CPU"
