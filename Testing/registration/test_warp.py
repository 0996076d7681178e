"""registration.warp: the warped image, slab by slab, in the output's pixel type."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.io.images import tensor_to_image
from MLVIRNETLib.registration.warp import warp_image


@pytest.mark.parametrize("padding_value,mode", [(None, "bilinear"), (-1024.0, "bilinear"), (0.0, "nearest")])
def test_slabs_in_the_pixel_type_equal_one_float_warp_cast_once(padding_value, mode) -> None:
    """On an oblique anisotropic grid, the int16 warp made slab by slab equals the float32 warp of
    the whole volume rounded and clipped once (the path it replaces)."""
    grid = oblique_grid(size=(14, 10, 12))
    rng = np.random.default_rng(2)
    moving = tensor_to_image(torch.from_numpy(rng.integers(-1024, 3000, size=grid.shape_zyx).astype(np.float32)),
                             grid, pixel_type=sitk.sitkInt16)
    u = torch.from_numpy(rng.normal(scale=2.0, size=(1, 3, *grid.shape_zyx)).astype(np.float32))
    deformation = Deformation(grid, u)
    as_float = warp_image(moving, deformation, slab_voxels=10**9, padding_value=padding_value, mode=mode,
                          pixel_type=sitk.sitkFloat32)
    expected = tensor_to_image(torch.from_numpy(sitk.GetArrayFromImage(as_float)), grid, pixel_type=sitk.sitkInt16)
    slabs = warp_image(moving, deformation, slab_voxels=14 * 10 * 2, padding_value=padding_value, mode=mode)
    assert slabs.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(slabs), sitk.GetArrayFromImage(expected))
    assert ImageGrid.from_sitk(slabs).is_close(grid, tol_mm=1e-9)
