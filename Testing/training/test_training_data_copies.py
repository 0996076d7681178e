"""Coarser copies of training CTs (``MLVIRNETLib.training.data_copies``): the grid keeps the field of
view and direction, and a linear image stays linear (values at the new voxel centres)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.training.data_copies import coarser_copy, coarser_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _corners(grid: ImageGrid) -> np.ndarray:
    """The 8 outer voxel-face corners, LPS mm."""
    idx = np.array([[i, j, k] for i in (-0.5, grid.size[0] - 0.5) for j in (-0.5, grid.size[1] - 0.5)
                    for k in (-0.5, grid.size[2] - 0.5)])
    return grid.index_to_world(idx)


@pytest.mark.parametrize("spacing,expected", [(2.0, (5, 7, 12)), (1.0, (10, 14, 12)), (3.0, (3, 5, 10))])
def test_the_coarser_grid_keeps_the_field_of_view(spacing, expected):
    grid = oblique_grid(size=(14, 21, 12), spacing=(0.7, 0.65, 2.5))  # oblique, anisotropic, origin != 0
    out = coarser_grid(grid, spacing)
    assert out.size == expected  # round(n * s / spacing) where s < spacing; an axis already coarse is kept
    assert np.allclose(_corners(out), _corners(grid), atol=1e-9)
    assert np.allclose(out.direction_matrix, grid.direction_matrix)
    for n_old, s_old, n_new in zip(grid.size, grid.spacing, out.size):  # about `spacing` where finer
        assert n_new == n_old if s_old >= spacing else abs(n_new - n_old * s_old / spacing) <= 0.5


def test_a_grid_already_coarse_enough_is_returned_as_it_is():
    grid = oblique_grid(spacing=(2.0, 2.5, 3.0))
    assert coarser_grid(grid, 2.0) is grid


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2", True])
def test_a_bad_spacing_is_refused(bad):
    with pytest.raises(ValueError, match="spacing_mm"):
        coarser_grid(oblique_grid(), bad)


def test_a_linear_image_keeps_its_values_at_the_new_voxel_centres():
    grid = oblique_grid(size=(40, 36, 16), spacing=(0.7, 0.8, 2.5))
    gradient = np.array([3.0, -2.0, 1.5])  # HU per mm
    pts = grid.world_points(dtype=torch.float64).numpy()  # (z, y, x, 3)
    values = (pts - np.asarray(grid.origin)) @ gradient - 500.0
    image = sitk.GetImageFromArray(values.astype(np.float32))
    grid.copy_to_sitk(image)

    copy = coarser_copy(image, 2.0)
    out = ImageGrid.from_sitk(copy)
    assert copy.GetPixelID() == sitk.sitkInt16
    assert out.size == coarser_grid(grid, 2.0).size
    got = sitk.GetArrayFromImage(copy).astype(float)
    want = (out.world_points(dtype=torch.float64).numpy() - np.asarray(grid.origin)) @ gradient - 500.0
    inner = (slice(1, -1), slice(2, -2), slice(2, -2))  # the border continues the edge value
    assert np.abs(got[inner] - want[inner]).max() <= 0.5 + 1e-3  # rounding to int16 (and float32) only


def test_a_ct_already_coarse_is_not_resampled():
    image = sitk.Image(8, 9, 10, sitk.sitkInt16)
    image.SetSpacing((2.0, 2.0, 5.0))
    assert coarser_copy(image, 2.0) is image
