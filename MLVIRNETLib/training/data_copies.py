"""Smaller copies of training CTs, for machines that can receive only a little data.

Training looks at a CT no finer than its network grid: :func:`~MLVIRNETLib.training.synthetic_pairs.prepare_ct`
low-passes every CT once to the spacing of a ``input_size`` grid over its lungs (about 3-4 mm for a
96^3 input over a chest). A copy anti-aliased to a finer spacing than that (about 2 mm for the chest
CTs of the training recipes) therefore gives nearly the same training pairs from a fraction of the bytes. The lent
GPU machines receive at most 64 MiB (``training_recipes/common/make_copies.py``).
"""

from __future__ import annotations

import SimpleITK as sitk

from ..core.filters import resample_antialiased
from ..core.geometry import ImageGrid
from ..io.images import tensor_to_image
from ..preprocessing.pair import image_to_hu_tensor

__all__ = ["coarser_grid", "coarser_copy"]


def coarser_grid(grid: ImageGrid, spacing_mm: float) -> ImageGrid:
    """``grid`` with voxels of about ``spacing_mm`` on every axis finer than that: same field of
    view (outer voxel faces) and direction; such an axis gets ``round(n * s / spacing_mm)`` voxels
    (so its new spacing is within half a voxel of ``spacing_mm`` over the extent), and an axis
    already that coarse keeps its voxels.

    Raises:
        ValueError: ``spacing_mm`` is not a positive finite number.
    """
    if isinstance(spacing_mm, bool) or not (isinstance(spacing_mm, (int, float)) and 0 < float(spacing_mm) < float("inf")):
        raise ValueError(f"spacing_mm must be a positive number of mm, got {spacing_mm!r}")
    size = [n if s >= spacing_mm else max(1, int(round(n * s / spacing_mm))) for n, s in zip(grid.size, grid.spacing)]
    return grid if tuple(size) == tuple(grid.size) else grid.resized(size)


def coarser_copy(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` (HU) on :func:`coarser_grid`, Gaussian anti-aliased, values rounded to int16.

    The image itself (its own pixel type) is returned when no axis is finer than ``spacing_mm``.
    """
    hu, grid = image_to_hu_tensor(image)
    target = coarser_grid(grid, spacing_mm)
    if target is grid:
        return image
    return tensor_to_image(resample_antialiased(hu, grid, target), target, sitk.sitkInt16)
