"""The A3C trainer: shared model and optimizer, worker processes, and the run's bookkeeping.

The main process does no learning. It takes the run directory's lock (one trainer per run directory),
starts ``workers`` processes (see :mod:`stm_rl.a3c.worker`), then watches them: it turns their messages
(:mod:`stm_rl.a3c.messages`) into the game log, the metrics (:mod:`stm_rl.logger`: metrics.jsonl and
tensorboard) and the progress display with the time-to-score milestones (:mod:`stm_rl.a3c.progress`), writes checkpoints
(:mod:`stm_rl.a3c.checkpoint`: latest at the start and every ``checkpoint_interval`` seconds, best by moving
average, final), reports a worker that stops making updates, and stops the run cleanly on Ctrl-C / SIGTERM,
on a worker's error or death, on a non-finite loss or weights, or when a checkpoint cannot be written (the
previous one is kept).
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.multiprocessing as mp

from agents import build_agent
from envs import probe_action_count
from stm_rl.a3c import progress
from stm_rl.a3c.checkpoint import (CHECKPOINT_KIND, NonFiniteWeightsError, check_checkpoint_belongs_to_run,
                                   checkpoint_paths, finite_or_none, load_agent_from_checkpoint,
                                   load_training_checkpoint, non_finite_tensors, save_training_checkpoint,
                                   saved_num_actions)
from stm_rl.a3c.config import TrainConfig, training_command
from stm_rl.a3c.evaluator import evaluator_main
from stm_rl.a3c.limits import validate_for_training
from stm_rl.a3c.messages import (EvaluationDone, GameFinished, NonFinite, ProcessFailed, UpdateDone,
                                 source_name)
from stm_rl.a3c.progress import RunLog, StallWatch
from stm_rl.progress import note
from stm_rl.a3c.scores import Counters, Milestones, ScoreTracker
from stm_rl.a3c.shared_adam import SharedAdam
from stm_rl.a3c.worker import AGENT_STEPS, FRAMES, UPDATES, WorkerContext, worker_main
from stm_rl.conventions import RunStatus, StopRequest
from stm_rl import fastpath
from stm_rl.fastpath.kernels import prepare_fused_kernels
from stm_rl.run_dir import (Checkpoint, CheckpointError, RunDir, StmRlError, describe_os_error, read_jsonl,
                            repair_jsonl, truncate_jsonl, write_config, write_json_atomic)

__all__ = ["CHECKPOINT_KIND", "GAME_LOG", "EVAL_LOG", "Counters", "RunStatus", "Trainer", "TrainResult",
           "checkpoint_paths", "load_agent_from_checkpoint", "load_training_checkpoint"]

GAME_LOG = RunDir.GAMES
EVAL_LOG = RunDir.EVALUATIONS
BEST_CHECKPOINT_INTERVAL = 30.0
"""Seconds between two 'best' checkpoints: a new best average is saved at most this often (and at the end)."""
STARTUP_GRACE = 3.0
"""Seconds a stopping run waits for workers that have not made an update yet (still starting up)."""
INITIAL_WEIGHTS_SEED_OFFSET = 2_000_000
"""The shared model's initial weights are drawn from ``seed + INITIAL_WEIGHTS_SEED_OFFSET``: fixed by the run's
seed, from a stream apart from the workers' (``seed + 10,000 x segment + rank``) and the evaluator's
(``seed + 1,000,000 + ...``); within ``limits.MAX_SEED``'s margin."""


@dataclass
class TrainResult:
    status: RunStatus
    """completed (budget reached), interrupted (Ctrl-C / SIGTERM), or failed."""
    counters: Counters
    moving_average: float
    best_moving_average: float
    message: str = ""
    milestones: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Runs (or resumes) one training run; :meth:`run` returns when it has stopped.

    Building a trainer writes nothing; :meth:`run` takes the run directory's lock first, so a second trainer
    of the same directory is refused before it touches a file.
    """

    def __init__(self, config: TrainConfig, resume_from: Optional[dict[str, Any]] = None) -> None:
        validate_for_training(config)
        self.config = config
        self.run_dir = Path(config.run.run_dir)
        self.layout = RunDir(self.run_dir)
        self.paths = checkpoint_paths(self.run_dir)
        with torch.random.fork_rng(devices=[]):  # the initial weights are the seed's, nothing else's
            torch.manual_seed(config.run.seed + INITIAL_WEIGHTS_SEED_OFFSET)
            self.shared_model = build_agent(config.agent, _action_count(config, resume_from))
        self.optimizer = SharedAdam(self.shared_model.parameters(), lr=config.a3c.lr, eps=config.a3c.adam_eps,
                                    amsgrad=config.a3c.amsgrad)
        self.counters = Counters()
        self.scores = ScoreTracker(config.run.moving_average_window)
        self.milestones = Milestones()
        self.resuming = resume_from is not None
        if resume_from is not None:
            self.shared_model.load_state_dict(resume_from["model"])
            self.optimizer.load_state_dict(resume_from["optimizer"])
            self.counters = Counters(**resume_from["counters"])
            self.scores.recent.extend(resume_from["scores"]["recent"][-self.scores.window:])
            self.scores.best_average = resume_from["scores"]["best_average"]
        self.shared_model.share_memory()
        self.counters.segments += 1
        self.stall_watch = StallWatch(seconds=progress.STALL_SECONDS)
        self.stop = StopRequest("stopping the workers after their current update and writing a final checkpoint "
                                "(Ctrl-C again to abort)...")
        self._best_pending, self._last_best_save = False, -math.inf

    # ------------------------------------------------------------------ the run
    def check_budget(self) -> None:
        """Refuse to start a segment with nothing left to do."""
        if self.config.run.budget_reached(self.counters.frames, self.counters.agent_steps):
            raise StmRlError(f"{self.run_dir} already used its budget of {self.config.run.describe_budget()} "
                             f"({self.counters.frames:,} frames, {self.counters.agent_steps:,} agent steps done); "
                             "pass a larger --frames or --agent-steps to continue it")

    def finish_spent_run(self) -> TrainResult:
        """Record as completed a resumed run that had used its budget when it was killed (before its summary)."""
        return self._finish(RunStatus.COMPLETED, "")

    def run(self) -> TrainResult:
        """Train until the budget, a failure or a stop request. Ctrl-C and SIGTERM are this trainer's from here on:
        one arriving at any point (even before the first checkpoint or the workers' start) ends the run with a
        final checkpoint and its summary, never a traceback."""
        self.check_budget()
        with self.stop.installed(), self.layout.lock():
            self._prepare_run_dir()
            return self._run()

    def _prepare_run_dir(self) -> None:
        """Under the lock: tidy what a killed trainer left, align the game log with the weights, write the config."""
        stale = self.layout.remove_stale_temp_files()
        if stale:
            note(f"removed {len(stale)} temporary file(s) left by a trainer killed while writing")
        if self.resuming:
            check_checkpoint_belongs_to_run(self.run_dir, self.config)
        if repair_jsonl(self.layout.games):
            note(f"{RunDir.GAMES} ended in a torn line (a killed run); it was cut off")
        repair_jsonl(self.layout.evaluations)
        if self.resuming:
            # Games logged after the checkpoint (a killed run) belong to weights that were lost.
            dropped = truncate_jsonl(self.layout.games, self.counters.games)
            if dropped:
                note(f"resuming from the checkpoint at game {self.counters.games}: "
                      f"dropped {dropped} later game(s) from {RunDir.GAMES}")
            if self.layout.games.exists():
                self.milestones = Milestones.from_game_log(list(read_jsonl(self.layout.games)), self.scores.window)
        write_config(self.run_dir, self.config, segment=self.counters.segments,
                     num_actions=self.shared_model.num_actions, command=training_command(self.config),
                     compute=fastpath.report(threads_per_process=1))

    def _run(self) -> TrainResult:
        config = self.config
        status, message = RunStatus.RUNNING, ""
        if not self.resuming:  # a run killed before its first periodic checkpoint resumes from its start
            failure = self._save(Checkpoint.LATEST)
            if failure:
                return self._finish(RunStatus.FAILED, failure)
        if config.agent.agent == "stm":
            prepare_fused_kernels()  # built once here (about a second), loaded by every worker
        ctx = mp.get_context("spawn")
        worker_counters = torch.zeros(config.run.workers, 3, dtype=torch.int64).share_memory_()
        stop, events = ctx.Event(), ctx.Queue()
        worker_ctx = WorkerContext(config, self.shared_model, self.optimizer, worker_counters,
                                   frames_done_before=self.counters.frames, steps_done_before=self.counters.agent_steps,
                                   seed_offset=10_000 * (self.counters.segments - 1), stop=stop, events=events)
        workers = [ctx.Process(target=worker_main, args=(rank, worker_ctx), name=f"a3c-worker-{rank}",
                               daemon=True) for rank in range(config.run.workers)]
        evaluators = [ctx.Process(target=evaluator_main, args=(worker_ctx, self.counters.updates),
                                  name="a3c-evaluator", daemon=True)] if config.run.eval_every_updates else []
        processes = workers + evaluators  # the run ends when the workers are done; the evaluator follows
        log = RunLog(self.layout, config, self.counters, progress=config.run.progress)
        base = dataclasses.replace(self.counters)
        start = last_checkpoint = time.monotonic()
        try:
            self._start_processes(processes)
            while True:
                status, message = self._drain_events(events, log, base, worker_counters, start)
                if status != RunStatus.RUNNING:
                    break
                self._update_totals(base, worker_counters, start)
                log.refresh(self.counters, self.scores)
                for line in self.stall_watch.check(worker_counters[:, UPDATES].tolist(), time.monotonic()):
                    log.note(line)
                if self.stop:
                    status, message = RunStatus.INTERRUPTED, f"stopped by {self.stop.signal_name}"
                    break
                failed = [(p.name, p.exitcode) for p in processes if p.exitcode not in (None, 0)]
                if failed:
                    name, code = failed[0]
                    reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    status, message = RunStatus.FAILED, f"{name} died ({reason})"
                    break
                if all(p.exitcode == 0 for p in workers):
                    status = RunStatus.COMPLETED
                    break
                if time.monotonic() - last_checkpoint >= config.run.checkpoint_interval:
                    failure = self._save(Checkpoint.LATEST)
                    if failure:
                        status, message = RunStatus.FAILED, failure
                        break
                    last_checkpoint = time.monotonic()
        finally:
            stop.set()
            self._shutdown(processes, events, log, base, worker_counters, start)
            self._update_totals(base, worker_counters, start)
            if status == RunStatus.RUNNING:  # an exception in the trainer itself
                status, message = RunStatus.FAILED, "trainer error"
            log.close(self.counters, self.scores)
        return self._finish(status, message)

    def _finish(self, status: RunStatus, message: str) -> TrainResult:
        """Final checkpoints (unless a NaN was seen: the last good ones stay) and summary.json."""
        problems = [message] if message else []
        if not (status == RunStatus.FAILED and message.startswith(_NON_FINITE)):
            names = [Checkpoint.LATEST, Checkpoint.FINAL] + ([Checkpoint.BEST] if self._best_pending else [])
            for name in names:
                failure = self._save(name)
                if failure:
                    status = RunStatus.FAILED
                    problems.append(failure)
                    break  # the next file would meet the same disk
        result = TrainResult(status, self.counters, self.scores.average, self.scores.best_average,
                             "; ".join(dict.fromkeys(problems)), self.milestones.to_json())
        try:
            write_json_atomic(self.layout.summary, {
                "status": result.status, "message": result.message, "counters": self.counters,
                "moving_average": finite_or_none(result.moving_average),
                "best_moving_average": finite_or_none(result.best_moving_average),
                "milestones": result.milestones})
        except OSError as error:
            result.message += f"; {RunDir.SUMMARY} could not be written ({describe_os_error(error)})"
        return result

    def _start_processes(self, processes: list) -> None:
        """Start the workers, SIGINT blocked around each start so that the child begins with it blocked (Ctrl-C
        is the trainer's), while a Ctrl-C pressed meanwhile still reaches the trainer and stops the start-up."""
        for process in processes:
            if self.stop:
                return
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                process.start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _drain_events(self, events, log: RunLog, base: Counters, worker_counters, start: float,
                      timeout: float = 0.25) -> tuple[RunStatus, str]:
        """Handle the messages waiting (waiting up to ``timeout`` for the first; at most a few thousand,
        so that a flood of short games cannot keep the trainer from its other duties)."""
        deadline = time.monotonic() + timeout
        for _ in range(5000):
            try:
                message = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return RunStatus.RUNNING, ""
            except (EOFError, OSError):  # a worker died while writing to the queue
                return RunStatus.RUNNING, ""
            if isinstance(message, GameFinished):
                self._game_finished(message, log, base, worker_counters, start)
            elif isinstance(message, UpdateDone):
                log.update(self.counters, message.losses, message.memory)
            elif isinstance(message, EvaluationDone):
                log.evaluation(self.counters, message.result)
            elif isinstance(message, ProcessFailed):
                who = source_name(message.source)
                bad = non_finite_tensors(self.shared_model.state_dict())
                if bad:
                    return RunStatus.FAILED, (f"{_NON_FINITE}: {who} failed after the shared weights became "
                                              f"NaN/inf ({bad[0]}...); the last good checkpoints were kept")
                return RunStatus.FAILED, f"{who} failed:\n{message.traceback}"
            elif isinstance(message, NonFinite):
                return RunStatus.FAILED, (f"{_NON_FINITE}: {source_name(message.source)}: {message.detail}; "
                                          "the shared model was not updated with it, the last good checkpoints "
                                          "were kept")
        return RunStatus.RUNNING, ""

    def _game_finished(self, message: GameFinished, log: RunLog, base: Counters, worker_counters,
                       start: float) -> None:
        self._update_totals(base, worker_counters, start)
        self.counters.games += 1
        average = self.scores.add(message.episode["score"])
        log.game(self.counters, message.source, message.episode, average)
        for milestone in self.milestones.check(self.scores, self.counters):
            log.milestone(milestone, self.scores.window)
        # A best is a full window's average: a run that never learns must not keep its first games' lucky streak
        # (near-initial weights) as its 'best' checkpoint.
        if self.scores.full and average > self.scores.best_average:
            self.scores.best_average = average
            self._best_pending = True
        if self._best_pending and time.monotonic() - self._last_best_save >= BEST_CHECKPOINT_INTERVAL:
            failure = self._save(Checkpoint.BEST)
            if failure:
                log.note(failure)

    def _update_totals(self, base: Counters, worker_counters: torch.Tensor, start: float) -> None:
        totals = worker_counters.sum(0).tolist()
        self.counters.agent_steps = base.agent_steps + totals[AGENT_STEPS]
        self.counters.frames = base.frames + totals[FRAMES]
        self.counters.updates = base.updates + totals[UPDATES]
        self.counters.wall_time = base.wall_time + time.monotonic() - start

    def _shutdown(self, processes, events, log, base, worker_counters, start, grace: float = 30.0) -> None:
        """Let workers finish their update (draining their messages meanwhile), then make sure all are gone."""
        for process in processes:  # a stopped (SIGSTOP) worker must run to see the stop event
            if process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        # Workers that have made updates get ``grace`` to finish the current one; those still starting up
        # (importing torch, building envs: nothing to finish) and the evaluator get a few seconds.
        updates = worker_counters[:, UPDATES].tolist()
        learning = [p for rank, p in enumerate(processes) if rank < len(updates) and updates[rank] > 0]
        now = time.monotonic()
        deadline, quick_deadline = now + grace, now + min(grace, STARTUP_GRACE)
        while time.monotonic() < deadline and (
                any(p.is_alive() for p in learning)
                or (time.monotonic() < quick_deadline and any(p.is_alive() for p in processes))):
            self._drain_events(events, log, base, worker_counters, start, timeout=0.1)
        for process in processes:
            if process.pid is None:  # never started (Ctrl-C during the start-up)
                continue
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        events.close()
        events.cancel_join_thread()

    def _save(self, name: Checkpoint) -> Optional[str]:
        """Write a checkpoint; on failure the previous file stays and a one-line reason is returned."""
        if name == Checkpoint.BEST:
            self._best_pending, self._last_best_save = False, time.monotonic()
        scores = {"recent": list(self.scores.recent), "best_average": self.scores.best_average}
        try:
            save_training_checkpoint(self.paths[name], self.shared_model, self.optimizer,
                                     dataclasses.asdict(self.counters), scores, self.config)
        except NonFiniteWeightsError as error:
            return f"{_NON_FINITE}: {error}"
        except (OSError, RuntimeError) as error:
            return f"could not write {self.paths[name]} ({_cause(error)}); the previous {name}.pt is kept"
        return None


_NON_FINITE = "non-finite"


def _action_count(config: TrainConfig, resume_from: Optional[dict[str, Any]]) -> int:
    """The action count of the run's environment, probed; a resumed run's checkpoint must have been made for
    the same count (the actor head is sized by it)."""
    probed = probe_action_count(config.env)
    if resume_from is not None and saved_num_actions(resume_from) != probed:
        raise CheckpointError(f"the checkpoint's agent has {saved_num_actions(resume_from)} actions but the "
                              f"{config.env.game!r} environment has {probed}; it cannot be resumed here")
    return probed


def _cause(error: BaseException) -> str:
    """The OSError behind an error (torch wraps a failed write in its own RuntimeError), in one line."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return describe_os_error(seen)
        seen = seen.__cause__ or seen.__context__
    return str(error).splitlines()[0] if str(error) else type(error).__name__
