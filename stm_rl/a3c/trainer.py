"""The A3C trainer: shared model and optimizer, worker processes, and the run's bookkeeping.

The main process does no learning. It starts ``workers`` processes (see :mod:`stm_rl.a3c.worker`),
then watches them: it turns their messages into the game log, tensorboard scalars and the progress
bar, writes checkpoints (latest every ``checkpoint_interval`` seconds, best by moving average, final),
and stops the run cleanly on Ctrl-C / SIGTERM, on a worker's error or death, or on a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.multiprocessing as mp
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents import ActorCritic, build_agent
from stm_rl.a3c.config import TrainConfig
from stm_rl.a3c.evaluator import evaluator_main
from stm_rl.a3c.shared_adam import SharedAdam
from stm_rl.a3c.worker import AGENT_STEPS, FRAMES, UPDATES, WorkerContext, worker_main
from stm_rl.run_dir import (CheckpointError, JsonlWriter, StmRlError, load_checkpoint, save_checkpoint,
                            to_jsonable, truncate_jsonl, write_config, write_json_atomic)

CHECKPOINT_KIND = "a3c"
NUM_ACTIONS = 6  # Pong's minimal action set
GAME_LOG = "games.jsonl"
EVAL_LOG = "evaluations.jsonl"
BEST_CHECKPOINT_INTERVAL = 30.0
"""Seconds between two 'best' checkpoints: a new best average is saved at most this often (and at the end)."""


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


@dataclass
class TrainResult:
    status: str
    """"completed" (budget reached), "interrupted" (Ctrl-C / SIGTERM), or "failed"."""
    counters: Counters
    moving_average: float
    best_moving_average: float
    message: str = ""


def checkpoint_paths(run_dir: Path) -> dict[str, Path]:
    folder = Path(run_dir) / "checkpoints"
    return {name: folder / f"{name}.pt" for name in ("latest", "best", "final")}


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A trainer checkpoint with its config checked (clear :class:`CheckpointError` otherwise)."""
    record = load_checkpoint(path, CHECKPOINT_KIND)
    missing = {"model", "optimizer", "counters", "config", "scores"} - set(record)
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}: not a complete training checkpoint")
    try:
        record["config"] = TrainConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds an unreadable config: {error}") from None
    return record


def load_agent_from_checkpoint(path: Path) -> tuple[ActorCritic, TrainConfig, dict[str, Any]]:
    """The agent saved in a trainer checkpoint, ready for evaluation, with its config and the record."""
    record = load_training_checkpoint(path)
    config: TrainConfig = record["config"]
    model = build_agent(config.agent, NUM_ACTIONS)
    try:
        model.load_state_dict(record["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not match a {config.agent.agent!r} agent with the "
                              f"{config.agent.encoder!r} encoder ({str(error).splitlines()[0]})") from None
    return model, config, record


class Trainer:
    """Runs (or resumes) one training run; :meth:`run` returns when it has stopped."""

    def __init__(self, config: TrainConfig, resume_from: Optional[dict[str, Any]] = None) -> None:
        self.config = config
        self.run_dir = Path(config.run.run_dir)
        self.paths = checkpoint_paths(self.run_dir)
        self.shared_model = build_agent(config.agent, NUM_ACTIONS)
        self.optimizer = SharedAdam(self.shared_model.parameters(), lr=config.a3c.lr, eps=config.a3c.adam_eps,
                                    amsgrad=config.a3c.amsgrad)
        self.counters = Counters()
        self.scores = ScoreTracker(config.run.moving_average_window)
        if resume_from is not None:
            self.shared_model.load_state_dict(resume_from["model"])
            self.optimizer.load_state_dict(resume_from["optimizer"])
            self.counters = Counters(**resume_from["counters"])
            self.scores.recent.extend(resume_from["scores"]["recent"][-self.scores.window:])
            self.scores.best_average = resume_from["scores"]["best_average"]
            # Games logged after the checkpoint (a killed run) belong to weights that were lost.
            dropped = truncate_jsonl(self.run_dir / GAME_LOG, self.counters.games)
            if dropped:
                print(f"resuming from the checkpoint at game {self.counters.games}: "
                      f"dropped {dropped} later game(s) from {GAME_LOG}", file=sys.stderr)
        self.shared_model.share_memory()
        self.counters.segments += 1
        self._stop_requested: Optional[str] = None
        self._best_pending, self._last_best_save = False, -math.inf

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        config = self.config
        if self.counters.frames >= config.run.frames:
            raise StmRlError(f"{self.run_dir} already used its budget of {config.run.frames:,} frames "
                             f"({self.counters.frames:,} done); pass a larger --frames to continue it")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.run_dir, config, segment=self.counters.segments)
        ctx = mp.get_context("spawn")
        worker_counters = torch.zeros(config.run.workers, 3, dtype=torch.int64).share_memory_()
        stop, events = ctx.Event(), ctx.Queue()
        worker_ctx = WorkerContext(config, self.shared_model, self.optimizer, worker_counters,
                                   frames_done_before=self.counters.frames,
                                   seed_offset=10_000 * (self.counters.segments - 1), stop=stop, events=events)

        # Workers start with SIGINT ignored, so that Ctrl-C reaches only this process.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        workers = [ctx.Process(target=worker_main, args=(rank, worker_ctx), name=f"a3c-worker-{rank}",
                               daemon=True) for rank in range(config.run.workers)]
        evaluators = [ctx.Process(target=evaluator_main, args=(worker_ctx, self.counters.updates),
                                  name="a3c-evaluator", daemon=True)] if config.run.eval_every_updates else []
        processes = workers + evaluators  # the run ends when the workers are done; the evaluator follows
        for process in processes:
            process.start()
        previous_term = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        log = _RunLog(self.run_dir, config, self.counters, progress=config.run.progress)
        status, message = "completed", ""
        base = dataclasses.replace(self.counters)
        start, last_checkpoint = time.monotonic(), time.monotonic()
        try:
            while True:
                status, message = self._drain_events(events, log, base, worker_counters, start)
                if status != "running":
                    break
                self._update_totals(base, worker_counters, start)
                log.refresh(self.counters, self.scores)
                if self._stop_requested:
                    status, message = "interrupted", f"stopped by {self._stop_requested}"
                    break
                failed = [(p.name, p.exitcode) for p in processes if p.exitcode not in (None, 0)]
                if failed:
                    name, code = failed[0]
                    reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    status, message = "failed", f"{name} died ({reason})"
                    break
                if all(p.exitcode == 0 for p in workers):
                    status = "completed"
                    break
                if time.monotonic() - last_checkpoint >= config.run.checkpoint_interval:
                    self._save("latest")
                    last_checkpoint = time.monotonic()
        finally:
            stop.set()
            self._shutdown(processes, events, log, base, worker_counters, start)
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
            self._update_totals(base, worker_counters, start)
            if status == "running":  # an exception in the trainer itself
                status, message = "failed", "trainer error"
            if status != "nan":  # never overwrite the last good checkpoints with weights a NaN touched
                self._save("latest")
                self._save("final")
                if self._best_pending:
                    self._save("best")
            log.close(self.counters, self.scores)
        result = TrainResult("failed" if status == "nan" else status, self.counters, self.scores.average,
                             self.scores.best_average, message)
        write_json_atomic(self.run_dir / "summary.json", {"status": result.status, "message": message,
                                                          "counters": self.counters,
                                                          "moving_average": _finite(result.moving_average),
                                                          "best_moving_average": _finite(result.best_moving_average)})
        return result

    def _request_stop(self, signum: int, _frame: Any) -> None:
        if self._stop_requested:  # a second Ctrl-C while shutting down: leave at once
            raise KeyboardInterrupt
        self._stop_requested = signal.Signals(signum).name
        tqdm.write(f"{self._stop_requested}: stopping the workers after their current update "
                   "and writing a final checkpoint (Ctrl-C again to abort)...", file=sys.stderr)

    def _drain_events(self, events, log: "_RunLog", base: Counters, worker_counters, start: float,
                      timeout: float = 0.25) -> tuple[str, str]:
        """Handle the messages waiting (waiting up to ``timeout`` for the first; at most a few thousand,
        so that a flood of short games cannot keep the trainer from its other duties)."""
        deadline = time.monotonic() + timeout
        for _ in range(5000):
            try:
                kind, rank, payload = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return "running", ""
            except (EOFError, OSError):  # a worker died while writing to the queue
                return "running", ""
            if kind == "game":
                self._update_totals(base, worker_counters, start)
                self.counters.games += 1
                average = self.scores.add(payload["score"])
                log.game(self.counters, rank, payload, average)
                if len(self.scores.recent) >= min(10, self.scores.window) and average > self.scores.best_average:
                    self.scores.best_average = average
                    self._best_pending = True
                if self._best_pending and time.monotonic() - self._last_best_save >= BEST_CHECKPOINT_INTERVAL:
                    self._save("best")
            elif kind == "update":
                log.update(self.counters, payload)
            elif kind == "eval":
                log.evaluation(self.counters, payload)
            elif kind == "error":
                who = rank if isinstance(rank, str) else f"worker {rank}"
                return "failed", f"{who} failed:\n{payload}"
            elif kind == "nan":
                return "nan", f"worker {rank}: {payload}; the shared model was not updated with it"
        return "running", ""

    def _update_totals(self, base: Counters, worker_counters: torch.Tensor, start: float) -> None:
        totals = worker_counters.sum(0).tolist()
        self.counters.agent_steps = base.agent_steps + totals[AGENT_STEPS]
        self.counters.frames = base.frames + totals[FRAMES]
        self.counters.updates = base.updates + totals[UPDATES]
        self.counters.wall_time = base.wall_time + time.monotonic() - start

    def _shutdown(self, processes, events, log, base, worker_counters, start, grace: float = 30.0) -> None:
        """Let workers finish their update (draining their messages meanwhile), then make sure all are gone."""
        deadline = time.monotonic() + grace
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            self._drain_events(events, log, base, worker_counters, start, timeout=0.1)
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        events.close()
        events.cancel_join_thread()

    def _save(self, name: str) -> None:
        if name == "best":
            self._best_pending, self._last_best_save = False, time.monotonic()
        model_state = {k: v.clone() for k, v in self.shared_model.state_dict().items()}
        save_checkpoint(self.paths[name], CHECKPOINT_KIND, {
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "counters": dataclasses.asdict(self.counters),
            "scores": {"recent": list(self.scores.recent), "best_average": self.scores.best_average},
            "config": to_jsonable(self.config),
            "seeds": {"seed": self.config.run.seed, "segment": self.counters.segments},
            "rng": {"torch": torch.get_rng_state()},
        })


class _RunLog:
    """Game log (JSONL), tensorboard scalars and the terminal progress display of one run."""

    def __init__(self, run_dir: Path, config: TrainConfig, counters: Counters, progress: bool) -> None:
        self.games = JsonlWriter(run_dir / GAME_LOG)
        self.evaluations = JsonlWriter(run_dir / EVAL_LOG)
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.tb_updates: list[dict[str, float]] = []
        self.last_tb_flush = time.monotonic()
        self.last_score: Optional[float] = None
        self.rate_window: deque = deque(maxlen=40)  # (time, frames, steps) over the last ~10 s
        self.last_rate_log = time.monotonic()
        interactive = sys.stderr.isatty()
        agent = f"{config.agent.agent}-{config.agent.encoder}"
        self.bar = tqdm(total=config.run.frames, initial=counters.frames, unit="frame", unit_scale=True,
                        dynamic_ncols=True, disable=not progress, mininterval=0.5 if interactive else 30.0,
                        desc=f"{agent} skip {config.env.frame_skip}", smoothing=0.05)

    def game(self, counters: Counters, rank: int, episode: dict[str, Any], average: float) -> None:
        self.last_score = episode["score"]
        record = {"game": counters.games, "worker": rank, "agent_steps": counters.agent_steps,
                  "frames": counters.frames, "wall_time": round(counters.wall_time, 3),
                  "score": episode["score"], "length": episode["length"],
                  "episode_frames": episode["frames"], "moving_average": average}
        self.games.write(record)
        self.tb.add_scalar("charts/episodic_return", episode["score"], counters.frames)
        self.tb.add_scalar("charts/episodic_return_avg100", average, counters.frames)
        self.tb.add_scalar("charts/episodic_length", episode["length"], counters.frames)
        self.tb.add_scalar("charts/games", counters.games, counters.frames)

    def evaluation(self, counters: Counters, result: dict[str, Any]) -> None:
        self.evaluations.write({**result, "agent_steps": counters.agent_steps,
                                "wall_time": round(counters.wall_time, 3)})
        self.tb.add_scalar("eval/mean_score", result["mean_score"], result["frames"])
        self.tb.add_scalar("eval/mean_score_by_update", result["mean_score"], result["updates"])

    def update(self, counters: Counters, losses: dict[str, float]) -> None:
        self.tb_updates.append(losses)
        if time.monotonic() - self.last_tb_flush >= 10.0:
            for key in losses:
                mean = sum(u[key] for u in self.tb_updates) / len(self.tb_updates)
                self.tb.add_scalar(f"losses/{key}", mean, counters.frames)
            self.tb_updates.clear()
            self.last_tb_flush = time.monotonic()

    def refresh(self, counters: Counters, scores: ScoreTracker) -> None:
        now = time.monotonic()
        self.rate_window.append((now, counters.frames, counters.agent_steps))
        (t0, f0, s0), (t1, f1, s1) = self.rate_window[0], self.rate_window[-1]
        if now - self.last_rate_log >= 10.0 and t1 > t0:
            self.tb.add_scalar("charts/frames_per_second", (f1 - f0) / (t1 - t0), counters.frames)
            self.tb.add_scalar("charts/steps_per_second", (s1 - s0) / (t1 - t0), counters.frames)
            self.last_rate_log = now
        last = "-" if self.last_score is None else f"{self.last_score:+.0f}"
        average = "-" if not scores.recent else f"{scores.average:+.1f}"
        self.bar.set_postfix_str(f"steps {counters.agent_steps:,} | games {counters.games} | "
                                 f"last {last} | avg{scores.window} {average}", refresh=False)
        self.bar.update(min(counters.frames, self.bar.total) - self.bar.n)  # rate and ETA come from tqdm

    def close(self, counters: Counters, scores: ScoreTracker) -> None:
        self.refresh(counters, scores)
        self.bar.close()
        self.games.close()
        self.evaluations.close()
        self.tb.close()


def _finite(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None
