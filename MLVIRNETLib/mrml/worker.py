"""The Logic's worker thread: the library works there while the calling (GUI) thread stays alive."""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, TypeVar

from ..core.progress import Progress, ProgressFn

T = TypeVar("T")

PROGRESS_INTERVAL_S = 0.1
"""The Logic calls ``progressCallback`` this often while the library works (each call lets Slicer
repaint and read the Cancel button); the library's reports are passed on at most this often."""

POLL_INTERVAL_S = 0.1
"""How often the calling thread looks for the worker's reports (:func:`runInWorkerThread`)."""


def runInWorkerThread(
    work: Callable[[ProgressFn], T], progressCallback: ProgressFn, stop: Callable[[], None] | None = None
) -> T:
    """``work(progress)`` in a worker thread; its reports reach ``progressCallback`` in this thread.

    The worker's reports are queued (at most one every :data:`PROGRESS_INTERVAL_S` seconds, stage
    starts and ends always) and passed on in order; when there is none, the latest is passed on
    again, so ``progressCallback`` runs every :data:`PROGRESS_INTERVAL_S` seconds whatever the
    worker does (while the worker holds Python's GIL, as long as that takes). ``work`` must not
    touch MRML nodes: only this thread does. When ``progressCallback`` raises, ``stop()`` asks the
    worker to end (``work`` must then return or raise soon) and the error is re-raised once it has.

    Returns:
        What ``work`` returned.

    Raises:
        What ``work`` raised (e.g. :class:`~MLVIRNETLib.core.progress.RegistrationCancelled`), or what
        ``progressCallback`` raised, after the worker has stopped.
    """
    reports: collections.deque = collections.deque()  # appended by the worker, emptied here
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work(Progress(lambda f, m: reports.append((f, m)), min_interval_s=PROGRESS_INTERVAL_S))
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            outcome["error"] = error

    thread = threading.Thread(target=target, name="MLVIRNET registration", daemon=True)
    thread.start()
    latest = None
    try:
        while thread.is_alive() or reports:
            thread.join(POLL_INTERVAL_S)
            pending = [reports.popleft() for _ in range(len(reports))]
            for latest in pending or ([latest] if latest is not None else []):
                progressCallback(*latest)
    except BaseException:
        if stop is not None:
            stop()
        thread.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
