"""Training logs: one CSV file (always) and TensorBoard event files (when ``tensorboard`` is installed).

``metrics.csv`` is in long format, one row per value::

    step,stage,level,split,name,value,time_s

``split`` is ``train`` (loss terms of every step), ``val`` (validation metrics) or ``info``. On
resume from a checkpoint taken after step ``s``, rows of steps after ``s`` (written by the killed
run after its last checkpoint) are dropped first, so the log has no duplicates.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

from .checkpoint import atomic_write_bytes

__all__ = ["RunLog"]

FIELDS = ("step", "stage", "level", "split", "name", "value", "time_s")


class RunLog:
    """Append-only CSV (+ optional TensorBoard) log of a training run in ``directory``."""

    def __init__(self, directory: Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        """``resume_step``: the number of steps the resumed checkpoint has completed (``None``: new run)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.directory / "metrics.csv"
        if resume_step is not None and self.csv_path.exists():
            self._truncate(resume_step)
        new = not self.csv_path.exists()
        self._fh = self.csv_path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(FIELDS)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: logging to metrics.csv only "
                              "(pip install tensorboard, or the [train] extra)", stacklevel=2)
            else:
                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(str(self.directory / "tensorboard"), purge_step=purge)

    def _truncate(self, step: int) -> None:
        with self.csv_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else [list(FIELDS)]
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_bytes(self.csv_path, buf.getvalue().encode("utf-8"))

    def log(self, step: int, stage: int, level: int, split: str, values: dict[str, float], time_s: float) -> None:
        for name, value in values.items():
            self._writer.writerow((step, stage, level, split, name, f"{float(value):.6g}", f"{time_s:.1f}"))
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{name}", float(value), step)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
