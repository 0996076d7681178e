"""Where the benchmarks find the development data: ``../shared/data`` beside the checkout."""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout, or ``None`` when absent (a user's clone)."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None
