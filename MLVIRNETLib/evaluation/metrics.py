"""Evaluation metrics: target registration error, Dice overlap, Jacobian statistics.

Direction of the TRE: a deformation maps *fixed* points to *moving* points,
``x_moving = x_fixed + u(x_fixed)`` (see :mod:`MLVIRNETLib.core.deformation`). The TRE of landmark ``i``
is ``|y(f_i) - m_i|`` in mm, "fixed -> moving". Without a deformation it is the initial error
``|f_i - m_i|``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid
from .landmark_errors import TREResult


def _as_points(points, name: str) -> np.ndarray:
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    p = p.astype(float)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must have shape (P, 3), got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains non-finite coordinates")
    return p


def snap_to_voxel(points: np.ndarray, grid: ImageGrid) -> np.ndarray:
    """LPS points ``(P, 3)`` moved to the nearest voxel centre of ``grid`` (indices clipped to the grid)."""
    index = np.rint(np.asarray(grid.world_to_index(np.asarray(points, dtype=float))))
    index = np.clip(index, 0, np.asarray(grid.size) - 1)
    return np.asarray(grid.index_to_world(index), dtype=float)


def map_points(deformation: Deformation, points: np.ndarray) -> np.ndarray:
    """``y(x) = x + u(x)`` for LPS points ``(P, 3)`` with a batch-1 deformation, float64.

    Raises:
        ValueError: batch > 1, or a point lies outside the deformation's grid (more than half a
            voxel beyond the outer voxel centres).
    """
    if deformation.batch_size != 1:
        raise ValueError(f"expected a single deformation (batch 1), got batch {deformation.batch_size}")
    p = _as_points(points, "points")
    inside = deformation.grid.contains_world(p)
    if not np.all(inside):
        first = int(np.argmin(inside))
        raise ValueError(
            f"{int((~inside).sum())} of {len(p)} landmarks lie outside the deformation field's grid "
            f"({deformation.grid.describe()}); first is point {first + 1} at "
            f"{np.round(p[first], 2).tolist()} mm LPS. Is the field on the fixed image's grid?"
        )
    u = deformation.displacement.detach().to(torch.float64)
    d64 = Deformation(deformation.grid, u)
    mapped = d64.map_points(torch.as_tensor(p, dtype=torch.float64, device=u.device))[0]
    return mapped.cpu().numpy()


def tre(
    fixed_points,
    moving_points,
    deformation: Deformation | None = None,
    snap_grid: ImageGrid | None = None,
) -> TREResult:
    """Target registration error, fixed -> moving, in mm.

    Args:
        fixed_points: ``(P, 3)`` LPS mm landmarks in the fixed image.
        moving_points: ``(P, 3)`` LPS mm corresponding landmarks in the moving image.
        deformation: batch-1 map fixed -> moving (``x_moving = x_fixed + u(x_fixed)``); ``None``
            gives the initial error ``|f - m|``.
        snap_grid: the moving image's grid. When given, each mapped fixed point is moved to the
            nearest voxel centre of this grid before measuring (DIR-LAB's protocol: landmarks are
            voxel centres, so the mapped point is rounded to a voxel too). Indices are clipped to
            the grid.

    Raises:
        ValueError: different point counts, bad shapes, or fixed landmarks outside the field's grid.
    """
    f = _as_points(fixed_points, "fixed landmarks")
    m = _as_points(moving_points, "moving landmarks")
    if f.shape != m.shape:
        raise ValueError(f"fixed and moving landmark counts differ: {f.shape[0]} fixed vs {m.shape[0]} moving")
    mapped = f if deformation is None else map_points(deformation, f)
    if snap_grid is not None:
        mapped = snap_to_voxel(mapped, snap_grid)
    errors = np.linalg.norm(mapped - m, axis=1)
    return TREResult.from_errors(errors, snapped=snap_grid is not None)


# ----------------------------------------------------------------------------------------------
# Overlap
# ----------------------------------------------------------------------------------------------
def dice(labels_a, labels_b, labels=None) -> dict[int, float]:
    """Dice overlap ``2 |A ∩ B| / (|A| + |B|)`` per label of two integer label maps of equal shape.

    Args:
        labels_a, labels_b: arrays or tensors of the same shape.
        labels: the labels to score; default every non-zero label present in either map. A label
            absent from both maps scores ``nan``.
    """
    a = labels_a.detach().cpu().numpy() if isinstance(labels_a, torch.Tensor) else np.asarray(labels_a)
    b = labels_b.detach().cpu().numpy() if isinstance(labels_b, torch.Tensor) else np.asarray(labels_b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    if labels is None:
        present = np.union1d(np.unique(a), np.unique(b))
        labels = [int(v) for v in present if v != 0]
    out: dict[int, float] = {}
    for label in labels:
        in_a = a == label
        in_b = b == label
        total = int(in_a.sum()) + int(in_b.sum())
        out[int(label)] = float("nan") if total == 0 else 2.0 * int(np.logical_and(in_a, in_b).sum()) / total
    return out


# ----------------------------------------------------------------------------------------------
# Regularity
# ----------------------------------------------------------------------------------------------
def jacobian_stats(deformation: Deformation, mask=None) -> dict:
    """Statistics of ``det(I + grad u)`` over the grid (or inside ``mask``), all batch items pooled.

    Args:
        mask: ``(D, H, W)`` or ``(N, 1, D, H, W)`` array/tensor, non-zero = inside.

    Returns:
        ``min``, ``max``, ``mean``, ``std`` (population) of det J; ``std_log`` (population sd of
        ``log det J`` over voxels with det J > 0); ``n_voxels``; ``n_folded`` (det J <= 0);
        ``folding_fraction`` and ``folding_percent``.
    """
    det = deformation.jacobian_determinant().detach().to(torch.float64).cpu()
    if mask is not None:
        m = mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        if m.ndim == 3 and tuple(m.shape) == tuple(det.shape[2:]):
            m = m[None, None].expand_as(det)
        if tuple(m.shape) != tuple(det.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the field: expected {tuple(det.shape[2:])} or {tuple(det.shape)}")
        values = det[m != 0]
    else:
        values = det.flatten()
    if values.numel() == 0:
        raise ValueError("the mask selects no voxels")
    n_folded = int((values <= 0).sum())
    positive = values[values > 0]
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std(unbiased=False)),
        "std_log": float(torch.log(positive).std(unbiased=False)) if positive.numel() else float("nan"),
        "n_voxels": int(values.numel()),
        "n_folded": n_folded,
        "folding_fraction": n_folded / values.numel(),
        "folding_percent": 100.0 * n_folded / values.numel(),
    }
