"""A tqdm progress bar on stderr driven by the library's ``progress(fraction, message)`` callbacks."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from ..core.progress import ProgressFn


@contextmanager
def progress_bar(desc: str, quiet: bool = False) -> Iterator[ProgressFn]:
    """Yield a ``progress(fraction in [0, 1], message)`` callback that drives a tqdm bar on stderr.

    With ``quiet`` (or without tqdm installed, an optional dependency) the callback does nothing.
    """
    bar = None
    if not quiet:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=100, file=sys.stderr, desc=desc, bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def progress(fraction: float, message: str) -> None:
        if bar is not None:
            bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
            bar.set_postfix_str(message[:60], refresh=False)
            bar.refresh()

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()
