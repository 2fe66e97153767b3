"""How long work shows its progress, for every kind of run (A3C training, supervised training).

On a terminal, a live bar (tqdm: rate and ETA). Otherwise (a log file, ``nohup``, CI, ``--no-progress``), one plain
line every ``interval`` seconds, so that a log shows how fast the work goes and when it will end::

    progress: 1.20M/20.00M frames (6.0%) | 850 frames/s | ETA 6:08:00 | elapsed 0:23:31 | games 123 | avg100 -20.3

The rate of a plain line is measured since the line before it. Lines for the user (:meth:`ProgressDisplay.write`)
go above the bar when there is one.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm

from stm_rl.config_cli import format_count

__all__ = ["ProgressDisplay", "clock", "note"]


def note(line: str) -> None:
    """A line for the user on stderr (flushed: a log file shows it at once)."""
    print(line, file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds)."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _rate_text(rate: float) -> str:
    """Three significant figures for slow work (``0.912``), whole numbers for fast work (``1,234``)."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


class ProgressDisplay:
    """Progress of ``total`` units of work, ``initial`` of them done before this display began (a resumed run).

    ``live``: the bar, where stderr is a terminal (otherwise plain lines regardless). ``unit`` names the work
    (``"frames"``, ``"agent steps"``, ``"iterations"``), ``rate_unit`` its rate (``"frames/s"``)."""

    def __init__(self, total: int, initial: int, unit: str, rate_unit: str, desc: str, live: bool,
                 interval: float) -> None:
        self.total, self.unit, self.rate_unit = total, unit, rate_unit
        self.live = live and sys.stderr.isatty()
        self.interval = interval
        self.last_line_time, self.last_line_done = time.monotonic(), initial
        self.bar = tqdm(total=total, initial=initial, unit=unit.split()[-1].rstrip("s"), unit_scale=True,
                        dynamic_ncols=True, disable=not self.live, mininterval=0.5, desc=desc, smoothing=0.05)

    def update(self, done: int, elapsed_s: float, status: str = "") -> None:
        """``done`` units so far (in all), ``elapsed_s`` of the work's own clock, ``status`` the text after the
        numbers (``"games 123 | avg100 -20.3"``). Cheap enough to call every step."""
        if self.live:
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(min(done, self.total) - self.bar.n)  # rate and ETA come from tqdm
            return
        now = time.monotonic()
        if now - self.last_line_time >= self.interval:
            rate = (done - self.last_line_done) / (now - self.last_line_time)
            self.last_line_time, self.last_line_done = now, done
            note(self.line(done, elapsed_s, rate, status))

    def line(self, done: int, elapsed_s: float, rate: float, status: str = "") -> str:
        """The plain progress line (module docstring)."""
        eta = clock(max(self.total - done, 0) / rate) if rate > 0 else "-"
        percent = 100.0 * done / self.total if self.total else 100.0
        text = (f"progress: {format_count(done)}/{format_count(self.total)} {self.unit} ({percent:.1f}%) | "
                f"{_rate_text(rate)} {self.rate_unit} | ETA {eta} | elapsed {clock(elapsed_s)}")
        return text + (f" | {status}" if status else "")

    def write(self, line: str) -> None:
        """A line for the user, above the bar if there is one."""
        if self.live:
            self.bar.write(line, file=sys.stderr)
        else:
            note(line)

    def close(self, done: Optional[int] = None) -> None:
        if done is not None and self.live:
            self.bar.update(min(done, self.total) - self.bar.n)
        self.bar.close()
