"""Where the benchmarks find the development data: ``../shared/data`` beside the checkout."""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout, or ``None`` when absent (a user's clone)."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def chest_ct_or_default(given: Path | None, name: str, option: str) -> Path | None:
    """``given``, else ``shared/data/chest_ct/<name>``; ``None`` (after a message on stderr naming
    ``option``) when neither is there."""
    import sys

    if given is not None:
        return given
    shared = shared_data_dir()
    if shared is None:
        print(f"shared data not found (../shared/data); pass {option}", file=sys.stderr)
        return None
    return shared / "chest_ct" / name
