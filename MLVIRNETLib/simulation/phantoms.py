"""Synthetic CT phantoms built around a lung mask (tests and benchmarks of the lung mask)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid, zyx_to_xyz
from ..preprocessing.lungmask import anatomical_axes
from ..preprocessing.morphology import depth_mm, dilate, grid_spacing_zyx


def synthetic_chest_ct(lung_mask: sitk.Image, seed: int = 0, vessels_per_litre: float = 15.0) -> sitk.Image:
    """A CT-like image (float32 HU) built around a lung mask, to check :func:`segment_lungs`.

    Not a realistic CT: lung parenchyma about -850 HU with smooth texture and noise, bright
    vessel-like balls (+40 HU, radius 1.5-4 mm) inside the lungs, soft tissue +40 HU in a body
    (an elliptic cylinder around the lungs united with the lungs grown by 15 mm, so that a chest
    wall always encloses them), air -1000 HU outside it, and an air-filled trachea (radius 8 mm)
    running from the top of the image to a carina 30 % of the lung height below the apex, with
    two main bronchi (radius 5 mm) to the nearest point of each lung. The trachea and bronchi are
    not part of ``lung_mask``, so a segmentation has to remove them to match it.

    Args:
        lung_mask: 3-D binary image (non-zero = lung), any geometry; "superior" is read from its
            direction (the index axis closest to LPS +z).
        seed: random seed (noise, texture, vessel positions).
        vessels_per_litre: number of vessel balls per litre of lung.

    Returns:
        float32 image on the grid of ``lung_mask``.
    """
    if lung_mask.GetDimension() != 3:
        raise ValueError(f"expected a 3-D lung mask, got a {lung_mask.GetDimension()}-D image")
    grid = ImageGrid.from_sitk(lung_mask)
    spacing = grid_spacing_zyx(grid)
    lungs = sitk.GetArrayFromImage(lung_mask) != 0
    if not lungs.any():
        raise ValueError("the lung mask is empty")
    rng = np.random.default_rng(seed)
    axes = anatomical_axes(grid)
    shape = lungs.shape

    # body: elliptic cylinder along the head-foot axis around the lungs, plus a 15 mm chest wall
    in_plane = [a for a in range(3) if a != axes.si]
    coords = np.ogrid[: shape[0], : shape[1], : shape[2]]
    present = np.argwhere(lungs)
    lo, hi = present.min(axis=0), present.max(axis=0)
    centre = (lo + hi) / 2.0
    r2 = np.float32(0.0)
    for a in in_plane:
        semi = (hi[a] - lo[a]) / 2.0 * 1.15 + 20.0 / spacing[a]
        r2 = r2 + ((coords[a].astype(np.float32) - centre[a]) / semi) ** 2
    body = np.broadcast_to(r2 <= 1.0, shape) | dilate(lungs, 15.0, spacing)

    # lung texture: smooth noise (sigma 2 mm) plus white noise
    texture = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32))
    texture.SetSpacing(tuple(float(s) for s in zyx_to_xyz(spacing)))
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(texture, 2.0))
    texture *= 40.0 / max(float(texture.std()), 1e-6)
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)
    ct[lungs] = -850.0 + texture[lungs]
    del texture

    # vessels: balls centred at least 6 mm inside the lung
    deep = np.argwhere(depth_mm(lungs, spacing) >= 6.0)
    n_vessels = int(round(vessels_per_litre * lungs.sum() * float(np.prod(spacing)) / 1e6))
    if deep.size and n_vessels:
        for c in deep[rng.integers(0, len(deep), size=n_vessels)]:
            _paint_segment(ct, c, c, float(rng.uniform(1.5, 4.0)), spacing, 40.0)

    # trachea from the top of the image to the carina, and two main bronchi
    superior_end = 0 if axes.superior_first else shape[axes.si] - 1
    apex = lo[axes.si] if axes.superior_first else hi[axes.si]
    height = hi[axes.si] - lo[axes.si]
    carina = centre.copy()
    carina[axes.si] = apex + (0.3 * height if axes.superior_first else -0.3 * height)
    top = carina.copy()
    top[axes.si] = superior_end
    _paint_segment(ct, top, carina, 8.0, spacing, -1000.0)
    for side in (present[:, axes.lr] < centre[axes.lr], present[:, axes.lr] >= centre[axes.lr]):
        points = present[side][:: max(1, int(side.sum()) // 200000)]
        if points.size == 0:
            continue
        nearest = points[np.argmin((((points - carina) * spacing) ** 2).sum(axis=1))]
        _paint_segment(ct, carina, nearest, 5.0, spacing, -1000.0)

    ct += rng.normal(scale=15.0, size=shape).astype(np.float32)
    out = sitk.GetImageFromArray(ct)
    out.CopyInformation(lung_mask)
    return out


def _paint_segment(volume: np.ndarray, a: np.ndarray, b: np.ndarray, radius_mm: float,
                   spacing: np.ndarray, value: float) -> None:
    """Set ``value`` within ``radius_mm`` of the segment from index ``a`` to ``b`` (``(z, y, x)``)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    pad = np.ceil(radius_mm / spacing) + 1
    lo = np.maximum(np.floor(np.minimum(a, b) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(a, b) + pad) + 1, volume.shape).astype(int)
    if np.any(hi <= lo):
        return
    idx = np.indices(tuple(hi - lo), dtype=float).reshape(3, -1).T + lo
    d = (b - a) * spacing
    p = (idx - a) * spacing
    t = np.clip(p @ d / max(float(d @ d), 1e-12), 0.0, 1.0)
    dist2 = ((p - t[:, None] * d) ** 2).sum(axis=1)
    region = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    region[(dist2 <= radius_mm ** 2).reshape(region.shape)] = value

