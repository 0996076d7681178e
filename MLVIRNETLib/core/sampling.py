"""Sampling volumes on :class:`~MLVIRNETLib.core.geometry.ImageGrid` s at world points: the only
place in MLVIRNET that calls ``grid_sample``.

Every coordinate map used here (world -> normalised, target index -> source normalised) comes from
:mod:`MLVIRNETLib.core.geometry`; this module only checks shapes and interpolates.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ALIGN_CORNERS, ImageGrid, index_affine_terms, index_axis_to_array_axis


def check_volume(data: torch.Tensor, grid: ImageGrid, name: str = "volume") -> None:
    """Raise ``ValueError`` unless ``data`` is ``(N, C, D, H, W)`` with spatial shape ``grid.shape_zyx``."""
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, C, D, H, W), got {type(data).__name__}")
    if data.ndim != 5:
        raise ValueError(f"{name} must have shape (N, C, D, H, W), got {tuple(data.shape)}")
    if tuple(data.shape[2:]) != grid.shape_zyx:
        raise ValueError(
            f"{name} has shape {tuple(data.shape)} (N, C, D, H, W) but its grid expects (D, H, W) = "
            f"{grid.shape_zyx} (grid {grid.describe()})"
        )


def sample(
    data: torch.Tensor,
    grid: ImageGrid,
    points: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Sample a volume living on ``grid`` at LPS world points.

    Args:
        data: ``(N, C, D, H, W)`` values on ``grid``.
        grid: the grid of ``data``.
        points: LPS mm, ``(N, d, h, w, 3)`` or ``(d, h, w, 3)`` (shared by the batch), x y z order.
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        padding_mode: value outside the grid: ``"border"``, ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(N, C, d, h, w)`` sampled values.
    """
    check_volume(data, grid, "data")
    if points.shape[-1] != 3 or points.ndim not in (4, 5):
        raise ValueError(f"points must have shape (N, d, h, w, 3) or (d, h, w, 3), got {tuple(points.shape)}")
    if points.ndim == 4:
        points = points.unsqueeze(0).expand(data.shape[0], *points.shape)
    elif points.shape[0] != data.shape[0]:
        raise ValueError(f"points batch {points.shape[0]} does not match data batch {data.shape[0]}")
    coords = grid.world_to_normalized(points.to(torch.float32) if points.dtype in (torch.float16, torch.bfloat16) else points)
    if coords.dtype != data.dtype:
        coords = coords.to(data.dtype)
    return F.grid_sample(data, coords, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)


def resample_to_grid(
    data: torch.Tensor,
    source: ImageGrid,
    target: ImageGrid,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Resample ``(N, C, D, H, W)`` values from ``source`` onto ``target`` (identity mapping)."""
    dtype = data.dtype if data.dtype == torch.float64 else torch.float32
    pts = target.world_points(device=data.device, dtype=dtype)
    return sample(data, source, pts, mode=mode, padding_mode=padding_mode)


def sample_on_grid(
    data: torch.Tensor,
    source: ImageGrid,
    target: ImageGrid,
    matrix: np.ndarray | None = None,
    offset: torch.Tensor | None = None,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Sample ``data`` on ``source`` at ``p(x) = matrix @ x + offset(x)`` for every voxel ``x`` of ``target``.

    Same values as :func:`sample` at those world points, but the sampling coordinates are built by
    broadcasting (the map index -> normalised coordinates of ``source`` is affine), without any
    matrix product over all voxels: several times faster and lighter for large grids.

    Args:
        data: ``(N, C, D, H, W)`` values on ``source``.
        source: the grid of ``data``.
        target: where to evaluate.
        matrix: optional 4x4 LPS affine applied to the target points (identity if ``None``).
        offset: optional ``(N or 1, 3, d, h, w)`` LPS mm added after ``matrix``, on ``target``
            (e.g. a displacement, for warping).
        mode, padding_mode: as in :func:`sample`.

    Returns:
        ``(N, C, *target.shape_zyx)``.
    """
    check_volume(data, source, "data")
    m = source.world_to_normalized_matrix()
    if matrix is not None:
        a = np.asarray(matrix, dtype=float)
        if a.shape != (4, 4):
            raise ValueError(f"matrix must be 4x4, got shape {a.shape}")
        m = m @ a
    m = m @ target.index_to_world_matrix()  # index of target -> normalised of source
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    lin = m[:3, :3]
    if (offset is None and mode == "bilinear" and padding_mode == "border" and data.is_floating_point()
            and np.allclose(lin, np.diag(np.diag(lin)), rtol=0, atol=1e-12 * np.abs(lin).max())):
        return _separable_linear(data, source, np.diag(lin), m[:3, 3], target)
    k, j, i = index_affine_terms(m, target.size, data.device)
    coords = ((k.to(dtype) + j.to(dtype)) + i.to(dtype))[None]  # (1, D, H, W, 3)
    n = data.shape[0]
    if offset is not None:
        check_volume(offset, target, "offset")
        if offset.shape[1] != 3 or offset.shape[0] not in (1, n):
            raise ValueError(f"offset must have shape ({n} or 1, 3, D, H, W), got {tuple(offset.shape)}")
        lin = torch.as_tensor(source.world_to_normalized_matrix()[:3, :3], dtype=dtype, device=data.device)
        o = offset.to(dtype)
        coords = coords + (lin[:, 0, None, None, None] * o[:, 0:1] + lin[:, 1, None, None, None] * o[:, 1:2]
                           + lin[:, 2, None, None, None] * o[:, 2:3]).movedim(1, -1)
    coords = coords.expand(n, *coords.shape[1:]).to(data.dtype if data.is_floating_point() else dtype)
    return F.grid_sample(data, coords, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)


def _separable_linear(
    data: torch.Tensor, source: ImageGrid, scale: np.ndarray, shift: np.ndarray, target: ImageGrid
) -> torch.Tensor:
    """Trilinear sampling with border padding when target axis ``a`` maps to source axis ``a`` alone.

    ``normalised_a = scale_a * index_a + shift_a`` (x, y, z); the interpolation is done one axis at
    a time (z, then y, then x), which equals ``grid_sample`` (``align_corners=False``, border) and
    is much cheaper for large targets.
    """
    out = data
    for axis in (2, 1, 0):  # index axes z, y, x: tensor dims 2, 3, 4 of (N, C, D, H, W)
        dim = 2 + index_axis_to_array_axis(axis)
        n_src = source.size[axis]
        n_tgt = target.size[axis]
        idx = torch.arange(n_tgt, dtype=torch.float64, device=data.device)
        norm = scale[axis] * idx + shift[axis]
        pos = ((norm + 1.0) * n_src - 1.0) / 2.0  # unnormalise (align_corners=False)
        pos = pos.clamp(0.0, n_src - 1.0)  # border padding clips the coordinate
        lo = pos.floor().long().clamp(max=n_src - 1)
        hi = (lo + 1).clamp(max=n_src - 1)
        w = (pos - lo.to(torch.float64)).to(out.dtype)
        shape = [1] * out.ndim
        shape[dim] = n_tgt
        a = out.index_select(dim, lo)
        b = out.index_select(dim, hi)
        out = torch.lerp(a, b, w.reshape(shape))
    return out


def to_batch_tensor(array: np.ndarray, device=None, dtype=torch.float32) -> torch.Tensor:
    """A ``(D, H, W)`` array (SimpleITK layout) -> ``(1, 1, D, H, W)`` tensor."""
    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"expected a 3-D array (D, H, W), got shape {a.shape}")
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)[None, None]
