"""Progress on stderr driven by the library's ``progress(fraction, message)`` callbacks.

On a terminal: a tqdm bar (tqdm is an optional dependency). When stderr is not a terminal (a log
file, a pipe, a cluster job's output): plain lines such as ``register: 42% refine 1/2: iteration
10/60 (12.3 s)``, the first at once, then at most one every :data:`LOG_INTERVAL_S` seconds (or
``$MLVIRNET_PROGRESS_INTERVAL``), and a final line when the work ends. ``--quiet``: nothing.

Both show one clock, :class:`ReportClock`: the seconds from the first report to the latest one. The
registration reports as it starts and as it ends, so the time shown at the end is the registration's
own time (the ``total`` a command prints), not the time spent before (reading, synthesising) or after
(writing the outputs).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

from ..core.progress import ProgressFn

LOG_INTERVAL_S = 5.0
"""Seconds between two plain progress lines when stderr is not a terminal."""
INTERVAL_ENV = "MLVIRNET_PROGRESS_INTERVAL"
"""Environment variable that overrides :data:`LOG_INTERVAL_S` (seconds, >= 0)."""
MESSAGE_CHARS = 100
"""Longest stage message shown (longer ones are cut), so that a line stays short."""


def log_interval_s() -> float:
    """:data:`LOG_INTERVAL_S`, or ``$MLVIRNET_PROGRESS_INTERVAL`` when set.

    Raises:
        ValueError: the variable is not a number >= 0.
    """
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return LOG_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _tqdm_bar(desc: str, stream: TextIO):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=100, file=stream, desc=desc, bar_format="{l_bar}{bar}|{postfix}")


class ReportClock:
    """Seconds from the first report to the latest one (``None`` before the first)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.latest: float | None = None

    def report(self) -> None:
        """Note the time of a report (the first one starts the clock)."""
        self.latest = time.monotonic()
        if self.first is None:
            self.first = self.latest

    @property
    def seconds(self) -> float:
        """Seconds from the first report to the latest (0 before any report)."""
        return 0.0 if self.first is None else self.latest - self.first

    def text(self) -> str:
        """The time as shown: ``"12.3 s"``."""
        return f"{self.seconds:.1f} s"


class LogLines:
    """A ``progress(fraction, message)`` callback that prints at most one plain line every ``interval_s``.

    The first report is printed at once; :meth:`finish` prints the last state when it was not
    printed yet. Each line shows the :class:`ReportClock` time of its report.
    """

    def __init__(self, desc: str, stream: TextIO, interval_s: float) -> None:
        self.desc = desc
        self.stream = stream
        self.interval_s = float(interval_s)
        self.clock = ReportClock()
        self.last_print = -float("inf")
        self.state: tuple[int, str, str] | None = None
        self.printed: tuple[int, str, str] | None = None

    def _print(self, state: tuple[int, str, str]) -> None:
        percent, message, clock = state
        print(f"{self.desc}: {percent}% {message} ({clock})", file=self.stream, flush=True)
        self.printed = state
        self.last_print = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        self.clock.report()
        text = " ".join(str(message).split())
        if len(text) > MESSAGE_CHARS:
            text = text[: MESSAGE_CHARS - 3] + "..."
        self.state = (int(100 * min(max(float(fraction), 0.0), 1.0)), text, self.clock.text())
        if time.monotonic() - self.last_print >= self.interval_s:
            self._print(self.state)

    def finish(self) -> None:
        """Print the final state (when there was one and it was not the last line printed)."""
        if self.state is not None and self.state != self.printed:
            self._print(self.state)


@contextmanager
def progress_bar(desc: str, quiet: bool = False, stream: TextIO | None = None) -> Iterator[ProgressFn]:
    """Yield a ``progress(fraction in [0, 1], message)`` callback that shows progress on ``stream`` (stderr).

    A tqdm bar on a terminal; plain lines (:class:`LogLines`) when ``stream`` is not a terminal or
    tqdm is not installed; nothing with ``quiet``. The final line is printed only when the work
    ends normally (an error or Ctrl-C is reported by the caller in one line).

    Raises:
        ValueError: ``$MLVIRNET_PROGRESS_INTERVAL`` is set but not a number >= 0.
    """
    out = stream if stream is not None else sys.stderr
    if quiet:
        yield lambda fraction, message: None
        return
    bar = _tqdm_bar(desc, out) if _is_terminal(out) else None
    if bar is None:
        lines = LogLines(desc, out, log_interval_s())
        yield lines
        lines.finish()
        return

    clock = ReportClock()

    def progress(fraction: float, message: str) -> None:
        clock.report()
        bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
        bar.set_postfix_str(f"{clock.text()} {str(message)[:60]}", refresh=False)
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()
