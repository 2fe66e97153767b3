"""What every ``stm-rl`` command promises its caller: how a run ended, exit codes, one-line errors, and how
to name a follow-up command.

Exit codes (the same for ``train``, ``sweep``, ``evaluate``, ``plot`` and ``supervised``, also run as
``python -m stm_rl.supervised``):

====  ==========================================================================================
0     completed
1     failed: the work started and went wrong (a worker died, a checkpoint could not be written...)
2     bad input: a flag, a path or a run directory that cannot be used; a one-line error, nothing started
130   interrupted: Ctrl-C or SIGTERM; training commands stopped cleanly and wrote a final checkpoint
====  ==========================================================================================

Ctrl-C and SIGTERM mean the same thing to every command: :func:`run_command` turns both into
``KeyboardInterrupt`` for the time of the command's body, also where SIGINT started ignored (a background job of a
script, where Python sets no handler of its own). Commands that must stop gracefully put their own handler on top
and restore this one: the sweep, which stops its runs, and the training loops (RL and supervised), which take a
:class:`StopRequest` and stop at their next safe point, so that a signal never lands inside a checkpoint being
written or TensorBoard's writer queue.

Errors are one line (``stm-rl train: error: ...``); with ``STM_RL_DEBUG=1`` in the environment the command
raises instead, so the Python traceback is shown. :func:`run_command` applies these rules to a command's body.
A training run records how it ended as a :class:`RunStatus` in its ``summary.json`` (RL and supervised alike;
the enum lives with the run directory, :mod:`stm_rl.run_dir`, which reads it back, and is re-exported here),
and its command exits with that status's code (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from contextlib import AbstractContextManager, contextmanager
from enum import IntEnum
from typing import Any, Callable, Iterator, Optional, Sequence

from stm_rl.run_dir import RunFailed, RunStatus, StmRlError, describe_os_error


class ExitCode(IntEnum):
    COMPLETED = 0
    FAILED = 1
    BAD_INPUT = 2
    INTERRUPTED = 130


EXIT_CODES = {RunStatus.COMPLETED: ExitCode.COMPLETED, RunStatus.INTERRUPTED: ExitCode.INTERRUPTED,
              RunStatus.FAILED: ExitCode.FAILED}
"""The exit code of a training command whose run ended with that status."""

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


def run_command(prog: str, body: Callable[[], int], interrupted_hint: str = "") -> int:
    """Run a command's ``body`` under the conventions above and return its exit code: a user error
    (:class:`~stm_rl.run_dir.StmRlError`, a config's ``ValueError``) is one line ``PROG: error: ...`` and 2;
    a failure of the work (:class:`~stm_rl.run_dir.RunFailed`) or a file that could not be read or written
    while working is one line and 1; Ctrl-C is 130 (with ``interrupted_hint``, e.g. how to resume, after the
    line that says so). Every entry point (``stm-rl``, ``python -m stm_rl.supervised``, a sweep's run process,
    the benchmark scripts) ends through here."""
    try:
        with stop_signals_raise_keyboard_interrupt():
            return int(body() or 0)
    except (StmRlError, ValueError) as error:
        if debugging():
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except RunFailed as error:
        if debugging():
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except OSError as error:  # a file that could not be read or written, found only while working
        if debugging():
            raise
        print(f"{prog}: error: {describe_os_error(error)} (STM_RL_DEBUG=1 shows where)", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted" + (f"; {interrupted_hint}" if interrupted_hint else ""), file=sys.stderr)
        return ExitCode.INTERRUPTED


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a command (exit code 130): Ctrl-C and what ``kill``, a scheduler or a session end send."""


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def handling_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM go to ``handler``; the previous handlers are back after it. Outside the
    main thread, where Python cannot set handlers, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, earlier in previous.items():
            if earlier is not None:  # None: a handler set outside Python, which cannot be put back from here
                signal.signal(number, earlier)


def stop_signals_raise_keyboard_interrupt() -> AbstractContextManager[None]:
    """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt`` (what :func:`run_command` sets)."""
    return handling_stop_signals(_raise_keyboard_interrupt)


class StopRequest:
    """A graceful stop asked for by a signal, for a training loop that checks it at its safe points.

    Within :meth:`installed`, the first SIGINT or SIGTERM is only recorded and announced on stderr; the loop sees
    it (``if stop:``, or :meth:`raise_if_requested` where ``KeyboardInterrupt`` is the loop's way out) and ends with
    a final checkpoint. A second Ctrl-C raises ``KeyboardInterrupt`` at once (the user asked twice: abort); a
    repeated SIGTERM changes nothing (a dying parent and a process-group signal can both send one).

    An exception raised asynchronously at any bytecode can leave a library's lock or queue half-updated (a
    ``queue.Queue`` item counted but not added, a ``threading.Lock`` taken and never released), and the cleanup that
    follows then waits forever on it: this is why the first signal does not raise.
    """

    def __init__(self, announcement: str) -> None:
        self.announcement = announcement
        """What the loop will do, written after the signal's name (``SIGTERM: <announcement>``)."""
        self.signal_name: Optional[str] = None
        """``"SIGINT"`` or ``"SIGTERM"`` once a stop was asked for."""

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def installed(self) -> AbstractContextManager[None]:
        """Within the block, SIGINT and SIGTERM go to :meth:`handle` (main thread only, see
        :func:`handling_stop_signals`)."""
        return handling_stop_signals(self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal_name = signal.Signals(signum).name
        # os.write, not print: a signal handler that prints while the interrupted code is printing to the same
        # stream gets "reentrant call" errors from Python's buffered writer
        try:
            os.write(sys.stderr.fileno(), f"\n{self.signal_name}: {self.announcement}\n".encode())
        except (OSError, ValueError, AttributeError):  # no usable stderr (closed, replaced by an object without a fd)
            pass

    def raise_if_requested(self) -> None:
        """``KeyboardInterrupt`` here, at a point the caller chose, if a stop was asked for."""
        if self.signal_name is not None:
            raise KeyboardInterrupt
