"""What the worker and evaluator processes tell the trainer, one type per kind of news.

They travel through a multiprocessing queue (pickled), so each is a small NamedTuple of plain values.
``source`` is a worker's rank, or ``"evaluator"``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union


class GameFinished(NamedTuple):
    """A training game ended: ``episode`` is the env's ``{"score", "length", "frames"}`` (raw score)."""

    source: int
    episode: dict[str, Any]


class UpdateDone(NamedTuple):
    """A worker applied one update: its losses and gradient norm, and the size of the recurrent memories its
    rollout ended with (:meth:`agents.AgentState.norms`), for the metrics."""

    source: int
    losses: dict[str, float]
    memory: dict[str, float]


class EvaluationDone(NamedTuple):
    """The evaluator played its greedy games at an update count (see :mod:`stm_rl.a3c.evaluator`)."""

    source: str
    result: dict[str, Any]


class ProcessFailed(NamedTuple):
    """A worker or the evaluator raised: the run stops as failed, the traceback goes to the user."""

    source: Union[int, str]
    traceback: str


class NonFinite(NamedTuple):
    """A worker found a non-finite loss or gradient and did not apply it; the run stops as failed."""

    source: int
    detail: str


Message = Union[GameFinished, UpdateDone, EvaluationDone, ProcessFailed, NonFinite]


def source_name(source: Union[int, str]) -> str:
    """``worker 3`` or ``evaluator``."""
    return f"worker {source}" if isinstance(source, int) else str(source)
