"""Every name of the experiment directories (run files, checkpoints, a sweep's manifest) is spelled in
``stm_rl/run_dir.py`` only: the code elsewhere asks :class:`~stm_rl.run_dir.RunDir` for paths. This test reads
the source of the package, the agents, the environments and the benchmarks for string constants (docstrings
aside) that spell one of those names."""

from __future__ import annotations

import ast
from pathlib import Path

from stm_rl.run_dir import SWEEP_MANIFEST, Checkpoint, RunDir

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "stm_rl" / "run_dir.py"
LAYOUT_NAMES = {RunDir.CONFIG, RunDir.GAMES, RunDir.GAMES_COMPRESSED, RunDir.EVALUATIONS, RunDir.METRICS,
                RunDir.METRICS_COMPRESSED, RunDir.SUMMARY, RunDir.TENSORBOARD, RunDir.CHECKPOINTS, RunDir.LOCK,
                RunDir.SWEEP_RUN, RunDir.TRAIN_LOG, SWEEP_MANIFEST, *(name.value for name in Checkpoint)}
PREFIXES = ("eval-",)
"""Beginnings of names built from parts (``eval-<checkpoint>-skip<N>.json``)."""


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (the first statement of a module, class or function, or
    a string statement right after an assignment, as attribute docstrings are written here)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for statement in body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                found.add(id(statement.value))
    return found


def spelled_names(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and (node.value in LAYOUT_NAMES or node.value.startswith(PREFIXES))]


def test_layout_names_are_spelled_in_run_dir_only():
    sources = [path for folder in ("stm_rl", "agents", "envs", "benchmarks") for path in (ROOT / folder).rglob("*.py")]
    assert OWNER in sources and len(sources) > 40
    offenders = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for path in sources if path != OWNER
                 for line, value in spelled_names(path)]
    assert offenders == [], "spell these through stm_rl.run_dir (RunDir, Checkpoint, SWEEP_MANIFEST):\n" + "\n".join(offenders)


def test_the_check_finds_a_spelled_name(tmp_path):
    """The check itself can fail: a module that spells a checkpoint and a file name is caught, its docstring not."""
    module = tmp_path / "module.py"
    module.write_text('"""Writes config.json and checkpoints/latest.pt."""\n'
                      'def f(run_dir):\n    """Reads "latest"."""\n'
                      '    return run_dir / "config.json", run_dir.checkpoint("latest"), f"eval-{1}.json"\n')
    assert [value for _, value in spelled_names(module)] == ["config.json", "latest", "eval-"]
