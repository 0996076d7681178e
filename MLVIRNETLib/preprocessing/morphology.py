"""Small array helpers of the lung mask: connected components, distance maps, morphology in mm,
and the robust check that an image holds CT in Hounsfield units (:func:`not_hu_reason`).

Arrays are ``(D, H, W)`` = ``(z, y, x)`` numpy arrays; spacings are given in the same order
(:attr:`MLVIRNETLib.core.geometry.ImageGrid.spacing_zyx`). Conversions to SimpleITK's ``(x, y, z)``
order go through :mod:`MLVIRNETLib.core.geometry`.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid, zyx_to_xyz

MAX_ABS_HU = 1.0e5
"""Robust (1st/99th percentile) values beyond this magnitude are not Hounsfield units (CT lies
within about -1024..3071 HU, extended scales within +-32768)."""

_PERCENTILE_SAMPLES = 1_000_000
"""Voxels sampled (a regular stride) for the robust percentiles of :func:`robust_range`."""


# ----------------------------------------------------------------------------------------------
# Is it CT in HU?
# ----------------------------------------------------------------------------------------------
def robust_range(image: sitk.Image) -> tuple[float, float]:
    """The 1st and 99th percentile of the voxel values of a scalar image (on at most about a
    million voxels taken at a regular stride), as floats.

    Raises:
        ValueError: not a scalar ``sitk.Image``.
    """
    if not isinstance(image, sitk.Image) or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar SimpleITK.Image, got {type(image).__name__}")
    flat = sitk.GetArrayViewFromImage(image).ravel()
    sample = flat[:: max(1, flat.size // _PERCENTILE_SAMPLES)].astype(np.float64)
    lo, hi = np.percentile(sample, [1.0, 99.0])
    return float(lo), float(hi)


def not_hu_reason(image: sitk.Image, name: str = "the image") -> str | None:
    """Why ``image`` does not look like a chest CT in Hounsfield units, or None when it does.

    The test is robust (1st and 99th percentile, see :func:`robust_range`): a chest CT has air
    (about -1000 HU; 1st percentile below -500 HU) and soft tissue (0..100 HU; 99th percentile
    above -200 HU), and no values beyond ``MAX_ABS_HU``. Images normalised to 0..1, stored as
    HU + 1024, or scaled by a wrong factor fail it.

    Raises:
        ValueError: not a scalar ``sitk.Image``.
    """
    lo, hi = robust_range(image)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{name} has non-finite values"
    seen = f"{name} has values {lo:.4g}..{hi:.4g} (1st-99th percentile)"
    expected = ("expected CT in Hounsfield units: air about -1000 HU and soft tissue 0..100 HU "
                "(a 1st percentile below -500 HU and a 99th percentile above -200 HU)")
    if max(abs(lo), abs(hi)) > MAX_ABS_HU:
        return f"{seen}, far beyond any Hounsfield unit (|HU| <= {MAX_ABS_HU:g}); {expected}"
    if lo > -500.0:
        hint = ""
        if -0.01 <= lo and hi <= 1.01:
            hint = "; it looks normalised to 0..1: give the CT in HU"
        elif -200.0 <= lo <= 300.0 and hi > 800.0:
            hint = "; it looks like HU + 1024 (as DIR-LAB raw files store it): subtract 1024"
        return f"{seen}, no air; {expected}{hint}"
    if hi < -200.0:
        return f"{seen}, no soft tissue; {expected}"
    return None


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def grid_spacing_zyx(grid: ImageGrid) -> np.ndarray:
    """Voxel size in mm along the array axes ``(D, H, W)``, float64 ``(3,)``."""
    return np.asarray(grid.spacing_zyx, dtype=float)


def _image(array: np.ndarray, spacing_zyx: np.ndarray | None) -> sitk.Image:
    """Array ``(D, H, W)`` -> sitk image in index space (spacing only; bool becomes uint8)."""
    a = array.astype(np.uint8) if array.dtype == bool else array
    img = sitk.GetImageFromArray(a)
    if spacing_zyx is not None:
        img.SetSpacing(tuple(float(s) for s in zyx_to_xyz(spacing_zyx)))
    return img


def _binary(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image) != 0


def _radius_vox(radius_mm: float, spacing_zyx: np.ndarray) -> list[int]:
    """Kernel radius per index axis ``(x, y, z)`` for a ball of ``radius_mm``."""
    return [int(max(0, round(radius_mm / s))) for s in zyx_to_xyz(spacing_zyx)]


def _components(mask: np.ndarray, spacing_zyx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components: label array and voxel count per label (index 0 = background)."""
    lab = sitk.GetArrayFromImage(sitk.ConnectedComponent(_image(mask, spacing_zyx), False))
    return lab, np.bincount(lab.ravel())


def _border_labels(labels: np.ndarray) -> set[int]:
    """Labels present on any of the six faces of the array."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    found: set[int] = set()
    for f in faces:
        found.update(int(v) for v in np.unique(f))
    found.discard(0)
    return found


def two_parts(mask: np.ndarray, spacing: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The two largest components when the second is at least ``min_fraction`` of the first."""
    if not mask.any():
        return None
    labels, counts = _components(mask, spacing)
    if counts.size < 3:
        return None
    order = np.argsort(counts[1:])[::-1] + 1
    a, b = order[0], order[1]
    if counts[b] < min_fraction * counts[a]:
        return None
    return labels == a, labels == b


def distance_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm of every voxel to the nearest voxel of ``mask`` (0 inside, inf if empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    d = sitk.SignedMaurerDistanceMap(_image(mask, spacing), insideIsPositive=False, squaredDistance=False,
                                     useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(d), 0.0)


def centroid_world(mask: np.ndarray, grid: ImageGrid, offset_zyx: np.ndarray) -> np.ndarray:
    """LPS centroid (mm) of a boolean ``(D, H, W)`` crop of ``grid`` starting at ``offset_zyx``."""
    zyx = np.argwhere(mask).mean(axis=0) + offset_zyx
    return np.asarray(grid.array_index_to_world(zyx))


def bounding_box(mask: np.ndarray, margin: list[int]) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels per array axis (clipped)."""
    box = []
    for axis in range(3):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo = max(0, int(present.min()) - margin[axis])
        hi = min(mask.shape[axis], int(present.max()) + 1 + margin[axis])
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]


def dilate(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a Euclidean ball of ``radius_mm`` (physical, so exact for any spacing).

    The distance map is computed on the bounding box of ``mask`` grown by the radius only.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    box = bounding_box(mask, [int(np.ceil(radius_mm / s)) + 1 for s in spacing])
    out[box] = distance_mm(mask[box], spacing) <= radius_mm
    return out


def erode(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Erosion by a Euclidean ball of ``radius_mm``; the image border does not erode."""
    return ~dilate(~mask, radius_mm, spacing)


def depth_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it (0 outside)."""
    return np.where(mask, distance_mm(~mask, spacing), 0.0)

