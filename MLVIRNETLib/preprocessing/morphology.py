"""Small array helpers of the lung mask: connected components, distance maps, morphology in mm.

Arrays are ``(D, H, W)`` = ``(z, y, x)`` numpy arrays; spacings are given in the same order
(:attr:`MLVIRNETLib.core.geometry.ImageGrid.spacing_zyx`). Conversions to SimpleITK's ``(x, y, z)``
order go through :mod:`MLVIRNETLib.core.geometry`.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid, zyx_to_xyz


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def _spacing_zyx(grid: ImageGrid) -> np.ndarray:
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


def _two_parts(mask: np.ndarray, spacing: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray] | None:
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


def _distance_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm of every voxel to the nearest voxel of ``mask`` (0 inside, inf if empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    d = sitk.SignedMaurerDistanceMap(_image(mask, spacing), insideIsPositive=False, squaredDistance=False,
                                     useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(d), 0.0)


def _centroid_world(mask: np.ndarray, grid: ImageGrid, offset_zyx: np.ndarray) -> np.ndarray:
    """LPS centroid (mm) of a boolean ``(D, H, W)`` crop of ``grid`` starting at ``offset_zyx``."""
    zyx = np.argwhere(mask).mean(axis=0) + offset_zyx
    return np.asarray(grid.array_index_to_world(zyx))


def _bounding_box(mask: np.ndarray, margin: list[int]) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels per array axis (clipped)."""
    box = []
    for axis in range(3):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo = max(0, int(present.min()) - margin[axis])
        hi = min(mask.shape[axis], int(present.max()) + 1 + margin[axis])
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]


def _dilate(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a Euclidean ball of ``radius_mm`` (physical, so exact for any spacing).

    The distance map is computed on the bounding box of ``mask`` grown by the radius only.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    box = _bounding_box(mask, [int(np.ceil(radius_mm / s)) + 1 for s in spacing])
    out[box] = _distance_mm(mask[box], spacing) <= radius_mm
    return out


def _erode(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Erosion by a Euclidean ball of ``radius_mm``; the image border does not erode."""
    return ~_dilate(~mask, radius_mm, spacing)


def _depth_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it (0 outside)."""
    return np.where(mask, _distance_mm(~mask, spacing), 0.0)

