"""What every ``stm-rl`` command promises its caller: exit codes, and how to name a follow-up command.

Exit codes (the same for ``train``, ``sweep``, ``evaluate``, ``plot`` and ``python -m stm_rl.supervised``):

====  ==========================================================================================
0     completed
1     failed: the work started and went wrong (a worker died, a checkpoint could not be written...)
2     bad input: a flag, a path or a run directory that cannot be used; a one-line error, nothing started
130   interrupted: Ctrl-C or SIGTERM; training commands stopped cleanly and wrote a final checkpoint
====  ==========================================================================================

Errors are one line (``stm-rl train: error: ...``); with ``STM_RL_DEBUG=1`` in the environment the command
raises instead, so the Python traceback is shown.
"""

from __future__ import annotations

import os
import shlex
from enum import IntEnum
from typing import Sequence


class ExitCode(IntEnum):
    COMPLETED = 0
    FAILED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130


DEBUG_ENV = "STM_RL_DEBUG"
"""Set (to anything non-empty) to get Python tracebacks instead of one-line errors."""


def debugging() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


def suggest(command: str, args: Sequence[str]) -> str:
    """How the user should type ``stm-rl COMMAND ARGS``: as a make target when they are running under make
    (make sets MAKELEVEL), where ``stm-rl`` may not be on their PATH."""
    quoted = " ".join(shlex.quote(str(arg)) for arg in args)
    if os.environ.get("MAKELEVEL"):
        return f'make {command} ARGS="{quoted}"'
    return f"stm-rl {command} {quoted}"
