"""Flags generated from config dataclasses."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from stm_rl.config_cli import add_dataclass_flags, dataclass_from_flags, field_docs, given_flags, parse_count


@pytest.mark.parametrize("text, value", [("10M", 10_000_000), ("2.5e6", 2_500_000), ("500k", 500_000),
                                         ("1_000", 1000), ("7", 7), ("1,000,000", 1_000_000)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["lots", "1.5", "10Q", ""])
def test_parse_count_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_count(text)


@dataclass(frozen=True)
class Example:
    """An example config."""

    frames: int = 100
    """How many frames."""
    kind: Literal["a", "b"] = "a"
    """Which kind."""
    verbose: bool = False
    """Talk more."""


def test_flags_carry_docstrings_defaults_and_types():
    assert field_docs(Example) == {"frames": "How many frames.", "kind": "Which kind.", "verbose": "Talk more."}
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Example)
    help_text = parser.format_help()
    assert "--frames FRAMES" in help_text and "How many frames. (default: 100)" in help_text
    args = parser.parse_args(["--frames", "2k", "--kind", "b", "--verbose"])
    assert dataclass_from_flags(Example, args) == Example(frames=2000, kind="b", verbose=True)
    assert given_flags(Example, args) == ["--frames", "--kind", "--verbose"]
    untouched = parser.parse_args([])
    assert dataclass_from_flags(Example, untouched, base=Example(frames=5)) == Example(frames=5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])


def test_differing_settings_top_level_values_and_option_groups():
    from stm_rl.config_cli import describe_changes, differing_settings

    a = {"task": "copy", "training": {"iterations": 4, "seed": 0}, "task_options": {"bits": 4}}
    b = {"task": "rar", "training": {"iterations": 9, "seed": 0}, "task_options": {"bits": 8}}
    differences = differing_settings([a, b], ignore={("training", "iterations")},
                                     option_flags={"task_options": "--task-option"})
    assert differences == {"--task": ["copy", "rar"], "--task-option bits": [4, 8]}
    assert describe_changes(differences) == ["--task copy -> rar", "--task-option bits 4 -> 8"]
    assert differing_settings([a, a]) == {}


@dataclass(frozen=True)
class WithTuple:
    """Tuples and optional numbers."""

    betas: tuple[float, float] = (0.9, 0.999)
    """Two numbers."""
    clip: float | None = None
    """Maybe a number."""


def test_tuple_fields_take_that_many_values():
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, WithTuple)
    args = parser.parse_args(["--betas", "0.5", "0.6", "--clip", "2"])
    assert dataclass_from_flags(WithTuple, args) == WithTuple(betas=(0.5, 0.6), clip=2.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--betas", "0.5"])


def test_replace_typed_checks_names_and_types():
    from stm_rl.config_cli import parse_key_values, replace_typed

    options = parse_key_values(["betas=[0.1, 0.2]", "clip=3"], "--option")
    assert replace_typed(WithTuple(), options, "thing") == WithTuple(betas=(0.1, 0.2), clip=3.0)
    with pytest.raises(ValueError, match="thing has no option 'beta'; its options: betas, clip"):
        replace_typed(WithTuple(), {"beta": 1}, "thing")
    with pytest.raises(ValueError, match="thing: option clip must be"):
        replace_typed(WithTuple(), parse_key_values(["clip=abc"], "--option"), "thing")
    with pytest.raises(ValueError, match="--option expects KEY=VALUE"):
        parse_key_values(["clip"], "--option")


def test_one_resume_rule_budget_execution_and_bookkeeping_may_change():
    """stm_rl.resume: the same three headings for RL and supervised runs; what shapes learning may not change."""
    import dataclasses

    from stm_rl.a3c.config import RL_RESUME, TrainConfig
    from stm_rl.run_dir import to_jsonable
    from stm_rl.supervised.config import SUPERVISED_RESUME

    saved = TrainConfig()
    allowed = dataclasses.replace(saved, run=dataclasses.replace(
        saved.run, frames=5, agent_steps=7, workers=1, checkpoint_interval=9.0, eval_every_updates=3, eval_games=2,
        final_eval_games=20, run_dir="elsewhere"))
    assert RL_RESUME.differences(to_jsonable(saved), to_jsonable(allowed)) == {}
    refused = dataclasses.replace(allowed, a3c=dataclasses.replace(saved.a3c, lr=1e-3),
                                  run=dataclasses.replace(allowed.run, seed=4, moving_average_window=10))
    assert set(RL_RESUME.differences(to_jsonable(saved), to_jsonable(refused))) == {
        "--lr", "--seed", "--moving-average-window"}
    for rule in (RL_RESUME, SUPERVISED_RESUME):
        assert rule.budget and rule.execution and rule.bookkeeping
        assert not (rule.budget & rule.execution or rule.budget & rule.bookkeeping or rule.execution & rule.bookkeeping)
    assert ("training", "iterations") in SUPERVISED_RESUME.budget and ("run", "frames") in RL_RESUME.budget
