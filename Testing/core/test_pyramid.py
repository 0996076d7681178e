"""Tests of MLVIRNETLib.core.pyramid: exactness on constants and world-linear ramps, masks, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.pyramid import build_pyramid, downsample2


def _oblique_grid(size=(16, 24, 32)) -> ImageGrid:
    axis = np.array([2.0, -1.0, 2.0]) / 3.0
    angle = 0.45
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return ImageGrid(size, (0.7, 1.2, 2.5), (40.0, -18.0, 102.5), tuple(rot.ravel()))


def test_constant_image_stays_constant():
    grid = _oblique_grid()
    img = torch.full((2, 3, *grid.shape_zyx), 4.25)
    pyr = build_pyramid(img, grid, 3)
    assert len(pyr) == 3
    for level, (im, g) in enumerate(pyr):
        assert im.shape == (2, 3, *g.shape_zyx)
        assert g.size == tuple(s // 2**level for s in grid.size)
        torch.testing.assert_close(im, torch.full_like(im, 4.25), rtol=0, atol=1e-6)


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_world_linear_ramp_matches_ramp_at_coarse_world_points(levels):
    grid = _oblique_grid()
    a = torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64)
    b = 12.0

    def ramp(g: ImageGrid) -> torch.Tensor:
        return (g.world_points(dtype=torch.float64) @ a + b)[None, None]

    pyr = build_pyramid(ramp(grid), grid, levels)
    for im, g in pyr[1:]:
        expected = ramp(g)
        # replicate padding affects only the outermost coarse voxel layer
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
        torch.testing.assert_close(im[inner], expected[inner], rtol=0, atol=1e-9)
        # ... and there the error is at most the ramp change over a few fine voxels
        assert float((im - expected).abs().max()) > 1e-3  # the border really is approximate


def test_coarse_grid_is_downsampled_grid():
    grid = _oblique_grid()
    pyr = build_pyramid(torch.zeros(1, 1, *grid.shape_zyx), grid, 3)
    assert pyr[0][1] == grid
    assert pyr[1][1].is_close(grid.downsampled(2), tol_mm=1e-9)
    assert pyr[2][1].is_close(grid.downsampled(2).downsampled(2), tol_mm=1e-9)
    assert pyr[2][1].is_close(grid.resized(tuple(s // 4 for s in grid.size)), tol_mm=1e-9)


def test_binary_mask_becomes_float_in_unit_interval_and_preserves_mean_inside():
    grid = ImageGrid((16, 16, 16), (1.0, 1.5, 2.0), (5.0, 6.0, 7.0))
    mask = torch.zeros(1, 1, 16, 16, 16, dtype=torch.uint8)
    mask[..., 4:12, 2:14, 6:10] = 1
    pyr = build_pyramid(mask, grid, 3)
    for im, _ in pyr:
        assert im.dtype == torch.float32
        assert float(im.min()) >= 0.0 and float(im.max()) <= 1.0
    # the filter sums to one and the mask does not touch the border: the total mass is kept
    assert float(pyr[1][0].sum()) * 8 == pytest.approx(float(mask.sum()), rel=1e-6)


def test_downsample2_filter_weights():
    # a single impulse at fine index 5 spreads onto coarse voxels 2 (weight 3/8) and 3 (weight 1/8)
    x = torch.zeros(1, 1, 2, 2, 12, dtype=torch.float64)
    x[..., 5] = 1.0
    y = downsample2(x)
    assert y.shape == (1, 1, 1, 1, 6)
    torch.testing.assert_close(y[0, 0, 0, 0], torch.tensor([0, 0, 0.375, 0.125, 0, 0], dtype=torch.float64))


def test_bfloat16_input_keeps_dtype():
    x = torch.rand(1, 1, 8, 8, 8).bfloat16()
    y = downsample2(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), downsample2(x.float()), rtol=2e-2, atol=2e-2)


def test_bad_input_raises_value_error():
    grid = ImageGrid((12, 16, 20))
    with pytest.raises(ValueError, match=r"\(12, 16, 20\).*not divisible by 8"):
        build_pyramid(torch.zeros(1, 1, 20, 16, 12), grid, 4)
    with pytest.raises(ValueError, match=r"20, 16, 11\)"):
        build_pyramid(torch.zeros(1, 1, 20, 16, 11), grid, 2)
    with pytest.raises(ValueError, match="levels"):
        build_pyramid(torch.zeros(1, 1, 20, 16, 12), grid, 0)
    with pytest.raises(ValueError, match=r"\(3, 4, 4\)"):
        downsample2(torch.zeros(1, 1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(4, 4, 4\)"):
        downsample2(torch.zeros(4, 4, 4))
