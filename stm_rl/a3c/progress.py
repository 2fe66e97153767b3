"""What a training run shows and records as it goes: the game log, the metrics, the progress display (a live
bar on a terminal, otherwise a plain line every ``progress_interval`` seconds with rate and ETA), the
time-to-score milestones, and the watch that notices a worker which stopped making updates.

The trainer (:mod:`stm_rl.a3c.trainer`) owns the run; this module only reports on it.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from tqdm import tqdm

from stm_rl.a3c.config import TrainConfig
from stm_rl.a3c.scores import Counters, Milestone, ScoreTracker
from stm_rl.config_cli import format_count
from stm_rl.logger import MetricLogger
from stm_rl.run_dir import JsonlWriter, RunDir

__all__ = ["GAME_METRICS", "STALL_SECONDS", "RunLog", "StallWatch", "clock", "note"]

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


def note(line: str) -> None:
    """A line for the user on stderr (flushed: a log file shows it at once)."""
    print(line, file=sys.stderr, flush=True)


class RunLog:
    """Game log (JSONL), metrics (:class:`stm_rl.logger.MetricLogger`: metrics.jsonl and tensorboard) and the
    progress display of one run. Every metric is logged at the run's emulator-frame count.

    On a terminal (and with ``--progress``) a live bar; otherwise (``--no-progress``, a log file, nohup, CI)
    one plain line every ``plain_interval`` seconds. Milestones and notes print as lines in both cases.
    """

    def __init__(self, layout: RunDir, config: TrainConfig, counters: Counters, progress: bool) -> None:
        self.games = JsonlWriter(layout.games)
        self.evaluations = JsonlWriter(layout.evaluations)
        # Metrics logged after the frame count the run starts from belong to weights that were lost (a run
        # killed after its last checkpoint, or before its first): dropped, like the games of such a run.
        self.metrics = MetricLogger.in_run_dir(layout.path, resume_step=counters.frames)
        self.pending_losses: list[dict[str, float]] = []
        self.last_losses_log = time.monotonic()
        self.last_score: Optional[float] = None
        self.rate_window: deque = deque(maxlen=40)  # (time, frames, steps) over the last ~10 s
        self.last_rate_log = time.monotonic()
        # Progress counts in the budget's unit: agent steps when that is the only budget, else frames.
        self.in_steps = config.run.frames == 0
        self.unit = "agent steps" if self.in_steps else "frames"
        self.budget = config.run.agent_steps if self.in_steps else config.run.frames
        self.live = progress and sys.stderr.isatty()
        self.plain_interval = config.run.progress_interval
        self.last_plain = time.monotonic()
        self.last_plain_done = self._done(counters)  # the plain line's rate: since the previous line
        agent = f"{config.agent.agent}-{config.agent.encoder}"
        self.bar = tqdm(total=self.budget, initial=self._done(counters), unit="step" if self.in_steps else "frame",
                        unit_scale=True,
                        dynamic_ncols=True, disable=not self.live, mininterval=0.5,
                        desc=f"{agent} skip {config.env.frame_skip}", smoothing=0.05)

    def note(self, line: str) -> None:
        """A line for the user, above the live bar if there is one."""
        if self.live:
            tqdm.write(line, file=sys.stderr)
        else:
            note(line)

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

    def update(self, counters: Counters, losses: dict[str, float]) -> None:
        """Losses of one update; their means over the updates of the last 10 s are logged."""
        self.pending_losses.append(losses)
        if time.monotonic() - self.last_losses_log >= 10.0:
            count = len(self.pending_losses)
            self.metrics.log(counters.frames, {f"losses/{key}": sum(u[key] for u in self.pending_losses) / count
                                               for key in losses})
            self.pending_losses.clear()
            self.last_losses_log = time.monotonic()

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
        if self.live:
            other = f"frames {format_count(counters.frames)}" if self.in_steps else f"steps {counters.agent_steps:,}"
            self.bar.set_postfix_str(f"{other} | games {counters.games} | "
                                     f"last {last} | avg{scores.window} {average}", refresh=False)
            self.bar.update(min(self._done(counters), self.bar.total) - self.bar.n)  # rate and ETA come from tqdm
        elif now - self.last_plain >= self.plain_interval:
            done = self._done(counters)
            rate = (done - self.last_plain_done) / (now - self.last_plain)
            self.last_plain, self.last_plain_done = now, done
            note(self.plain_line(counters, scores, rate))

    def _done(self, counters: Counters) -> int:
        return counters.agent_steps if self.in_steps else counters.frames

    def plain_line(self, counters: Counters, scores: ScoreTracker, rate: float) -> str:
        """``progress: 1.20M/20.00M frames (6.0%) | 850 frames/s | ETA 6:08:00 | games 123 | avg100 -20.3``
        (in agent steps, with the frames beside them, when the run's budget is agent steps)."""
        done = self._done(counters)
        remaining = max(self.budget - done, 0)
        eta = clock(remaining / rate) if rate > 0 else "-"
        average = "-" if not scores.recent else f"{scores.average:+.1f}"
        rate_unit = "steps/s" if self.in_steps else "frames/s"
        frames = f" | frames {format_count(counters.frames)}" if self.in_steps else ""
        return (f"progress: {format_count(done)}/{format_count(self.budget)} {self.unit} "
                f"({100.0 * done / self.budget:.1f}%) | {rate:,.0f} {rate_unit} | ETA {eta}{frames} | "
                f"elapsed {clock(counters.wall_time)} | games {counters.games} | avg{scores.window} {average}")

    def close(self, counters: Counters, scores: ScoreTracker) -> None:
        self.refresh(counters, scores)
        self.bar.close()
        self.games.close()
        self.evaluations.close()
        self.metrics.close()


def clock(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds)."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

