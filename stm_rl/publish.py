"""``stm-rl publish``: the part of runs worth committing, in a folder of the repository (``results/``).

A run directory holds checkpoints, tensorboard events and logs of every kind; what a reader of the results needs
is small: the game log (every training game: what ``stm-rl plot`` and ``benchmarks/time_to_score.py`` read),
the training metrics, the config, the summary and the greedy evaluations (``eval-*.json``). ``stm-rl publish`` copies those, and only
those, into ``--to DIR/<run name>/``:

- ``games.jsonl`` becomes ``games.jsonl.gz`` (gzip with a fixed timestamp, so an unchanged log gives the same
  bytes and git sees no change); every reader of game logs takes the compressed file where the plain one is
  absent (:attr:`stm_rl.run_dir.RunDir.game_log`);
- ``metrics.jsonl`` becomes ``metrics.jsonl.gz`` without its per-game rows (the game log has them): the losses,
  entropy, gradient norm and rates of the updates, evaluations and milestones, a tenth of the plain file or less
  (read it with ``stm_rl.run_dir.read_jsonl``, or ``zcat``);
- JSON files are copied with the machine's absolute paths taken out: the working directory becomes relative,
  the home directory ``~``, any other absolute path keeps only its last component (a committed file names no
  folder of the machine that ran it);
- ``evaluations.jsonl`` (a supervised run's validations and test, what ``benchmarks/supervised_table.py`` reads)
  is copied as it is, where it holds any record;
- a run still training is published as far as it got (its complete game lines), with its published summary
  saying ``running`` whatever the last finished segment said: a run extended past its budget keeps the
  summary of the segment that completed it until the extension ends, and its copy must not read as
  completed (``stm-rl plot --completed-only`` and ``stm-rl sweep --adopt`` go by that status). Publishing
  again later replaces the files with their newer state. A sweep folder's ``sweep.json`` comes along as ``DIR/sweep.json``.
- a published copy that has trained further than the run now (a campaign's run started again from zero on a new
  machine, whose checkpoints were not committed) is kept, not replaced, unless ``--force`` is given: the exit
  status is then 1 and a line names the run and both counts.

Nothing is deleted from ``DIR``, so runs published from several sweeps or machines can sit side by side.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from stm_rl.a3c.progress import GAME_METRICS
from stm_rl.conventions import RunStatus
from stm_rl.run_dir import (SWEEP_MANIFEST, RunDir, StmRlError, check_can_write, find_run_dirs, read_json, read_jsonl,
                            write_json_atomic, write_jsonl_atomic)

COPIED_JSON = (RunDir.CONFIG, RunDir.SUMMARY)
"""JSON files of a run that are published (with its evaluation reports, ``eval-*.json``)."""

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s/\"',;:=]+/)+")
"""The folders of an absolute path (``/a/b/`` of ``/a/b/c``) not preceded by a word, ``~``, ``:`` or ``/``
(so URLs and relative paths are left alone)."""


@dataclass(frozen=True)
class Published:
    """What publishing one run wrote."""

    name: str
    games: int
    bytes: int
    being_trained: bool
    """The run was being trained (its lock held) while it was copied."""


def scrub_paths(value: Any, cwd: Path, home: Path) -> Any:
    """``value`` (JSON data) with no absolute path of this machine in any string: below ``cwd`` relative, below
    ``home`` as ``~/...``, elsewhere only the last component."""
    if isinstance(value, dict):
        return {key: scrub_paths(item, cwd, home) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_paths(item, cwd, home) for item in value]
    if not isinstance(value, str):
        return value
    text = value.replace(f"{cwd}{os.sep}", "").replace(str(cwd), ".")
    text = text.replace(f"{home}{os.sep}", f"~{os.sep}")
    return _ABSOLUTE_PATH.sub("", text)


def write_gzip_jsonl(records: Sequence[dict], path: Path) -> bool:
    """Write ``records`` as gzip-compressed JSONL with a fixed timestamp, atomically; False if the file already
    held exactly these records (nothing written)."""
    text = "".join(json.dumps(record) + "\n" for record in records).encode("utf-8")
    if path.exists():
        with gzip.open(path, "rb") as existing:
            if existing.read() == text:
                return False
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as compressed:
        compressed.write(text)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(path)
    return True


def training_metrics(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` without the per-game metrics (the game log has them): losses, rates,
    evaluations and milestones; rows left with nothing but their step and time are dropped."""
    rows = []
    for row in read_jsonl(path):
        kept = {key: value for key, value in row.items() if key not in GAME_METRICS}
        if kept.keys() - {"step", "wall_time"}:
            rows.append(kept)
    return rows


def publish_run(run_dir: Path, target: Path, cwd: Path, home: Path) -> Published:
    """Copy one run's game log (compressed), metrics (compressed), evaluation log, config, summary and greedy
    evaluations into ``target``."""
    layout = RunDir(run_dir)
    being_trained = layout.status() == RunStatus.RUNNING
    target.mkdir(parents=True, exist_ok=True)
    games = list(read_jsonl(layout.game_log)) if layout.game_log.exists() else []
    if games:
        write_gzip_jsonl(games, target / RunDir.GAMES_COMPRESSED)
    training = training_metrics(layout.metrics) if layout.metrics.exists() else []
    if training:
        write_gzip_jsonl(training, target / RunDir.METRICS_COMPRESSED)
    evaluations = list(read_jsonl(layout.evaluations)) if layout.evaluations.exists() else []
    if evaluations:  # a supervised run's validation curve and test; an RL run writes none unless asked to
        write_jsonl_atomic(target / RunDir.EVALUATIONS, evaluations)
    sources = [layout.path / name for name in COPIED_JSON] + layout.evaluation_reports()
    for source in sources:
        if source.is_file():
            data = read_json(source)
            if being_trained and source == layout.summary and isinstance(data, dict):
                data = {**data, "status": RunStatus.RUNNING.value}
            write_json_atomic(target / source.name, scrub_paths(data, cwd, home))
    size = sum(path.stat().st_size for path in target.iterdir() if path.is_file())
    return Published(layout.path.name, len(games), size, being_trained)


def training_progress(run_dir: Path) -> tuple[int, int, int]:
    """How far a run has trained, comparable between a run and its published copy: ``(agent steps, emulator
    frames, iterations)`` (an RL run counts the first two, a supervised run the last)."""
    layout = RunDir(run_dir)
    trained = layout.trained()
    iterations = layout.read_summary().get("iterations")
    return trained.agent_steps, trained.frames, iterations if isinstance(iterations, int) else 0


def describe_progress(progress: tuple[int, int, int]) -> str:
    agent_steps, frames, iterations = progress
    if agent_steps or frames:
        return f"{agent_steps:,} agent steps" if agent_steps else f"{frames:,} frames"
    return f"{iterations:,} iterations"


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """The runs to publish (:func:`~stm_rl.run_dir.find_run_dirs`); two with the same name cannot share ``--to``."""
    found = find_run_dirs(paths)
    names = [run.name for run in found]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StmRlError(f"two runs are named {repeated[0]}: publish them to different --to folders")
    return found


# ---------------------------------------------------------------- command line
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish", help="copy runs' game logs (compressed), configs, summaries and evaluations for committing",
        description="Copy what is worth committing of runs (games.jsonl as games.jsonl.gz, config.json, "
                    "summary.json, eval-*.json; no checkpoints or tensorboard events) into --to DIR/<run>/, with "
                    "this machine's absolute paths taken out of every file. Runs still training are copied as far "
                    "as they got; publishing again updates them.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="SWEEP_DIR_OR_RUN",
                        help="run directories, or folders searched for runs (e.g. a sweep's --out)")
    parser.add_argument("--to", type=Path, required=True, metavar="DIR",
                        help="folder to publish into (e.g. results/figure3); one subfolder per run")
    parser.add_argument("--force", action="store_true",
                        help="replace a published copy even where it has trained further than the run (default: "
                             "keep it, name the run and exit 1: a run started again from zero must not overwrite "
                             "the log of a longer one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    runs = find_runs(args.paths)
    target = check_can_write(args.to, "--to", directory=True)
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    total_games, kept = 0, []
    for run_dir in runs:
        copy_progress, run_progress = training_progress(target / run_dir.name), training_progress(run_dir)
        if copy_progress > run_progress and not args.force:
            kept.append(run_dir.name)
            print(f"  {run_dir.name:<22} kept: the copy in {target} has trained further "
                  f"({describe_progress(copy_progress)}) than this run ({describe_progress(run_progress)}); "
                  f"--force replaces it")
            continue
        published = publish_run(run_dir, target / run_dir.name, cwd, home)
        total_games += published.games
        print(f"  {published.name:<22} {published.games:>7,} games  {published.bytes / 1e6:6.2f} MB"
              + ("  (training now: published as running)" if published.being_trained else ""))
    for path in map(Path, args.paths):
        if (path / SWEEP_MANIFEST).is_file():
            write_json_atomic(target / SWEEP_MANIFEST, scrub_paths(read_json(path / SWEEP_MANIFEST), cwd, home))
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    print(f"published {len(runs) - len(kept)} run(s), {total_games:,} games, to {target} ({size / 1e6:.2f} MB in all "
          f"there)" + (f"; kept the further-trained copies of {', '.join(kept)}" if kept else ""))
    return 1 if kept else 0
