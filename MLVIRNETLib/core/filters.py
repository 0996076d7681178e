"""Separable filters and anti-aliased resampling of volumes on :class:`ImageGrid` s.

Gaussian smoothing (sigmas in voxels), box downsampling and the anti-aliasing low-pass that
preprocessing, the affine stage and training share.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ImageGrid, xyz_to_zyx
from .sampling import check_volume, sample_on_grid


# ----------------------------------------------------------------------------------------------
# smoothing
# ----------------------------------------------------------------------------------------------
def box_max(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """The maximum over the ``(2 radius + 1)^3`` box around every voxel of ``(N, C, D, H, W)``
    (a grey dilation; the box is cut at the border). Any dtype with a maximum, ``bool`` included
    (a binary dilation).

    A box maximum is the maximum of maxima along each axis in turn: per axis, the volume is
    compared with itself shifted by ``1..radius`` voxels either way, in place, which gives the
    values of one 3-D ``max_pool3d`` with ``(2 radius + 1)^3`` comparisons per voxel.
    """
    out = volume
    for dim in (2, 3, 4):
        n = out.shape[dim]
        acc = out.clone()
        for shift in range(1, min(radius, n - 1) + 1):
            upper, lower = acc.narrow(dim, shift, n - shift), acc.narrow(dim, 0, n - shift)
            torch.maximum(upper, out.narrow(dim, 0, n - shift), out=upper)
            torch.maximum(lower, out.narrow(dim, shift, n - shift), out=lower)
        out = acc
    return out


def gaussian_kernel1d(sigma: float, truncate: float = 3.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian with standard deviation ``sigma`` voxels, radius ``ceil(truncate*sigma)``."""
    radius = max(1, int(math.ceil(truncate * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_smooth(volume: torch.Tensor, sigma_vox: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(N, C, D, H, W)`` with ``sigma_vox = (sx, sy, sz)`` in voxels.

    Axes with ``sigma <= 0.2`` are left alone. The border is continued by replication, so a
    constant volume stays constant. Returns a new tensor of the same shape and dtype.
    """
    if volume.ndim != 5:
        raise ValueError(f"volume must have shape (N, C, D, H, W), got {tuple(volume.shape)}")
    sig = [float(s) for s in sigma_vox]
    if len(sig) != 3 or not all(math.isfinite(s) and s >= 0 for s in sig):
        raise ValueError(f"sigma_vox must be 3 finite values >= 0 (x, y, z), got {tuple(sigma_vox)}")
    n, c = volume.shape[:2]
    out = volume.reshape(n * c, 1, *volume.shape[2:])
    compute_dtype = out.dtype if out.is_floating_point() else torch.float32
    out = out.to(compute_dtype)
    # x -> W (dim 4), y -> H (dim 3), z -> D (dim 2)
    for sigma, dim in zip(sig, (4, 3, 2)):
        if sigma <= 0.2 or out.shape[dim] < 2:
            continue
        k = gaussian_kernel1d(sigma, dtype=torch.float64)
        r = (k.numel() - 1) // 2
        pad = [0, 0, 0, 0, 0, 0]  # (W_lo, W_hi, H_lo, H_hi, D_lo, D_hi)
        pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = r
        padded = F.pad(out, pad, mode="replicate")
        # a weighted sum of shifted copies: 3 times faster on a CPU than conv3d with a 1-D kernel
        n = out.shape[dim]
        out = padded.narrow(dim, 0, n) * float(k[0])
        for i in range(1, k.numel()):
            out.add_(padded.narrow(dim, i, n), alpha=float(k[i]))
        del padded  # one padded copy at a time
    return out.reshape(volume.shape).to(volume.dtype if volume.is_floating_point() else compute_dtype)


def _target_voxel_length(source: ImageGrid, target_spacing: Sequence[float], target_direction=None) -> np.ndarray:
    """Length in mm ``(x, y, z)`` of the target voxel box (spacing ``target_spacing`` along the
    columns of ``target_direction``, default the source direction) along each source index axis."""
    d_src = source.direction_matrix
    d_tgt = d_src if target_direction is None else np.asarray(target_direction, dtype=float).reshape(3, 3)
    return np.abs(d_src.T @ d_tgt) @ np.asarray(target_spacing, dtype=float)


def antialias_sigma(source: ImageGrid, target_spacing: Sequence[float], target_direction=None) -> tuple[float, float, float]:
    """Gaussian sigma in *source* voxels ``(x, y, z)`` for sampling ``source`` at a coarser spacing.

    The target voxel (spacing ``target_spacing`` along the columns of ``target_direction``, default
    the source direction) is projected onto each source index axis; where that length ``t`` exceeds
    the source spacing ``s``, ``sigma = 0.5 * sqrt((t/s)^2 - 1)`` voxels (the extra blur that turns
    a sampling at ``s`` into one at ``t``, with a Gaussian of ``t/2`` mm width per target voxel).
    """
    ratio = _target_voxel_length(source, target_spacing, target_direction) / np.asarray(source.spacing)
    return tuple(float(0.5 * math.sqrt(r * r - 1.0)) if r > 1.0 else 0.0 for r in ratio)  # type: ignore[return-value]


def box_downsample(
    data: torch.Tensor, source: ImageGrid, target_spacing: Sequence[float], target_direction=None
) -> tuple[torch.Tensor, ImageGrid]:
    """Average-pool ``data`` by the largest integer factor per axis that keeps it finer than the target.

    The factor along each source axis is ``floor(t / s)`` with ``t`` the target voxel length along
    that axis (see :func:`antialias_sigma`); the volume is first padded by border replication to a
    multiple of the factor. The pooled grid is exact: each output voxel centre is the mean of the
    centres it averages (``ImageGrid.cropped`` then ``ImageGrid.resized``). Cheap pre-filter before
    the residual Gaussian of :func:`antialias_sigma`.

    Returns:
        ``(pooled (N, C, D', H', W'), pooled grid)``; unchanged inputs when every factor is 1.
    """
    proj = _target_voxel_length(source, target_spacing, target_direction)
    factor = np.maximum(np.floor(proj / np.asarray(source.spacing) + 1e-6), 1).astype(int)
    factor = np.minimum(factor, np.asarray(source.size))
    if np.all(factor == 1):
        return data, source
    size = np.asarray(source.size)
    padded = -(-size // factor) * factor
    extra = padded - size  # (x, y, z)
    if np.any(extra):
        data = F.pad(data, (0, int(extra[0]), 0, int(extra[1]), 0, int(extra[2])), mode="replicate")
    kernel = tuple(int(v) for v in xyz_to_zyx(factor))  # the pooling runs on (D, H, W) arrays
    pooled = F.avg_pool3d(data, kernel_size=kernel, stride=kernel)
    grid = source.cropped((0, 0, 0), tuple(int(v) for v in padded)).resized(tuple(int(v) for v in padded // factor))
    return pooled, grid


def lowpass(
    data: torch.Tensor, source: ImageGrid, target_spacing: Sequence[float], target_direction=None
) -> tuple[torch.Tensor, ImageGrid]:
    """Anti-aliasing for sampling at ``target_spacing``: :func:`box_downsample`, then the residual
    Gaussian of :func:`antialias_sigma`. Returns ``(filtered data, its grid)``."""
    data, source = box_downsample(data, source, target_spacing, target_direction)
    sigma = antialias_sigma(source, target_spacing, target_direction)
    if max(sigma) > 0.2:
        data = gaussian_smooth(data, sigma)
    return data, source


def resample_antialiased(
    data: torch.Tensor,
    source: ImageGrid,
    target: ImageGrid,
    affine: np.ndarray | None = None,
    antialias: bool = True,
    padding_value: float | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Sample ``data`` ``(N, C, D, H, W)`` on ``source`` at ``affine @ x`` for the voxel centres ``x`` of ``target``.

    Args:
        data: values on ``source``.
        source: grid of ``data``.
        target: output grid.
        affine: optional 4x4 LPS matrix (``x_source = affine @ x_target``); identity if ``None``.
        antialias: Gaussian low-pass on ``source`` first (see :func:`antialias_sigma`).
        padding_value: value outside ``source``; ``None`` continues the border.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``(N, C, *target.shape_zyx)``.
    """
    check_volume(data, source, "data")
    given = data
    if antialias and mode == "bilinear":
        spacing = np.asarray(target.spacing)
        direction = target.direction_matrix
        if affine is not None:
            lin = np.asarray(affine, dtype=float)[:3, :3] @ direction * spacing
            spacing = np.linalg.norm(lin, axis=0)
            direction = lin / spacing
        data, source = lowpass(data, source, spacing, direction)
    if padding_value is None:
        return sample_on_grid(data, source, target, matrix=affine, mode=mode, padding_mode="border")
    # a filtered copy is ours to shift in place (no second full-size copy); the caller's data is not
    shifted = data.sub_(padding_value) if data is not given and data.is_floating_point() else data - padding_value
    del data
    out = sample_on_grid(shifted, source, target, matrix=affine, mode=mode, padding_mode="zeros")
    return out.add_(padding_value)

