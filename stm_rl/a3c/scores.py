"""Score bookkeeping of an A3C run: its totals, the moving average of game scores, and the milestones.

The trainer keeps one of each; ``benchmarks/time_to_score.py`` reads finished runs with the same
:class:`Milestones` rule (the first game at which the full-window moving average reaches a threshold).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MILESTONES = (-15.0, 0.0, 18.0)
"""Moving-average scores whose first crossing is announced and recorded (Pong: learning, even, solved)."""


@dataclass
class Counters:
    """Totals of a run across all its segments (a resumed run continues them)."""

    agent_steps: int = 0
    frames: int = 0
    updates: int = 0
    games: int = 0
    wall_time: float = 0.0
    segments: int = 0
    """How many times the run was started (1 + number of resumes)."""


@dataclass
class ScoreTracker:
    """Raw game scores: moving average over the last ``window`` games and the best average so far."""

    window: int
    recent: deque = field(default_factory=deque)
    best_average: float = -math.inf

    def add(self, score: float) -> float:
        self.recent.append(score)
        if len(self.recent) > self.window:
            self.recent.popleft()
        return self.average

    @property
    def average(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else math.nan

    @property
    def full(self) -> bool:
        """Whether the average covers a whole window (a 100-game average needs 100 games)."""
        return len(self.recent) >= self.window


@dataclass(frozen=True)
class Milestone:
    """Where the full-window moving average first reached a threshold."""

    threshold: float
    average: float
    wall_time: float
    frames: int
    agent_steps: int
    games: int


@dataclass
class Milestones:
    """The thresholds of :data:`MILESTONES` reached so far (the same rule as benchmarks/time_to_score.py)."""

    thresholds: tuple[float, ...] = MILESTONES
    reached: dict[float, Milestone] = field(default_factory=dict)

    def check(self, scores: ScoreTracker, counters: Counters) -> list[Milestone]:
        """The milestones the latest game reached for the first time."""
        if not scores.full:
            return []
        new = [Milestone(t, scores.average, counters.wall_time, counters.frames, counters.agent_steps, counters.games)
               for t in self.thresholds if t not in self.reached and scores.average >= t]
        self.reached.update((m.threshold, m) for m in new)
        return new

    @classmethod
    def from_game_log(cls, records: list[dict], window: int,
                      thresholds: tuple[float, ...] = MILESTONES) -> "Milestones":
        """Milestones reached by the games of a game log (a resumed run announces no old news; the
        time-to-score benchmark reads finished runs)."""
        milestones, scores = cls(thresholds), ScoreTracker(window)
        for record in records:
            scores.add(record["score"])
            counters = Counters(agent_steps=record.get("agent_steps", 0), frames=record.get("frames", 0),
                                games=record.get("game", 0), wall_time=record.get("wall_time", 0.0))
            milestones.check(scores, counters)
        return milestones

    def to_json(self) -> dict[str, Any]:
        return {f"{t:+g}": dataclasses.asdict(m) for t, m in sorted(self.reached.items())}
