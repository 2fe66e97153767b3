"""One logger for a run's scalar metrics: every value goes to a JSONL file and to TensorBoard.

Usage (any training loop, RL or supervised)::

    with MetricLogger.in_run_dir(run_dir) as log:
        log.log(step, {"losses/value_loss": 0.31, "charts/episodic_return": -20.0})

- **Names** follow CleanRL's stable prefixes: ``charts/...`` for what a run achieves and how fast
  (returns, lengths, throughput), ``losses/...`` for the optimisation (losses, entropy, gradient norm),
  ``memory/...`` for the size of a recurrent agent's state (norms of the LSTM cell and the STM's memories),
  ``eval/...`` for evaluations, ``milestones/...`` for first crossings of a score. A name is a TensorBoard tag;
  the names ``step`` and ``wall_time`` are taken by the record itself.
- **JSONL** (``metrics.jsonl``): one line per :meth:`MetricLogger.log` call,
  ``{"step": 1200, "wall_time": 1732665600.5, "losses/value_loss": 0.31, ...}`` (``wall_time`` in Unix
  seconds, as TensorBoard records it; NaN and infinity are written as ``null``). Each line is flushed, so a
  killed run keeps every finished line, and ``pandas.read_json(path, lines=True)`` reads the file.
- **TensorBoard** (``tb/``): the same values with the same step, written by ``SummaryWriter`` (imported only
  when TensorBoard output is asked for: it is slow to import).
- **Resuming**: with ``resume_step=S`` the records after step S (logged by a run killed after its last
  checkpoint) are dropped from the JSONL file and TensorBoard purges its events after S, so the logs
  describe the history of the weights the run continues from.

This module knows nothing of RL or of the supervised tasks: it depends on :mod:`stm_rl.run_dir` only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from stm_rl.run_dir import JsonlWriter, RunDir, drop_records_after, read_jsonl

METRICS_FILE = RunDir.METRICS
"""Name of the JSONL metrics file in a run directory (spelled by :class:`RunDir`)."""
RESERVED = ("step", "wall_time")
"""Keys of a JSONL record that are not metrics."""


class MetricLogger:
    """Writes scalar metrics to ``jsonl_path`` and, if ``tensorboard_dir`` is given, to TensorBoard."""

    def __init__(self, jsonl_path: Path, tensorboard_dir: Optional[Path] = None,
                 resume_step: Optional[int] = None) -> None:
        self.jsonl_path = Path(jsonl_path)
        if resume_step is not None:
            drop_records_after(self.jsonl_path, "step", resume_step)
        self._jsonl = JsonlWriter(self.jsonl_path)
        self._tensorboard = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # slow to import: only when asked for

            purge = None if resume_step is None else resume_step + 1  # purges the events at this step and later
            self._tensorboard = SummaryWriter(str(tensorboard_dir), purge_step=purge)

    @classmethod
    def in_run_dir(cls, run_dir: Path, tensorboard: bool = True,
                   resume_step: Optional[int] = None) -> "MetricLogger":
        """The logger of a run directory: ``<run_dir>/metrics.jsonl`` and ``<run_dir>/tb/``."""
        layout = RunDir(run_dir)
        return cls(layout.metrics, layout.tensorboard if tensorboard else None, resume_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` (name -> number) at ``step`` (e.g. emulator frames, or iterations)."""
        clash = [name for name in metrics if name in RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record itself; choose other names")
        now = time.time()
        record: dict[str, Any] = {"step": int(step), "wall_time": round(now, 3)}
        for name, value in metrics.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else None
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(name, value, int(step), walltime=now)
        self._jsonl.write(record)

    def flush(self) -> None:
        """Push TensorBoard's buffered events to disk (the JSONL file is flushed line by line)."""
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file (``step``, ``wall_time`` and the metrics of each :meth:`MetricLogger.log`)."""
    return list(read_jsonl(path))
