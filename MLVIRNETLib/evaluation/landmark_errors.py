"""Summary statistics of landmark errors, with numpy alone.

Kept apart from :mod:`MLVIRNETLib.evaluation.metrics` (which needs torch for fields) so that the
target registration error of two landmark lists can be computed where PyTorch is not installed,
as the Slicer module does before its first registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TREResult"]


@dataclass
class TREResult:
    """Per-point TRE (mm) and its summary.

    Attributes:
        per_point: ``(P,)`` errors in mm.
        mean, std: mean and *population* standard deviation (ddof = 0), mm.
        p95: 95th percentile (linear interpolation), mm.
        max: largest error, mm.
        n: number of points.
        direction: text stating the direction of the mapping.
        snapped: whether mapped points were snapped to voxel centres.
    """

    per_point: np.ndarray
    mean: float
    std: float
    p95: float
    max: float
    n: int
    direction: str = "fixed -> moving"
    snapped: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_errors(cls, errors: np.ndarray, direction: str = "fixed -> moving", snapped: bool = False) -> "TREResult":
        """Summarise ``(P,)`` errors (mm)."""
        e = np.asarray(errors, dtype=float).ravel()
        if e.size == 0:
            raise ValueError("cannot summarise an empty set of errors")
        return cls(
            per_point=e,
            mean=float(e.mean()),
            std=float(e.std()),
            p95=float(np.percentile(e, 95)),
            max=float(e.max()),
            n=int(e.size),
            direction=direction,
            snapped=snapped,
        )

    @classmethod
    def pooled(cls, results: list["TREResult"]) -> "TREResult":
        """One result over all points of ``results`` (not the mean of the means)."""
        if not results:
            raise ValueError("no results to pool")
        directions = {r.direction for r in results}
        snapped = {r.snapped for r in results}
        return cls.from_errors(
            np.concatenate([r.per_point for r in results]),
            direction=directions.pop() if len(directions) == 1 else "mixed",
            snapped=snapped.pop() if len(snapped) == 1 else False,
        )

    def to_dict(self, include_points: bool = False) -> dict:
        """Plain JSON-able dictionary (mm)."""
        d = {
            "mean": self.mean,
            "std": self.std,
            "p95": self.p95,
            "max": self.max,
            "n": self.n,
            "direction": self.direction,
            "snap_to_voxel": self.snapped,
        }
        if include_points:
            d["per_point"] = [float(v) for v in self.per_point]
        return d

    def summary(self) -> str:
        """``mean (std)`` to two decimals, as in the paper's tables."""
        return f"{self.mean:.2f} ({self.std:.2f})"
