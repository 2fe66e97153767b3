"""What a training run shows and records as it goes: the game log, the metrics, the progress display (a live
bar on a terminal, otherwise a plain line every ``progress_interval`` seconds with rate and ETA:
:mod:`stm_rl.progress`), the
time-to-score milestones, and the watch that notices a worker which stopped making updates.

The trainer (:mod:`stm_rl.a3c.trainer`) owns the run; this module only reports on it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from stm_rl.a3c.config import TrainConfig
from stm_rl.a3c.scores import Counters, Milestone, ScoreTracker
from stm_rl.config_cli import format_count
from stm_rl.logger import MetricLogger
from stm_rl.progress import ProgressDisplay, clock
from stm_rl.run_dir import JsonlWriter, RunDir

__all__ = ["GAME_METRICS", "STALL_SECONDS", "RunLog", "StallWatch"]

STALL_SECONDS = 60.0
"""A worker that has made no update for this long (while the run goes on) is reported as stalled."""
GAME_METRICS = ("charts/episodic_return", "charts/episodic_return_avg100", "charts/episodic_length", "charts/games")
"""The metrics logged once per finished game (score, moving average, length, game index): the game log's content."""


@dataclass
class StallWatch:
    """Notices a worker whose update counter stands still (e.g. SIGSTOPped, or stuck) for ``seconds``."""

    seconds: float
    last_change: dict[int, tuple[int, float]] = field(default_factory=dict)
    stalled: set = field(default_factory=set)

    def check(self, updates: list[int], now: float) -> list[str]:
        """One line per worker that just stalled or just came back."""
        lines = []
        for rank, count in enumerate(updates):
            previous = self.last_change.get(rank)
            if previous is None or previous[0] != count:
                self.last_change[rank] = (count, now)
                if rank in self.stalled:
                    self.stalled.discard(rank)
                    lines.append(f"worker {rank} is making updates again")
            elif now - previous[1] >= self.seconds and rank not in self.stalled:
                self.stalled.add(rank)
                lines.append(f"worker {rank} has made no update for {now - previous[1]:.0f} s "
                             "(stopped, e.g. by SIGSTOP, or stuck); the other workers go on")
        return lines


class RunLog:
    """Game log (JSONL), metrics (:class:`stm_rl.logger.MetricLogger`: metrics.jsonl and tensorboard) and the
    progress display of one run. Every metric is logged at the run's emulator-frame count.

    On a terminal (and with ``--progress``) a live bar; otherwise (``--no-progress``, a log file, nohup, CI)
    one plain line every ``progress_interval`` seconds. Milestones and notes print as lines in both cases.
    """

    UPDATE_LOG_INTERVAL_S = 10.0
    """The losses and memory norms of the updates in this many seconds are logged as their means."""

    def __init__(self, layout: RunDir, config: TrainConfig, counters: Counters, progress: bool) -> None:
        self.games = JsonlWriter(layout.games)
        self.evaluations = JsonlWriter(layout.evaluations)
        # Metrics logged after the frame count the run starts from belong to weights that were lost (a run
        # killed after its last checkpoint, or before its first): dropped, like the games of such a run.
        self.metrics = MetricLogger.in_run_dir(layout.path, resume_step=counters.frames)
        self.pending_updates: list[dict[str, float]] = []
        self.last_update_log = time.monotonic()
        self.last_score: Optional[float] = None
        self.rate_window: deque = deque(maxlen=40)  # (time, frames, steps) over the last ~10 s
        self.last_rate_log = time.monotonic()
        # Progress counts in the budget's unit: agent steps when that is the only budget, else frames.
        self.in_steps = config.run.frames == 0
        budget = config.run.agent_steps if self.in_steps else config.run.frames
        self.display = ProgressDisplay(budget, self._done(counters), "agent steps" if self.in_steps else "frames",
                                       "steps/s" if self.in_steps else "frames/s",
                                       f"{config.agent.agent}-{config.agent.encoder} skip {config.env.frame_skip}",
                                       live=progress, interval=config.run.progress_interval)

    def note(self, line: str) -> None:
        """A line for the user, above the live bar if there is one."""
        self.display.write(line)

    def game(self, counters: Counters, rank: int, episode: dict[str, Any], average: float) -> None:
        self.last_score = episode["score"]
        record = {"game": counters.games, "worker": rank, "agent_steps": counters.agent_steps,
                  "frames": counters.frames, "wall_time": round(counters.wall_time, 3),
                  "score": episode["score"], "length": episode["length"],
                  "episode_frames": episode["frames"], "moving_average": average}
        self.games.write(record)
        self.metrics.log(counters.frames, dict(zip(GAME_METRICS, (episode["score"], average, episode["length"],
                                                                  counters.games))))

    def milestone(self, milestone: Milestone, window: int) -> None:
        """Announce and record that the moving average reached a threshold for the first time."""
        self.note(f"milestone: the {window}-game average reached {milestone.threshold:+g} "
                  f"({milestone.average:+.2f}) after {clock(milestone.wall_time)} of training, "
                  f"{milestone.frames:,} frames, {milestone.games} games")
        tag = f"milestones/avg{window}_reached_{milestone.threshold:+g}"
        self.metrics.log(milestone.frames, {f"{tag}/wall_time_hours": milestone.wall_time / 3600.0,
                                            f"{tag}/games": milestone.games})
        self.metrics.flush()

    def evaluation(self, counters: Counters, result: dict[str, Any]) -> None:
        self.evaluations.write({**result, "agent_steps": counters.agent_steps,
                                "wall_time": round(counters.wall_time, 3)})
        self.metrics.log(result["frames"], {"eval/mean_score": result["mean_score"], "eval/updates": result["updates"]})

    def update(self, counters: Counters, losses: dict[str, float], memory: dict[str, float]) -> None:
        """Losses of one update (``losses/...``) and the memory norms its rollout ended with (``memory/...``); their
        means over the updates of the last :attr:`UPDATE_LOG_INTERVAL_S` are logged."""
        self.pending_updates.append({**{f"losses/{key}": value for key, value in losses.items()},
                                     **{f"memory/{key}": value for key, value in memory.items()}})
        if time.monotonic() - self.last_update_log >= self.UPDATE_LOG_INTERVAL_S:
            count = len(self.pending_updates)
            self.metrics.log(counters.frames, {key: sum(u[key] for u in self.pending_updates) / count
                                               for key in self.pending_updates[-1]})
            self.pending_updates.clear()
            self.last_update_log = time.monotonic()

    def refresh(self, counters: Counters, scores: ScoreTracker) -> None:
        now = time.monotonic()
        self.rate_window.append((now, counters.frames, counters.agent_steps))
        (t0, f0, s0), (t1, f1, s1) = self.rate_window[0], self.rate_window[-1]
        if now - self.last_rate_log >= 10.0 and t1 > t0:
            self.metrics.log(counters.frames, {"charts/frames_per_second": (f1 - f0) / (t1 - t0),
                                               "charts/steps_per_second": (s1 - s0) / (t1 - t0)})
            self.last_rate_log = now
        last = "-" if self.last_score is None else f"{self.last_score:+.0f}"
        average = "-" if not scores.recent else f"{scores.average:+.1f}"
        other = f"frames {format_count(counters.frames)}" if self.in_steps else f"steps {counters.agent_steps:,}"
        self.display.update(self._done(counters), counters.wall_time,
                            f"{other} | games {counters.games} | last {last} | avg{scores.window} {average}")

    def _done(self, counters: Counters) -> int:
        return counters.agent_steps if self.in_steps else counters.frames

    def close(self, counters: Counters, scores: ScoreTracker) -> None:
        self.refresh(counters, scores)
        self.display.close(self._done(counters))
        self.games.close()
        self.evaluations.close()
        self.metrics.close()
