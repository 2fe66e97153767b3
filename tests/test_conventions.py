"""``conventions.run_command``: the one place where Ctrl-C and SIGTERM become an interrupted command (exit 130), and
where a graceful command (trainer, sweep) puts its own handler on top; ``StopRequest``, the training loops' handler."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from stm_rl.conventions import ExitCode, StopRequest, handling_stop_signals, run_command


def _signal_myself_and_wait(signum: int) -> int:
    os.kill(os.getpid(), signum)
    time.sleep(5)  # the handler interrupts this sleep
    return 0


@pytest.fixture
def restore_stop_handlers():
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("before", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "ignored"])
def test_a_stop_signal_interrupts_the_command_and_the_earlier_handler_comes_back(
        restore_stop_handlers, capsys, signum, before):
    signal.signal(signum, before)  # SIG_IGN: SIGINT in a background job of a script, where Python sets nothing
    started = time.monotonic()
    code = run_command("prog", lambda: _signal_myself_and_wait(signum), interrupted_hint="rerun to resume")
    assert code == ExitCode.INTERRUPTED
    assert time.monotonic() - started < 4
    assert capsys.readouterr().err.strip() == "prog: interrupted; rerun to resume"
    assert signal.getsignal(signum) == before


def test_a_graceful_handler_on_top_takes_the_signal_and_hands_it_back_afterwards(restore_stop_handlers):
    received = []

    def body() -> int:
        with handling_stop_signals(lambda signum, frame: received.append(signum)):
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                time.sleep(0.01)
        return _signal_myself_and_wait(signal.SIGTERM)  # the command's own handling is back

    assert run_command("prog", body) == ExitCode.INTERRUPTED
    assert received == [signal.SIGTERM]


def test_outside_the_main_thread_the_command_runs_without_touching_signals(restore_stop_handlers):
    before = signal.getsignal(signal.SIGTERM)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(run_command("prog", lambda: 7)))
    thread.start()
    thread.join()
    assert codes == [7]
    assert signal.getsignal(signal.SIGTERM) == before


def _deliver(signum: int) -> None:
    """Send ``signum`` to this process and give Python the moment it needs to run the handler."""
    os.kill(os.getpid(), signum)
    time.sleep(0.05)


def test_a_stop_request_records_the_first_signal_and_raises_only_where_the_loop_asks(restore_stop_handlers, capfd):
    stop = StopRequest("stopping after this step")
    before = signal.getsignal(signal.SIGTERM)
    with stop.installed():
        assert not stop
        stop.raise_if_requested()  # nothing asked yet: returns
        _deliver(signal.SIGTERM)  # recorded, not raised here
        assert stop and stop.signal_name == "SIGTERM"
        assert capfd.readouterr().err.strip() == "SIGTERM: stopping after this step"
        _deliver(signal.SIGTERM)  # a dying parent and a process-group signal may both send one: no change
        assert stop.signal_name == "SIGTERM" and capfd.readouterr().err == ""
        with pytest.raises(KeyboardInterrupt):
            stop.raise_if_requested()
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: abort at once
            _deliver(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before
