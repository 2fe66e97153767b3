"""The run logger: one call writes a metric to metrics.jsonl and to TensorBoard, with the same step."""

from __future__ import annotations

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stm_rl.logger import METRICS_FILE, MetricLogger, read_metrics
from stm_rl.run_dir import RunDir


def _tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(RunDir(run_dir).tensorboard))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_each_value_goes_to_jsonl_and_tensorboard_at_its_step(tmp_path):
    with MetricLogger.in_run_dir(tmp_path) as log:
        log.log(100, {"charts/episodic_return": -21.0, "losses/value_loss": 0.5})
        log.log(250, {"charts/episodic_return": -19.0, "losses/entropy": math.nan})
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == [100, 250]
    assert records[0]["charts/episodic_return"] == -21.0 and records[0]["losses/value_loss"] == 0.5
    assert records[1]["losses/entropy"] is None, "NaN is written as null (valid JSON)"
    assert all(abs(r["wall_time"] - records[0]["wall_time"]) < 60 for r in records)
    scalars = _tensorboard_scalars(tmp_path)
    assert scalars["charts/episodic_return"] == [(100, -21.0), (250, -19.0)]
    assert scalars["losses/value_loss"] == [(100, 0.5)]


def test_resuming_drops_what_was_logged_after_the_checkpoint(tmp_path):
    with MetricLogger.in_run_dir(tmp_path) as log:
        for step in (10, 20, 30, 40):
            log.log(step, {"charts/games": step / 10})
    with MetricLogger.in_run_dir(tmp_path, resume_step=20) as log:  # the checkpoint was taken at step 20
        log.log(25, {"charts/games": 2.5})
    assert [(r["step"], r["charts/games"]) for r in read_metrics(tmp_path / METRICS_FILE)] == \
        [(10, 1.0), (20, 2.0), (25, 2.5)]
    assert _tensorboard_scalars(tmp_path)["charts/games"] == [(10, 1.0), (20, 2.0), (25, 2.5)]


def test_without_tensorboard_and_reserved_names(tmp_path):
    with MetricLogger(tmp_path / "m.jsonl") as log:
        log.log(1, {"losses/x": 1.0})
        with pytest.raises(ValueError, match="reserved"):
            log.log(2, {"step": 3.0})
    assert not (tmp_path / "tb").exists()
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 1, "wall_time": pytest.approx(
        read_metrics(tmp_path / "m.jsonl")[0]["wall_time"]), "losses/x": 1.0}]
