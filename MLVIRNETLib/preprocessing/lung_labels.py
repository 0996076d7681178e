"""The two lungs of a lung mask: right/left labels and volumes.

:func:`split_left_right` labels the right lung 1 and the left lung 2 (LPS ``+x`` points to the
patient's left); :func:`lung_volume_ml` measures a mask.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid
from .morphology import bounding_box, centroid_world, distance_mm, erode, grid_spacing_zyx, two_parts

RIGHT_LUNG = 1
"""Label of the right lung in :func:`split_left_right`."""

LEFT_LUNG = 2
"""Label of the left lung in :func:`split_left_right`."""

_MAX_EROSION_LIMIT_MM = 1000.0
"""Largest ``max_erosion_mm`` accepted (bounds the erosion loop: radii grow by 1.5 per step)."""


def split_left_right(mask: sitk.Image, min_fraction: float = 0.1, max_erosion_mm: float = 20.0) -> sitk.Image:
    """Label the two lungs of a binary lung mask: 1 = right lung, 2 = left lung.

    When the lungs are separate components, the two largest are taken (the second must hold at
    least ``min_fraction`` of the first) and the one further to the patient's left (larger LPS
    ``x`` of its centroid) is labelled 2. When they touch (e.g. at the anterior junction), the
    mask is eroded by growing radii (mm, up to ``max_erosion_mm``) until it falls apart in two,
    and every mask voxel is given the label of the nearer eroded part. Other small components get
    the label of the nearer lung.

    Args:
        mask: 3-D binary image (non-zero = lung), any geometry.

    Returns:
        ``uint8`` label image on the grid of ``mask``.

    Raises:
        ValueError: not a 3-D image, an empty mask, lungs that cannot be separated (e.g. a
            crop that shows one lung only), or ``max_erosion_mm`` / ``min_fraction`` out of range.
    """
    if not isinstance(mask, sitk.Image):
        raise ValueError(f"expected a SimpleITK.Image mask, got {type(mask).__name__}")
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a 3-D scalar mask, got a {mask.GetDimension()}-D image with "
                         f"{mask.GetNumberOfComponentsPerPixel()} components of size {mask.GetSize()}")
    if not (math.isfinite(max_erosion_mm) and 0.0 <= max_erosion_mm <= _MAX_EROSION_LIMIT_MM):
        raise ValueError(f"max_erosion_mm must be in [0, {_MAX_EROSION_LIMIT_MM:g}] mm, got {max_erosion_mm}")
    if not (math.isfinite(min_fraction) and 0.0 < min_fraction <= 1.0):
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    grid = ImageGrid.from_sitk(mask)
    m = sitk.GetArrayFromImage(mask) != 0
    if not m.any():
        raise ValueError("cannot split an empty lung mask")
    spacing = grid_spacing_zyx(grid)
    box = bounding_box(m, [1, 1, 1])
    offset = np.array([b.start for b in box])
    crop = m[box]
    seeds = two_parts(crop, spacing, min_fraction)
    radius = 1.0
    while seeds is None and radius <= max_erosion_mm:
        seeds = two_parts(erode(crop, radius, spacing), spacing, min_fraction)
        radius *= 1.5
    if seeds is None:
        raise ValueError(
            f"could not separate the lung mask into two lungs (eroded up to {max_erosion_mm} mm): "
            "does the image show both lungs?"
        )
    first, second = seeds
    to_first = distance_mm(first, spacing) <= distance_mm(second, spacing)
    x1 = centroid_world(first, grid, offset)[0]
    x2 = centroid_world(second, grid, offset)[0]
    first_label, second_label = (LEFT_LUNG, RIGHT_LUNG) if x1 > x2 else (RIGHT_LUNG, LEFT_LUNG)
    labels = np.zeros(m.shape, dtype=np.uint8)
    labels[box] = np.where(crop & to_first, first_label, np.where(crop, second_label, 0))
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(mask)
    return out


def lung_volume_ml(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of a mask, ml (cm^3)."""
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * voxel_ml
