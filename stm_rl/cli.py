"""The ``stm-rl`` command: ``stm-rl train | sweep | evaluate | plot | publish | supervised`` (``stm-rl COMMAND --help``).

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``, registered
in :data:`COMMANDS` (adding a command is that module and one line there); this module only dispatches, and
applies the conventions of :mod:`stm_rl.conventions` (:func:`~stm_rl.conventions.run_command`): a user error
is one line and exit code 2, Ctrl-C is 130, an unexpected failure to read or write a file is one line and 1;
``STM_RL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from stm_rl import evaluate, plotting, publish, sweep
from stm_rl.a3c import train_command
from stm_rl.conventions import run_command
from stm_rl.fastpath.fp32_matmul import requested_library
from stm_rl.fastpath.kernels import fused_kernels_setting
from stm_rl.supervised import command as supervised_command

COMMANDS = {"train": train_command, "sweep": sweep, "evaluate": evaluate, "plot": plotting, "publish": publish,
            "supervised": supervised_command}


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
    def body() -> int:
        requested_library()  # a bad STM_RL_FP32_MATMUL or STM_RL_FUSED_KERNELS is refused here, not in every worker
        fused_kernels_setting()
        return args.run(args)

    return run_command(f"stm-rl {args.command}", body)


def existing_dir(text: str) -> Path:
    """argparse type: a directory that exists."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    return path


if __name__ == "__main__":
    sys.exit(main())
