"""benchmarks/supervised_table.py: runs every (task, model, seed), resumes and skips, writes the side-by-side
table (CSV + Markdown, mean +- std over seeds, paper values), the curves figure and the bAbI report."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from stm_rl.run_dir import to_jsonable
from stm_rl.supervised.config import resolve_config
from stm_rl.supervised.tasks import make_task
from stm_rl.supervised.tasks.base import Plateau
from stm_rl.supervised.train import train

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "supervised_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("supervised_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_table_trains_resumes_skips_and_reports(table, tmp_path, capsys):
    out = tmp_path / "out"
    # a run interrupted at iteration 1 of 3: the table must resume it, not start over
    partial = resolve_config("nth-farthest", "lstm", "smoke", iterations=1, eval_every=1, seed=1,
                             run_dir=str(out / "nth-farthest-lstm-seed1"))
    train(partial, progress=False)
    args = ["--tasks", "nth-farthest", "copy", "--models", "lstm", "rmc", "--seeds", "0", "1", "--preset", "smoke",
            "--iterations", "3", "--eval-every", "1", "--out", str(out)]
    assert table.main(args) == 0
    resumed = [json.loads(line) for line in (out / "nth-farthest-lstm-seed1" / "evaluations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in resumed if r["split"] == "valid"] == [1, 2, 3]
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["model"]) for r in rows] == [("nth-farthest", "lstm"), ("nth-farthest", "rmc"),
                                                        ("copy", "lstm"), ("copy", "rmc")]
    assert all(r["seeds"] == "2" and r["iterations"] == "3" and "+-" in r["here (test, mean +- std)"] for r in rows)
    tests = [json.loads((out / f"copy-rmc-seed{s}" / "summary.json").read_text())["test"]["bit_error"] for s in (0, 1)]
    mean = sum(tests) / 2
    assert rows[3]["here (test, mean +- std)"].startswith(f"{mean:.3g} +- ")
    assert rows[1]["paper (its setting)"] == "accuracy 0.91 (8 vectors in R^16)"  # RMC's, from the spec
    assert rows[0]["paper (its setting)"] == "-" and rows[0]["shortcut plateau"].startswith("label-only 0.5 (loss")
    assert rows[0]["left the plateau (> 3 SE)"].startswith("label-only: ")  # smoke: 4 vectors, 2/4
    assert rows[2]["shortcut plateau"].startswith("chance 4 (loss 0.693)")  # smoke copy: 4 bits x 2 steps / 2
    assert "| copy | rmc |" in (out / "table.md").read_text() and (out / "curves.png").stat().st_size > 0
    stamp = (out / "copy-rmc-seed0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert table.main(args) == 0  # everything finished: nothing is trained again
    assert (out / "copy-rmc-seed0" / "summary.json").stat().st_mtime_ns == stamp
    assert "==" not in capsys.readouterr().out


def test_a_run_not_finished_yet_is_reported_in_progress(table, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "nth-farthest-lstm-seed0"
    train(resolve_config("nth-farthest", "lstm", "smoke", iterations=2, eval_every=1, seed=0, run_dir=str(run_dir)),
          progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))  # as a stopped sitting
    valid = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    best = max((r for r in valid if r["split"] == "valid"), key=lambda r: r["accuracy"])
    assert table.main(["--report-only", "--tasks", "nth-farthest", "--models", "lstm", "rmc", "--preset", "smoke",
                       "--out", str(out)]) == 0
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["here (test, mean +- std)"] == (f"in progress, seed 0: valid {best['accuracy']:.3g} at iteration "
                                                  f"{best['iteration']} (validated to 2)")
    assert rows[0]["seeds"] == "0" and rows[1]["here (test, mean +- std)"] == "not run"


@pytest.mark.parametrize("args, message", [
    (["--tasks", "nope"], "--tasks: unknown task 'nope'"),
    (["--models", "nope"], "--models: unknown model 'nope'"),
    (["--seeds", "-1"], "--seeds must be >= 0"),
    (["--iterations", "0"], "--iterations must be > 0"),
    (["--minutes", "nan"], "--minutes must be > 0"),
    (["--tasks"], "--tasks: name at least one task (none only with --report-only --babi-run)"),
    (["--optimizer", "authors", "--tasks", "copy", "shortest-path"],
     "--optimizer authors: the authors' code trains no 'shortest-path'"),
])
def test_table_bad_input_exits_2(table, args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        table.main([*args, "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_authors_optimiser_at_the_presets_sizes_and_one_optimiser_per_folder(table, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--tasks", "copy", "--models", "lstm", "--preset", "smoke", "--iterations", "2", "--eval-every", "1",
            "--out", str(out)]
    assert table.main([*args, "--optimizer", "authors"]) == 0
    config = json.loads((out / "copy-lstm-seed0" / "config.json").read_text())["config"]
    smoke = resolve_config("copy", "lstm", "smoke")
    assert config["optimization"]["optimizer"] == "rmsprop" and config["optimization"]["rmsprop_alpha"] == 0.95
    assert config["optimization"]["clip_value"] == 10.0 and config["optimization"]["clip_norm"] is None
    assert config["training"]["batch_size"] == smoke.training.batch_size  # the preset's sizes
    assert config["model_options"] == to_jsonable(smoke.model_options)
    with open(out / "table.csv", newline="") as f:
        assert next(csv.DictReader(f))["other"] == "rmsprop lr 0.0001 momentum 0.9 alpha 0.95, values +-10"
    capsys.readouterr()
    assert table.main(args) == 2  # the preset's optimiser into the same folder: refused, the run untouched
    assert capsys.readouterr().err.strip() == (
        f"supervised_table.py: error: --optimizer preset: {out / 'copy-lstm-seed0'} was trained with another "
        "optimiser (rmsprop lr 0.0001 momentum 0.9 alpha 0.95, values +-10); give this one its own --out")


def test_babi_report_lists_every_task_of_the_latest_evaluation(table, tmp_path, capsys):
    run = tmp_path / "babi"
    run.mkdir()
    records = [{"iteration": 10, "split": "valid", "elapsed_s": 36.0, "error_qa1": 50.0, "error_qa2": 40.0,
                "mean_error": 45.0, "tasks_solved": 0.0},
               {"iteration": 20, "split": "valid", "elapsed_s": 72.0, "error_qa1": 4.0, "error_qa2": 30.0,
                "mean_error": 17.0, "tasks_solved": 1.0}]
    (run / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = table.babi_report(run)
    assert "valid split at iteration 20" in report
    assert "| qa1 | 4.0 | yes | 4.0 (20) |" in report and "| qa2 | 30.0 | no | 30.0 (20) |" in report
    assert "| mean | 17.00" in report and not (tmp_path / "babi.png").exists()

    records[1]["error_qa2"] = 45.0  # task 2 was better before: its best validation is that of iteration 10
    records.append({**records[1], "split": "test", "error_qa1": 3.0, "error_qa2": 44.0, "mean_error": 23.5})
    (run / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = table.babi_report(run, tmp_path)
    assert "test split at iteration 20" in report
    assert "| qa1 | 3.0 | yes | 4.0 (20) |" in report and "| qa2 | 44.0 | no | 40.0 (10) |" in report
    assert (tmp_path / "babi.png").stat().st_size > 0

    out = tmp_path / "only-babi"  # a bare --tasks: the bAbI report and nothing else
    assert table.main(["--report-only", "--tasks", "--babi-run", str(run), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["babi.md", "babi.png"]
    assert (out / "babi.md").read_text() == report
    for run_dir, problem in [(tmp_path / "missing", "no such run directory"), (tmp_path, "no evaluations yet")]:
        capsys.readouterr()
        assert table.main(["--report-only", "--tasks", "--babi-run", str(run_dir), "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err.strip() == f"supervised_table.py: error: --babi-run {run_dir}: {problem}"
        assert not (tmp_path / "o").exists()


def plateau_record(values, test_size=1000):
    config = resolve_config("nth-farthest", "lstm", "smoke", test_size=test_size)
    return [{"test": {"accuracy": v}, "config": config} for v in values]


def test_left_the_plateau_by_three_standard_errors_over_seeds(table):
    plateau = Plateau("label-only", 0.25, None, "")
    assert table.left_plateau(plateau_record([0.30, 0.31, 0.29]), "accuracy", plateau, True).startswith(
        "label-only: yes (+8.7 SE")
    assert table.left_plateau(plateau_record([0.24, 0.30, 0.25]), "accuracy", plateau, True).startswith(
        "label-only: no")
    one = table.left_plateau(plateau_record([0.27], test_size=10_000), "accuracy", plateau, True)
    assert one == "label-only: yes (+4.5 SE, test-set SE)"  # binomial SE sqrt(0.27 x 0.73 / 10000)
    bits = [{"test": {"bit_error": 3.0}, "config": None}]
    assert table.left_plateau(bits, "bit_error", Plateau("chance", 12.0, None, ""), False) == "chance: n/a (1 seed)"


def test_paper_values_carry_their_setting_and_scale_to_the_answer_bits(table):
    assert ("rar", "dnc") not in table.PAPER_VALUES  # the paper ran no DNC on RAR
    rmc = table.PAPER_VALUES[("rar", "rmc")]
    assert "32 bits" in rmc.setting and table.paper_text(rmc, "bit_error").startswith("bit_error ~30 = 31% of")
    assert table.paper_here(rmc, make_task("rar", bits=8)) == "7.5 of 24 bits"  # 30/96 of 3 x 8 bits
