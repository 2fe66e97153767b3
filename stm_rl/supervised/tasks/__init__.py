"""The supervised tasks of ``../shared/spec/SUPERVISED.md``, one module each, behind one registry.

``TASKS`` maps a task's command-line name to its class; ``make_task(name, **options)`` builds one. Adding a
task is one module with a :class:`~stm_rl.supervised.tasks.base.Task` subclass and one line here.
"""

from __future__ import annotations

import inspect

from stm_rl.run_dir import StmRlError
from stm_rl.supervised.tasks.associative_retrieval import AssociativeRetrieval50Task, AssociativeRetrievalTask
from stm_rl.supervised.tasks.babi import BabiTask
from stm_rl.supervised.tasks.base import Batch, Sample, Task
from stm_rl.supervised.tasks.convex_hull import ConvexHullTask
from stm_rl.supervised.tasks.copy import CopyTask
from stm_rl.supervised.tasks.minimum_spanning_tree import MinimumSpanningTreeTask
from stm_rl.supervised.tasks.nth_farthest import NthFarthestTask
from stm_rl.supervised.tasks.priority_sort import PrioritySortTask
from stm_rl.supervised.tasks.rar import RARAsRunTask, RARTask
from stm_rl.supervised.tasks.shortest_path import ShortestPathTask
from stm_rl.supervised.tasks.tsp import TSP10Task, TSPTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    AssociativeRetrievalTask, AssociativeRetrieval50Task, NthFarthestTask, CopyTask, PrioritySortTask,
    RARTask, RARAsRunTask, ConvexHullTask, TSPTask, TSP10Task, ShortestPathTask, MinimumSpanningTreeTask,
    BabiTask,
)}


def make_task(name: str, **options) -> Task:
    """The task registered as ``name`` built with ``options``; unknown names and bad options raise
    :class:`StmRlError` with a one-line message."""
    if name not in TASKS:
        raise StmRlError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    unknown = unknown_options(TASKS[name], options)
    if unknown:
        raise StmRlError(f"task {name} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(option_names(TASKS[name]))}")
    try:
        return TASKS[name](**options)
    except (TypeError, ValueError) as error:
        raise StmRlError(f"task {name}: {error}") from None


def option_names(constructor) -> list[str]:
    """The keyword options a class or function accepts (``--task-option`` / ``--model-option`` names)."""
    parameters = inspect.signature(constructor).parameters.values()
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in ("self", "input_size", "output_size")]


def unknown_options(constructor, options) -> list[str]:
    """The keys of ``options`` that ``constructor`` does not accept (none if it takes ``**kwargs``)."""
    if any(p.kind == p.VAR_KEYWORD for p in inspect.signature(constructor).parameters.values()):
        return []
    known = set(option_names(constructor))
    return [key for key in options if key not in known]


__all__ = ["TASKS", "Batch", "Sample", "Task", "make_task", "option_names", "unknown_options"]
