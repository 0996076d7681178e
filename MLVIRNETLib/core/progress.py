"""The one progress and cancel protocol of the library.

Every long-running function takes two optional callables:

``progress(fraction, message)``
    ``fraction`` in ``[0, 1]`` of the function's own work, ``message`` a short text.
``cancel()``
    returns True when the caller wants the work stopped; the function then raises
    :class:`RegistrationCancelled` (nothing is written and no result exists).

Inside the library both are wrapped in one :class:`Progress`, which checks ``cancel`` at every
report (so a stage that reports often can be stopped quickly), maps a stage's local fraction into
the caller's range, never goes backwards, and forwards to the caller at most every
``min_interval_s`` seconds (a GUI repaint or a tqdm refresh is not free).
"""

from __future__ import annotations

import time
from typing import Callable

ProgressFn = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``."""

CancelFn = Callable[[], bool]
"""``cancel() -> True`` to stop the work."""

__all__ = ["CancelFn", "Progress", "ProgressFn", "RegistrationCancelled"]


class RegistrationCancelled(Exception):
    """Raised when a ``cancel`` callable returned True; nothing is written and no result exists."""


class Progress:
    """A ``progress``/``cancel`` pair, mapped into a sub-range of the caller's progress.

    Args:
        fn: the caller's ``progress(fraction, message)``, or None.
        cancel: the caller's ``cancel()``, or None.
        min_interval_s: forward to ``fn`` at most this often (the first and the final report of
            each stage always pass); ``cancel`` is checked at every report regardless. Default:
            0.05 s, or 0 when ``fn`` is itself a :class:`Progress` (the outer one throttles).

    Use :meth:`of` at the top of a function that accepts ``progress`` and ``cancel``: it also
    accepts a :class:`Progress` that a caller passed as ``progress``. A Progress built around
    another one (``Progress(outer)``) maps its stages into the outer's current stage and shares
    its ``cancel``.
    """

    def __init__(
        self, fn: ProgressFn | None = None, cancel: CancelFn | None = None, min_interval_s: float | None = None
    ) -> None:
        self.fn = fn
        # nested in another Progress: its cancel is ours too, checked at every report
        self.cancel = cancel if cancel is not None or not isinstance(fn, Progress) else fn.cancel
        if min_interval_s is None:
            min_interval_s = 0.0 if isinstance(fn, Progress) else 0.05
        self.min_interval_s = float(min_interval_s)
        self.start = 0.0
        self.width = 1.0
        self.last = 0.0
        self._last_sent = -float("inf")

    @classmethod
    def of(cls, progress: "ProgressFn | Progress | None", cancel: CancelFn | None = None) -> "Progress":
        """``progress`` itself when it already is a :class:`Progress` (and no other ``cancel`` is
        given), else a new one around the two callables."""
        if isinstance(progress, Progress) and cancel is None:
            return progress
        return cls(progress, cancel)

    def check_cancel(self) -> None:
        """Raise :class:`RegistrationCancelled` when ``cancel()`` says so.

        Raises:
            RegistrationCancelled: the caller asked to stop.
        """
        if self.cancel is not None and self.cancel():
            raise RegistrationCancelled("registration cancelled")

    def stage(self, start: float, width: float, message: str) -> None:
        """Start a stage that covers ``[start, start + width]`` of the overall progress."""
        self.check_cancel()
        self.start, self.width = float(start), float(width)
        self(0.0, message, force=True)

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        """Report ``fraction`` of the current stage; checks ``cancel`` first.

        ``force`` (a stage's start) and the end of a stage (``fraction >= 1``) always pass, also
        through an outer :class:`Progress`.

        Raises:
            RegistrationCancelled: the caller asked to stop.
        """
        self.check_cancel()
        local = min(max(float(fraction), 0.0), 1.0)
        value = min(1.0, max(self.last, self.start + self.width * local))
        self.last = value
        if self.fn is None:
            return
        now = time.perf_counter()
        force = force or local >= 1.0
        if force or now - self._last_sent >= self.min_interval_s:
            self._last_sent = now
            if isinstance(self.fn, Progress):
                self.fn(value, message, force=force)
            else:
                self.fn(value, message)
