"""The ``stm-rl`` command: ``stm-rl train | sweep | evaluate | plot`` (``stm-rl COMMAND --help``).

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``; this
module only dispatches, and applies the conventions of :mod:`stm_rl.conventions`: a user error is one
line and exit code 2, Ctrl-C is 130, an unexpected failure to read or write a file is one line and 1;
``STM_RL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from stm_rl import evaluate, plotting, sweep
from stm_rl.a3c import train_command
from stm_rl.conventions import ExitCode, debugging
from stm_rl.run_dir import StmRlError, describe_os_error

COMMANDS = {"train": train_command, "sweep": sweep, "evaluate": evaluate, "plot": plotting}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stm-rl", description="A3C Pong with LSTM and STM (Self-Attentive Associative Memory) agents. "
                                   "Exit codes: 0 completed, 1 failed, 2 bad input, 130 interrupted.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (StmRlError, ValueError) as error:
        if debugging():
            raise
        print(f"stm-rl {args.command}: error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except OSError as error:  # a file that could not be read or written, found only while working
        if debugging():
            raise
        print(f"stm-rl {args.command}: error: {describe_os_error(error)} (STM_RL_DEBUG=1 shows where)",
              file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        print(f"stm-rl {args.command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def existing_dir(text: str) -> Path:
    """argparse type: a directory that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    return path


if __name__ == "__main__":
    sys.exit(main())
