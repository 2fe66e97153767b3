"""``stm-rl sweep --backend ray``: each run of a sweep is a Ray task on a cluster (docs/cluster.md).

**Tasks, not Tune trials.** Figure 3 is a fixed grid of runs that already have what Tune would add: their own
directories, checkpoints, resume rule and logs (:mod:`stm_rl.sweep_run`), and a manifest (sweep.json). Tune
would lay a second layout beside them (trial folders, its own checkpoints and experiment state), restore
trials by its own rule, and expect the trainer to report through its session API; none of its search or
early-stopping machinery serves a fixed grid. A Ray task is the part of Ray this needs: a function run on
some node with a resource reservation (``num_cpus = workers_per_run + 1``: the A3C workers plus the trainer,
so Ray packs runs onto nodes), and an error when its worker or node dies. Retries are the sweep's own
(``--retries``, counted in sweep.json, each one resuming from the latest checkpoint), so Ray's are off.

The task starts the same process as the local backend, ``python -m stm_rl.sweep_run RUN_FILE``, and waits
for it: the trainer keeps its main thread and signal handlers, spawns (never forks) its A3C workers with one
torch thread each, and the whole run is one process group that can be stopped cleanly (Ctrl-C ->
``ray.cancel`` -> SIGINT: final checkpoint) or killed. If the task's worker dies (its node, or the driver,
died), Ray kills the run's process too (or, where Ray leaves it, the run gets SIGTERM and stops with a final
checkpoint); a retry resumes from the latest checkpoint, after waiting for any trainer of the run still
stopping (the run's lock).

Every path must mean the same folder on every node: ``--out`` is a shared folder, checked from each node
when the sweep starts.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from stm_rl import sweep_run
from stm_rl.run_dir import StmRlError
from stm_rl.sweep import SHUTDOWN_GRACE_S, RunEntry, SweepOptions

CONNECT_TIMEOUT_S = 5.0
"""Seconds to wait for the head node's port to answer before giving up on --ray-address."""
NODE_CHECK_TIMEOUT_S = 120.0
"""Seconds every node gets to answer the check of --out."""


@ray.remote(max_retries=0)
def train_run(run_file: str) -> int:
    """Train one run on whichever node Ray chose; returns the exit code of its process.

    ``ray.cancel`` (a KeyboardInterrupt here) is passed on as SIGINT: the trainer stops after its current
    update and writes its final checkpoint; past the grace period, or on a second cancel, the run is killed.
    """
    # ray.cancel raises the KeyboardInterrupt through Python's SIGINT handling, which a worker process lacks
    # when its node was started with SIGINT ignored (from a script's background job): Python's default handler
    # for the time of the run, the one a worker started otherwise has; the worker's own is back afterwards.
    if threading.current_thread() is not threading.main_thread():
        return _run_trainer(run_file)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run_trainer(run_file)
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be put back from here
            signal.signal(signal.SIGINT, previous)


def _run_trainer(run_file: str) -> int:
    """The body of :func:`train_run`: start the run's trainer, pass a cancellation on as SIGINT (a second one,
    or the end of the grace period, kills it)."""
    process = sweep_run.RunProcess.start(Path(run_file).parent)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return process.stop(SHUTDOWN_GRACE_S)
    finally:
        process.kill()  # workers a killed trainer left behind


@ray.remote(num_cpus=0, max_retries=0)
def check_out_on_node(out: str, marker: str) -> tuple[str, str]:
    """(host, problem or ""): whether this node sees the sweep folder (the driver's marker file) and can write there."""
    host = socket.gethostname()
    folder = Path(out)
    if not (folder / marker).exists():
        return host, "does not see the sweep folder the driver created there (not a shared folder?)"
    probe = folder / f".sweep-probe-{host}-{os.getpid()}"
    try:
        probe.write_text("probe\n")
        probe.unlink()
    except OSError as error:
        return host, f"cannot write there ({error.strerror or error})"
    return host, ""


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with the flag named, when nothing listens at HOST:PORT (Ray itself would retry for a minute)."""
    if address == "auto":
        return
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise StmRlError(f"--ray-address {address!r}: expected auto or HOST:PORT (the address `ray start --head` "
                         "printed)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise StmRlError(f"--ray-address {address}: no Ray cluster answers there ({error.strerror or error}); "
                         "start one with `ray start --head` and pass the address it prints") from None


@dataclass
class RayBackend:
    """Runs as Ray tasks; connected to the cluster for the length of the sweep."""

    options: SweepOptions
    tasks: dict[Any, str] = field(default_factory=dict)
    """Ray object reference of each running task -> run name."""

    @classmethod
    def connect(cls, options: SweepOptions) -> "RayBackend":
        """Connect to the cluster at ``--ray-address`` and check it can train the sweep (clear errors otherwise)."""
        address = options.ray_address
        if address is not None:
            check_reachable(address)
        try:  # no address: Ray's own rule ($RAY_ADDRESS, a `ray start` cluster here, else a local instance)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            if address is None:
                raise StmRlError(f"--backend ray: could not start a local Ray instance ({first_line}); "
                                 "pass --ray-address to join a running cluster") from None
            raise StmRlError(f"--ray-address {address}: cannot join a Ray cluster ({first_line})") from None
        backend = cls(options)
        try:
            backend.check_cluster()
        except BaseException:
            ray.shutdown()
            raise
        return backend

    def check_cluster(self) -> None:
        """Some node has the CPUs of one run, and every node can write ``--out`` (the same shared folder)."""
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        needed = self.options.workers_per_run + 1
        largest = max((node["Resources"].get("CPU", 0) for node in nodes), default=0)
        if largest < needed:
            raise StmRlError(f"--workers-per-run {self.options.workers_per_run}: a run needs {needed} CPUs on one "
                             f"node (its workers and its trainer); the largest node of the cluster has {largest:g}")
        out = self.options.out
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)  # the driver may write there: Sweep.run checked
        marker = out / f".sweep-marker-{uuid.uuid4().hex}"
        marker.write_text("written by the sweep's driver\n")
        try:
            checks = {check_out_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(str(out), marker.name): node for node in nodes}
            ready, _ = ray.wait(list(checks), num_returns=len(checks), timeout=NODE_CHECK_TIMEOUT_S)
            problems = []
            for ref, node in checks.items():
                address = node.get("NodeManagerAddress", "?")
                if ref not in ready:
                    problems.append(f"node {address} did not answer within {NODE_CHECK_TIMEOUT_S:.0f} s")
                    continue
                host, problem = ray.get(ref)
                if problem:
                    problems.append(f"node {address} ({host}) {problem}")
        finally:
            marker.unlink(missing_ok=True)
        if problems:
            if created:
                _remove_empty(out)
            raise StmRlError(f"--out {out}: {problems[0]}" + (f" (and {len(problems) - 1} more node(s))"
                                                              if len(problems) > 1 else "")
                             + "; --out must be a folder every node sees at the same path (docs/cluster.md)")

    def capacity(self, runs: int) -> int:
        return self.options.max_parallel or runs  # Ray queues the tasks until CPUs are free

    def start(self, entry: RunEntry) -> None:
        task = train_run.options(num_cpus=self.options.workers_per_run + 1, name=f"stm-rl {entry.spec.name}")
        self.tasks[task.remote(str(sweep_run.run_file(entry.spec.run_dir)))] = entry.spec.name

    def wait(self, timeout: float) -> list[tuple[str, Optional[int], str]]:
        if not self.tasks:
            return []
        ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self.tasks), num_returns=len(self.tasks), timeout=0)
        return [self._result(ref) for ref in ready]

    def running(self) -> list[str]:
        return list(self.tasks.values())

    def stop(self, grace: float) -> dict[str, Optional[int]]:
        for ref in self.tasks:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: SIGINT to the run, final checkpoint
        try:
            ready, late = ray.wait(list(self.tasks), num_returns=len(self.tasks), timeout=grace)
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            ready, late = [], list(self.tasks)
        for ref in late:
            ray.cancel(ref, force=True)  # kills the task's worker; the run gets SIGTERM (sweep_run.die_with_parent)
        codes = {name: code for name, code, _ in (self._result(ref) for ref in ready)}
        codes.update({self.tasks.pop(ref): None for ref in late})
        return codes

    def close(self) -> None:
        ray.shutdown()

    def _result(self, ref: Any) -> tuple[str, Optional[int], str]:
        name = self.tasks.pop(ref)
        try:
            return name, ray.get(ref), ""
        except ray.exceptions.RayError as error:  # worker or node died, task cancelled
            first_line = (str(error).strip().splitlines() or [""])[0]
            return name, None, f"{type(error).__name__}: {first_line}"


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
