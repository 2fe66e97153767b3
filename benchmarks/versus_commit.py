"""Speed of this tree against an older commit, measured in the same run (issue 27's "no speed lost" check).

Checks ``--rev`` out into a temporary git worktree and runs the same benchmark in both trees, alternating
old, new, new, old, ... (``--rounds`` pairs) so that drift of the machine falls on both sides; each run uses
this tree's virtual environment with the tree's own source first on ``PYTHONPATH``. Prints every row's figure
per tree (median over rounds) and the ratio new / old:

- ``train`` (``benchmarks/train_speed.py``): A3C frames/s at frame skip 4, both agents with the small encoder,
  16 games per worker, 2 workers (higher is better);
- ``cell`` (``benchmarks/stm_speed.py --quick``): the STM cell's forward+backward ms/step at batches 1 and 16
  (lower is better).

    python benchmarks/versus_commit.py --rev 27083d8                     # both, 2 rounds, ~25 minutes
    python benchmarks/versus_commit.py --rev HEAD~3 --benchmarks train --seconds 30 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from stm_rl.conventions import run_command

ROOT = Path(__file__).resolve().parent.parent
TRAIN_ROW = re.compile(r"^(?P<label>\S.*?)\s+(?P<frames>\d+)\s+(?P<steps>\d+)\s+(?P<share>\d+\.\d+)$")
CELL_ROW = re.compile(r"^\s*(?P<batch>\d+)\s+(?P<impl>stm_rl|straightforward)\s+(?P<ms>\d+\.\d+)")


def benchmark_command(name: str, seconds: float) -> list[str]:
    if name == "train":
        return [sys.executable, "benchmarks/train_speed.py", "--configs", "lstm-small", "stm-small",
                "--envs-per-worker", "16", "--seconds", str(seconds)]
    return [sys.executable, "benchmarks/stm_speed.py", "--quick"]


def parse(name: str, output: str) -> dict[str, float]:
    """Row label -> figure: frames/s for ``train``, ms/step for ``cell``."""
    rows = {}
    for line in output.splitlines():
        if name == "train" and (match := TRAIN_ROW.match(line.rstrip())):
            rows[match["label"].strip()] = float(match["frames"])
        elif name == "cell" and (match := CELL_ROW.match(line)):
            rows[f"batch {match['batch']} {match['impl']} ms/step"] = float(match["ms"])
    return rows


def run_in(tree: Path, command: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed in {tree.name}: {done.stderr.strip()[-500:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the older commit to compare with")
    parser.add_argument("--benchmarks", nargs="+", choices=["train", "cell"], default=["train", "cell"])
    parser.add_argument("--rounds", type=int, default=2, help="old/new pairs per benchmark, alternating order")
    parser.add_argument("--seconds", type=float, default=45.0, help="measured seconds per train_speed row")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.rev}^{{commit}}"], cwd=ROOT,
                      capture_output=True).returncode != 0:
        parser.error(f"--rev: {args.rev!r} is not a commit of this repository")

    with tempfile.TemporaryDirectory(prefix="stm_rl_versus_") as scratch:
        old = Path(scratch) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(old), args.rev], cwd=ROOT, check=True)
        try:
            for name in args.benchmarks:
                figures: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
                order = [("old", old), ("new", ROOT)]
                for round_index in range(args.rounds):
                    for side, tree in (order if round_index % 2 == 0 else order[::-1]):
                        print(f"{name}: round {round_index + 1}/{args.rounds}, {side} tree ...", flush=True)
                        for label, value in parse(name, run_in(tree, benchmark_command(name, args.seconds))).items():
                            figures[side].setdefault(label, []).append(value)
                better = "higher" if name == "train" else "lower"
                print(f"\n{name} ({better} is better), median over {args.rounds} round(s); old = {args.rev}")
                print(f"{'row':<48} {'old':>10} {'new':>10} {'new/old':>8}")
                for label, old_values in figures["old"].items():
                    new_values = figures["new"].get(label)
                    if not new_values:
                        print(f"{label:<48} {statistics.median(old_values):>10.3f} {'-':>10}")
                        continue
                    a, b = statistics.median(old_values), statistics.median(new_values)
                    print(f"{label:<48} {a:>10.3f} {b:>10.3f} {b / a:>8.3f}")
                print(flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)


if __name__ == "__main__":
    sys.exit(run_command("versus_commit.py", main))
