"""The resume rule, one for every kind of run: ``stm-rl train --resume``, a sweep continuing its runs, and
``stm-rl supervised --resume`` (also ``python -m stm_rl.supervised``).

A run continued from its latest checkpoint keeps every setting that decides what it learns and how it is
scored (the agent or model, the task or game, the optimizer, the seeds, the moving-average window...): those
come from the checkpoint. It may change only

- its **budget**: how long it trains (RL: ``--frames``, ``--agent-steps``; supervised: ``--iterations``,
  ``--time-limit-minutes``); a larger budget continues a completed run;
- its **execution**: where and how fast it runs (RL: ``--workers``; supervised: ``--device``, ``--threads``);
- its **bookkeeping**: how it saves, reports and evaluates itself without changing what it learns (checkpoint
  interval, progress display, evaluation interval and games, where its directory and its data are).

Each side lists its settings under these three headings as a :class:`ResumeRule` beside its config
(:data:`stm_rl.a3c.config.RL_RESUME`, :data:`stm_rl.supervised.config.SUPERVISED_RESUME`), and every check
compares through :func:`stm_rl.config_cli.differing_settings`. Settings derived from others (the RL
environment's frame size, which follows the encoder) are not settings of their own and never differ by choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from stm_rl.config_cli import differing_settings

Setting = tuple[str, str]
"""``(group, field)`` in a config's JSON form (``("run", "frames")``)."""


@dataclass(frozen=True)
class ResumeRule:
    """The settings of one kind of run that a resumed segment may change, by the rule's three headings."""

    budget: frozenset[Setting]
    execution: frozenset[Setting]
    bookkeeping: frozenset[Setting]
    derived: frozenset[Setting] = frozenset()
    """Settings that follow from others (not chosen, so never a difference a user made)."""

    @property
    def may_change(self) -> frozenset[Setting]:
        return self.budget | self.execution | self.bookkeeping | self.derived

    def fields_of(self, group: str) -> tuple[str, ...]:
        """The names of the group's settings that may change (``("frames", "agent_steps", ...)`` for "run")."""
        return tuple(sorted(name for owner, name in self.may_change if owner == group))

    def differences(self, saved: Mapping[str, Any], wanted: Mapping[str, Any],
                    option_flags: Optional[Mapping[str, str]] = None) -> dict[str, list[Any]]:
        """The settings that differ between two configs (JSON form) and may not: ``{"--lr": [1e-4, 3e-4]}``."""
        return differing_settings([saved, wanted], ignore=self.may_change, option_flags=option_flags)
