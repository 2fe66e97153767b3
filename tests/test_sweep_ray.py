"""``stm-rl sweep --backend ray`` on a real local Ray cluster (2 CPUs, started once for this module).

Each sweep is its own process that joins the cluster by address, as on a real cluster: tiny runs (lstm,
small encoder, frame skip 32, one worker, a few thousand frames) that finish in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from stm_rl import sweep, sweep_ray, sweep_run  # noqa: E402  (after the skip: the module imports ray)
from stm_rl.a3c.checkpoint import load_training_checkpoint  # noqa: E402
from stm_rl.run_dir import RunDir  # noqa: E402
from stm_rl.cli import main as cli_main  # noqa: E402

TINY = ["--agents", "lstm", "--frame-skips", "32", "--workers-per-run", "1", "--encoder", "small",
        "--envs-per-worker", "1", "--no-progress", "--poll-interval", "0.2"]


@pytest.fixture(scope="module")
def cluster_address():
    """A local Ray cluster owned by this test process (2 CPUs: one run of 1 worker + its trainer at a time)."""
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def sweep_process(address: str, out: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "stm_rl.cli", "sweep", "--backend", "ray", "--ray-address", address,
               "--out", str(out), *TINY, *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_sweep(address: str, out: Path, *flags: str, timeout: float = 240) -> tuple[int, str]:
    process = sweep_process(address, out, *flags)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def trainer_pid_once_checkpointed(run_dir: Path, timeout: float = 120) -> int:
    """The pid of the trainer of ``run_dir`` (from its lock), once its latest checkpoint holds trained frames."""
    latest = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = RunDir(run_dir).lock_holder()
        if holder and latest.exists() and load_training_checkpoint(latest)["counters"]["frames"] > 0:
            host, pid = holder.split()
            assert host == socket.gethostname()
            return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no checkpointed trainer in {run_dir} after {timeout} s")


def assert_spawned_single_threaded(trainer: int) -> None:
    """Inside the Ray task the trainer runs with one OpenMP thread and its workers are spawned (a fresh
    interpreter: ``multiprocessing.spawn``), not forked (a fork would show the trainer's own command line)."""
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{trainer}/environ").read_bytes().decode().split("\0")
                   if "=" in item)
    assert environ["OMP_NUM_THREADS"] == "1" and environ[sweep_run.PARENT_ENV]
    deadline = time.monotonic() + 10
    while True:  # a child that has just been spawned (or is exiting) shows an empty command line for a moment
        children = Path(f"/proc/{trainer}/task/{trainer}/children").read_text().split()
        commands = [Path(f"/proc/{child}/cmdline").read_bytes().decode() for child in children]
        if any("spawn_main" in command for command in commands) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any("spawn_main" in command for command in commands), commands
    assert not any("stm_rl.sweep_run" in command for command in commands), commands


def test_without_an_address_the_sweep_starts_its_own_ray_instance(tmp_path):
    """Ray's convention for ray.init() without an address: with no RAY_ADDRESS and no cluster started here, the
    sweep starts a local instance for itself (first in this module: before the module's own cluster exists)."""
    out = tmp_path / "sweep"
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "stm_rl.cli", "sweep", "--backend", "ray", "--out", str(out), *TINY,
               "--seeds", "0", "--frames", "2000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    run = manifest_runs(out)["lstm-skip32-seed0"]
    assert (run["state"], run["exit_code"]) == ("done", 0)
    assert json.loads((out / "sweep.json").read_text())["backend"] == "ray"
    assert not ray.is_initialized(), "the instance was the sweep's, not this test process's"


def manifest_runs(out: Path) -> dict[str, dict]:
    return {run["name"]: run for run in json.loads((out / "sweep.json").read_text())["runs"]}


@pytest.fixture(scope="module")
def tiny_sweep(cluster_address, tmp_path_factory):
    """Two configurations (seeds 0 and 1) trained on the cluster; (out, exit code, output)."""
    out = tmp_path_factory.mktemp("ray") / "fig3"
    code, output = run_sweep(cluster_address, out, "--seeds", "0", "1", "--frames", "3000")
    return out, code, output


def test_tiny_sweep_completes_with_a_correct_manifest(tiny_sweep):
    out, code, output = tiny_sweep
    assert code == 0, output
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["backend"] == "ray" and manifest["settings"] == {"--encoder": "small", "--envs-per-worker": 1}
    runs = manifest_runs(out)
    assert set(runs) == {"lstm-skip32-seed0", "lstm-skip32-seed1"}
    for name, run in runs.items():
        assert (run["state"], run["exit_code"], run["attempts"]) == ("done", 0, 1)
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "completed" and run["frames_done"] == summary["counters"]["frames"] >= 3000
        config = json.loads((out / name / "config.json").read_text())["config"]
        assert config["agent"]["encoder"] == "small" and config["run"]["seed"] == run["seed"]
        assert config["run"]["workers"] == 1 and config["env"]["frame_skip"] == 32
        log = Path(run["log"]).read_text()
        assert log.count(f"$ [{socket.gethostname()}]") == 1 and "completed:" in log
        assert f"\n  {name}  done" in output, "the end-of-sweep table lists every run"


def test_rerunning_the_sweep_starts_nothing(cluster_address, tiny_sweep):
    out = tiny_sweep[0]
    logs = {path: path.read_text() for path in out.glob("*/train.log")}
    code, output = run_sweep(cluster_address, out, "--seeds", "0", "1", "--frames", "3000")
    assert code == 0, output
    assert "2 already completed" in output
    assert {path: path.read_text() for path in logs} == logs, "no run was started again"
    assert all(run["attempts"] == 0 and run["state"] == "done" for run in manifest_runs(out).values())


def test_dry_run_lists_states_without_the_cluster(tiny_sweep, capsys):
    out = tiny_sweep[0]
    manifest = (out / "sweep.json").read_text()
    assert cli_main(["sweep", "--backend", "ray", "--ray-address", "127.0.0.1:1", "--out", str(out), *TINY,
                     "--seeds", "0", "1", "2", "--frames", "3000", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[0]: line.split()[1:3] for line in lines if line.strip().startswith("lstm-")}
    frames = manifest_runs(out)["lstm-skip32-seed0"]["frames_done"]
    assert states["lstm-skip32-seed0"] == ["done", sweep.readable_frames(frames)]
    assert states["lstm-skip32-seed2"] == ["start", "0"]
    assert (out / "sweep.json").read_text() == manifest and not (out / "lstm-skip32-seed2").exists()


@pytest.mark.parametrize("victim", ["trainer", "ray worker"])
def test_a_killed_run_is_retried_from_its_checkpoint(cluster_address, tmp_path, victim):
    """SIGKILL the run's trainer (the run fails), or the Ray worker process running its task (as when a node
    dies: Ray reports the task lost): either way the run starts again and resumes from its checkpoint."""
    out = tmp_path / "sweep"
    process = sweep_process(cluster_address, out, "--seeds", "5", "--frames", "40000", "--checkpoint-interval", "1")
    run_dir = out / "lstm-skip32-seed5"
    trainer = trainer_pid_once_checkpointed(run_dir)
    assert_spawned_single_threaded(trainer)
    ray_worker = int(Path(f"/proc/{trainer}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(trainer if victim == "trainer" else ray_worker, signal.SIGKILL)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    run = manifest_runs(out)["lstm-skip32-seed5"]
    assert (run["state"], run["attempts"]) == ("done", 2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["counters"]["segments"] == 2
    log = (run_dir / "train.log").read_text()
    assert log.count("$ [") == 2 and "resuming at" in log
    assert "retrying from the latest checkpoint" in output
    assert ("WorkerCrashedError" in output) == (victim == "ray worker")


def test_ctrl_c_stops_the_runs_with_a_final_checkpoint(cluster_address, tmp_path):
    out = tmp_path / "sweep"
    process = sweep_process(cluster_address, out, "--seeds", "6", "--frames", "10M", "--checkpoint-interval", "1")
    run_dir = out / "lstm-skip32-seed6"
    trainer = trainer_pid_once_checkpointed(run_dir)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert manifest_runs(out)["lstm-skip32-seed6"]["state"] == "interrupted"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (run_dir / "checkpoints" / "final.pt").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(trainer, 0)  # the trainer is gone


def test_an_unreachable_address_gives_a_clear_error(tmp_path, capsys):
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    out = tmp_path / "sweep"
    assert cli_main(["sweep", "--backend", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", str(out),
                     *TINY, "--seeds", "0", "--frames", "3000"]) == 2
    error = capsys.readouterr().err
    assert f"--ray-address 127.0.0.1:{port}: no Ray cluster answers there" in error and error.count("\n") == 1
    assert not out.exists()


def test_a_node_that_does_not_see_the_sweep_folder_is_named(cluster_address, tmp_path):
    """The per-node check of --out, run on the cluster's node (here a folder without the driver's marker)."""
    host, problem = ray.get(sweep_ray.check_out_on_node.remote(str(tmp_path), ".sweep-marker-missing"))
    assert host == socket.gethostname() and "does not see the sweep folder" in problem
    (tmp_path / ".sweep-marker-present").write_text("")
    assert ray.get(sweep_ray.check_out_on_node.remote(str(tmp_path), ".sweep-marker-present")) == (host, "")
