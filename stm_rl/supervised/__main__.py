"""``python -m stm_rl.supervised``: the ``stm-rl supervised`` command under its older name, with the same
flags, output and exit codes (see :mod:`stm_rl.supervised.command`)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from stm_rl.conventions import run_command
from stm_rl.supervised import command


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stm_rl.supervised", description=command.DESCRIPTION)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(command.PROG, lambda: command.run(args))


if __name__ == "__main__":
    sys.exit(main())
