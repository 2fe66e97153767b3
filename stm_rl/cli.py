"""The ``stm-rl`` command: ``stm-rl train | sweep | evaluate | plot`` (``stm-rl COMMAND --help``).

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``;
this module only dispatches, and turns user errors into one-line messages (exit code 2).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from stm_rl.run_dir import StmRlError

COMMANDS = ("train", "sweep", "evaluate", "plot")
_MODULES = {"train": "stm_rl.a3c.train_command", "sweep": "stm_rl.sweep", "evaluate": "stm_rl.evaluate",
            "plot": "stm_rl.plotting"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stm-rl", description="A3C Pong with LSTM and STM (Self-Attentive Associative Memory) agents.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(_MODULES[name])
        except ModuleNotFoundError as error:
            if error.name != _MODULES[name]:
                raise
            continue  # a command that this installation does not have yet
        module.add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (StmRlError, ValueError) as error:
        if os.environ.get("STM_RL_DEBUG"):
            raise
        print(f"stm-rl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stm-rl {args.command}: interrupted", file=sys.stderr)
        return 130


def existing_dir(text: str) -> Path:
    """argparse type: a directory that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    return path


if __name__ == "__main__":
    sys.exit(main())
