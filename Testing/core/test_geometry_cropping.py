"""ImageGrid.cropped: sub-grids keep every voxel at its LPS position (checked against SimpleITK)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.sampling import resample_to_grid, to_batch_tensor


@pytest.mark.parametrize("flip_z", [False, True])
def test_cropped_matches_sitk_region_of_interest(flip_z: bool) -> None:
    grid = oblique_grid(flip_z=flip_z)
    rng = np.random.default_rng(3)
    arr = rng.normal(size=grid.shape_zyx).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    grid.copy_to_sitk(img)
    lo, hi = (2, 1, 3), (11, 8, 10)
    roi = sitk.RegionOfInterest(img, [h - l for l, h in zip(lo, hi)], list(lo))
    sub = grid.cropped(lo, hi)
    assert sub.size == tuple(roi.GetSize())
    np.testing.assert_allclose(sub.origin, roi.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(sub.spacing, roi.GetSpacing())
    np.testing.assert_allclose(sub.direction, roi.GetDirection(), atol=1e-12)
    # resampling onto the sub-grid reproduces the sub-array exactly (voxel centres coincide)
    out = resample_to_grid(to_batch_tensor(arr, dtype=torch.float64), grid, sub)
    np.testing.assert_allclose(out[0, 0].numpy(), arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]], atol=1e-5)


def test_cropped_beyond_the_grid_extends_the_lattice() -> None:
    grid = oblique_grid()
    big = grid.cropped((-2, -1, -3), (grid.size[0] + 1, grid.size[1], grid.size[2] + 2))
    assert big.size == (grid.size[0] + 3, grid.size[1] + 1, grid.size[2] + 5)
    np.testing.assert_allclose(big.index_to_world(np.array([2.0, 1.0, 3.0])), grid.origin, atol=1e-9)


@pytest.mark.parametrize("lo,hi", [((0, 0, 0), (0, 5, 5)), ((3, 0, 0), (2, 5, 5)), ((0, 0), (4, 4))])
def test_cropped_rejects_empty_or_malformed_bounds(lo, hi) -> None:
    with pytest.raises(ValueError, match="crop bounds"):
        oblique_grid().cropped(lo, hi)
