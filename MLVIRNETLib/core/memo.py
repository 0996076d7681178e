"""Memos: how a stage asks for a value that may have been computed before.

A stage that could reuse work (for example the fixed image's half of a registration, when many
moving images are registered to one fixed image) takes a *memo* and asks it for the value:
``memo(key, compute)`` returns what a cache holds under ``key``, or calls ``compute()``. The key
names the value and everything it depends on that the cache does not pin (options, device).
:func:`no_memo` keeps nothing; :class:`~MLVIRNETLib.registration.fixed_cache.FixedImageCache` is the
cache of one fixed image.
"""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

T = TypeVar("T")

Memo = Callable[[Hashable, Callable[[], T]], T]
"""``memo(key, compute)``: the value kept under ``key``, or ``compute()`` (kept when there is a cache)."""

__all__ = ["Memo", "no_memo"]


def no_memo(key: Hashable, compute: Callable[[], T]) -> T:
    """Compute the value every time (the memo of a stage run without a cache)."""
    return compute()
