"""The action count: probed from the environment when a run starts, saved with the run, used on resume and
evaluation; checkpoints from before it was saved load as Pong's 6 actions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from envs import EnvConfig, probe_action_count
from stm_rl.a3c.checkpoint import LEGACY_NUM_ACTIONS, load_agent_from_checkpoint, load_resume_checkpoint
from stm_rl.a3c.trainer import Trainer
from stm_rl.cli import main as cli_main
from stm_rl.run_dir import RunDir


def _edit_checkpoint(path: Path, edit) -> None:
    record = torch.load(path, weights_only=False)
    edit(record)
    torch.save(record, path)


def test_probe_reads_the_games_minimal_action_set():
    assert probe_action_count(EnvConfig(game="pong")) == 6
    assert probe_action_count(EnvConfig(game="breakout")) == 4


def _resumed_trainer(run_dir: Path) -> Trainer:
    """The trainer ``stm-rl train --resume RUN_DIR`` builds (not run: its workers are tested elsewhere)."""
    record = load_resume_checkpoint(run_dir)
    config = record["config"]
    return Trainer(dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir=run_dir)),
                   resume_from=record)


def test_a_game_with_another_action_count_is_trained_saved_and_evaluated(tmp_path, tiny_train):
    run_dir = tmp_path / "breakout"
    assert cli_main(["train", *tiny_train, "--game", "breakout", "--frames", "1500", "--run-dir", str(run_dir)]) == 0
    layout = RunDir(run_dir)
    assert json.loads(layout.config.read_text())["num_actions"] == 4
    record = torch.load(layout.checkpoint("final"), weights_only=False)
    assert record["num_actions"] == 4 and record["model"]["actor.weight"].shape[0] == 4
    model, config, _ = load_agent_from_checkpoint(layout.checkpoint("final"))
    assert model.num_actions == model.actor.out_features == 4 and config.env.game == "breakout"
    assert cli_main(["evaluate", str(run_dir), "--episodes", "1", "--max-frames", "500", "--no-progress"]) == 0
    resumed = _resumed_trainer(run_dir)  # the shared model is rebuilt with 4 actions and takes the saved weights
    assert resumed.shared_model.num_actions == 4
    torch.testing.assert_close(resumed.shared_model.actor.weight, record["model"]["actor.weight"])


def test_a_checkpoint_without_the_action_count_loads_as_pong(finished_run):
    layout = RunDir(finished_run)
    for name in ("latest", "final"):
        _edit_checkpoint(layout.checkpoint(name), lambda record: record.pop("num_actions"))
    model, _, record = load_agent_from_checkpoint(layout.checkpoint("final"))
    assert "num_actions" not in record and model.num_actions == LEGACY_NUM_ACTIONS == 6
    trainer = _resumed_trainer(finished_run)
    assert trainer.shared_model.num_actions == 6
    assert trainer._save("latest") is None
    assert torch.load(layout.checkpoint("latest"), weights_only=False)["num_actions"] == 6, "saved from now on"


def test_a_checkpoint_made_for_another_action_count_is_not_resumed(finished_run, capsys):
    _edit_checkpoint(RunDir(finished_run).checkpoint("latest"), lambda record: record.update(num_actions=5))
    assert cli_main(["train", "--resume", str(finished_run), "--frames", "6000"]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint's agent has 5 actions but the 'pong' environment has 6" in err and "Traceback" not in err


def test_an_agent_refuses_an_environment_with_another_action_count():
    """Workers, the in-training evaluator and `stm-rl evaluate` all check through ActorCritic.check_action_count."""
    import pytest

    from agents import AgentConfig, build_agent

    agent = build_agent(AgentConfig(agent="lstm"), 4)
    agent.check_action_count(4)
    with pytest.raises(ValueError, match="the environment has 6 actions, the agent 4"):
        agent.check_action_count(6)
