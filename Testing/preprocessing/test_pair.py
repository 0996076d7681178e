"""Preprocessing: HU window, smoothing, geometry-exact pooling/cropping and the network inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.filters import antialias_sigma, box_downsample, gaussian_smooth, resample_antialiased
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.preprocessing.pair import (
    PreprocessOptions,
    lung_bounding_box,
    mask_to_tensor,
    network_grid,
    normalize_ct,
    preprocess_pair,
)

GRID = oblique_grid(size=(30, 26, 22), spacing=(0.8, 1.3, 2.5), origin=(-40.0, 25.5, 310.0), angles=(12.0, -8.0, 25.0))


def _linear(points: torch.Tensor) -> torch.Tensor:
    """A linear function of LPS position, ``(..., 3) -> (...)``."""
    return 3.0 + 0.5 * points[..., 0] - 0.25 * points[..., 1] + 0.75 * points[..., 2]


def _image_on(grid: ImageGrid, values: torch.Tensor) -> sitk.Image:
    img = sitk.GetImageFromArray(values.numpy().astype(np.float32))
    grid.copy_to_sitk(img)
    return img


def test_normalize_ct_window() -> None:
    hu = torch.tensor([-2000.0, -1000.0, -350.0, 0.0, 300.0, 3000.0])
    out = normalize_ct(hu)
    np.testing.assert_allclose(out.numpy(), [0.0, 0.0, 0.5, 1000 / 1300, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(normalize_ct(torch.tensor([-500.0]), (-1000, 0)).numpy(), [0.5])
    with pytest.raises(ValueError, match="high > low"):
        normalize_ct(hu, (100, -100))


def test_gaussian_smooth_keeps_constants_and_has_the_requested_width() -> None:
    const = torch.full((1, 1, 9, 10, 11), 7.0)
    np.testing.assert_allclose(gaussian_smooth(const, (2.0, 1.0, 0.5)).numpy(), 7.0, atol=1e-5)
    delta = torch.zeros((1, 1, 41, 41, 41), dtype=torch.float64)
    delta[0, 0, 20, 20, 20] = 1.0
    sig = (1.5, 2.5, 3.0)  # x, y, z
    out = gaussian_smooth(delta, sig)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
    r = torch.arange(41, dtype=torch.float64) - 20
    var_z = float((out.sum(dim=(1, 2)) * r**2).sum())
    var_y = float((out.sum(dim=(0, 2)) * r**2).sum())
    var_x = float((out.sum(dim=(0, 1)) * r**2).sum())
    np.testing.assert_allclose([var_x, var_y, var_z], [s * s for s in sig], rtol=0.02)


def test_antialias_sigma() -> None:
    g = ImageGrid((10, 10, 10), (1.0, 2.0, 3.0))
    np.testing.assert_allclose(antialias_sigma(g, (1.0, 2.0, 3.0)), (0.0, 0.0, 0.0))
    np.testing.assert_allclose(antialias_sigma(g, (2.0, 2.0, 1.5)), (0.5 * math.sqrt(3.0), 0.0, 0.0))
    # a target rotated by 90 degrees about z swaps the x and y voxel lengths
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(antialias_sigma(g, (4.0, 1.0, 3.0), rot), (0.0, 0.5 * math.sqrt(3.0), 0.0), atol=1e-12)


def test_box_downsample_is_geometry_exact_on_an_oblique_grid() -> None:
    """Pooling a linear function of position reproduces it exactly at the pooled voxel centres."""
    values = _linear(GRID.world_points(dtype=torch.float64))[None, None]
    pooled, pgrid = box_downsample(values, GRID, (2.5, 4.0, 2.5))
    assert pgrid.spacing == pytest.approx((2.4, 3.9, 2.5))
    assert pgrid.direction == GRID.direction
    expected = _linear(pgrid.world_points(dtype=torch.float64))
    # the last pooled voxel of an axis may contain replicated border voxels: compare the interior
    np.testing.assert_allclose(pooled[0, 0, :, :-1, :].numpy(), expected[:, :-1, :].numpy(), atol=1e-9)


def test_resample_antialiased_keeps_linear_functions_and_applies_the_affine() -> None:
    values = _linear(GRID.world_points(dtype=torch.float64))[None, None]
    target = GRID.cropped((4, 4, 3), (26, 22, 19)).resized((8, 6, 5))
    out = resample_antialiased(values, GRID, target)
    inner = (slice(1, -1), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(out[0, 0][inner].numpy(), _linear(target.world_points(dtype=torch.float64))[inner].numpy(),
                               atol=1e-6)
    shift = np.eye(4)
    shift[:3, 3] = (1.5, -2.0, 0.5)
    moved = resample_antialiased(values, GRID, target, affine=shift)
    expected = _linear(target.world_points(dtype=torch.float64) + torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64))
    np.testing.assert_allclose(moved[0, 0][inner].numpy(), expected[inner].numpy(), atol=1e-6)


def test_lung_bounding_box_and_network_grid() -> None:
    mask = torch.zeros((1, 1, *GRID.shape_zyx))
    mask[0, 0, 5:15, 8:20, 10:25] = 1  # z 5..14, y 8..19, x 10..24
    lo, hi = lung_bounding_box(mask, GRID, margin_mm=2.0)
    # margins: ceil(2 / 0.8) = 3, ceil(2 / 1.3) = 2, ceil(2 / 2.5) = 1 voxels; x clipped at 30
    assert lo == (7, 6, 4)
    assert hi == (28, 22, 16)
    opts = PreprocessOptions(network_size=(16, 12, 8), crop_margin_mm=2.0)
    ngrid, box = network_grid(GRID, mask, opts)
    assert box == (lo, hi)
    assert ngrid.size == (16, 12, 8)
    assert ngrid.direction == GRID.direction
    # the outer faces of the network grid are those of the crop box
    crop = GRID.cropped(lo, hi)
    np.testing.assert_allclose(ngrid.extent, crop.extent, atol=1e-9)
    np.testing.assert_allclose(ngrid.index_to_world(np.array([-0.5, -0.5, -0.5])),
                               crop.index_to_world(np.array([-0.5, -0.5, -0.5])), atol=1e-9)
    whole, box_all = network_grid(GRID, None, opts)
    assert box_all == ((0, 0, 0), GRID.size)
    with pytest.raises(ValueError, match="empty"):
        lung_bounding_box(torch.zeros_like(mask), GRID)


def test_preprocess_pair_identical_and_shifted_inputs() -> None:
    rng = np.random.default_rng(0)
    hu = torch.as_tensor(rng.normal(-500, 300, size=GRID.shape_zyx).astype(np.float32))
    hu = gaussian_smooth(hu[None, None], (2.0, 2.0, 1.0))[0, 0]
    img = _image_on(GRID, hu)
    opts = PreprocessOptions(network_size=(12, 12, 8), crop_to_lungs=False)
    pp = preprocess_pair(img, img, options=opts)
    assert pp.fixed.shape == (1, 1, 8, 12, 12)
    assert float(pp.fixed.min()) >= 0.0 and float(pp.fixed.max()) <= 1.0
    torch.testing.assert_close(pp.fixed, pp.moving)
    assert float(pp.moving_valid.min()) > 0.999  # identity: every sample inside the moving image
    # a moving image on another grid: the valid fraction drops to 0 outside it
    other = GRID.cropped((0, 0, 0), (30, 26, 11))
    pp2 = preprocess_pair(img, _image_on(other, hu[:11]), options=opts)
    top = pp2.moving_valid[0, 0, -2:]
    bottom = pp2.moving_valid[0, 0, :2]
    assert float(bottom.min()) > 0.99 and float(top.max()) < 0.01


def test_preprocess_pair_rejects_a_mask_on_another_grid() -> None:
    img = _image_on(GRID, torch.zeros(GRID.shape_zyx))
    bad = sitk.Image(list(GRID.size), sitk.sitkUInt8)  # default geometry, not GRID's
    with pytest.raises(ValueError, match="fixed mask grid"):
        preprocess_pair(img, img, fixed_mask=bad)
    with pytest.raises(ValueError, match="shape"):
        mask_to_tensor(torch.zeros((1, 1, 3, 3, 3)), GRID)


def test_masks_with_negative_or_nan_values_are_refused_naming_the_values() -> None:
    minus_one = _image_on(GRID, torch.full(GRID.shape_zyx, -1.0))
    with pytest.raises(ValueError, match=r"fixed mask has negative values \(range -1\.\.-1; values seen: -1\)"):
        mask_to_tensor(minus_one, GRID, "fixed mask")
    with pytest.raises(ValueError, match="negative values"):
        lung_bounding_box(minus_one, GRID)  # not "the lung mask is empty"
    labels = torch.zeros(GRID.shape_zyx)
    labels[2:5, 3:6, 4:8] = -2.0
    labels[6:9, 3:6, 4:8] = 1.0
    with pytest.raises(ValueError, match=r"range -2\.\.1; values seen: -2, 0, 1"):
        mask_to_tensor(labels, GRID)
    nan = torch.zeros(GRID.shape_zyx)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        mask_to_tensor(nan.numpy(), GRID)
    # label maps (1 = right, 2 = left lung) are masks wherever they are nonzero
    two = torch.zeros(GRID.shape_zyx, dtype=torch.uint8)
    two[2:5, 3:6, 4:8] = 2
    assert torch.equal(mask_to_tensor(two, GRID)[0, 0], (two > 0).float())


def test_auto_grid_follows_the_box_and_the_voxel_size() -> None:
    from MLVIRNETLib.preprocessing.pair import auto_grid_size

    box = ImageGrid((300, 200, 100), (1.0, 1.0, 2.0), (5.0, -3.0, 2.0))  # 300 x 200 x 200 mm
    assert auto_grid_size(box, max_voxels=160) == (160, 160, 160)  # fine voxels: the cap on every axis
    assert auto_grid_size(box, max_voxels=160, min_spacing_mm=5.0) == (60, 40, 40)
    assert auto_grid_size(box, max_voxels=160, min_spacing_mm=(0.5, 0.5, 2.0)) == (160, 160, 100)  # thick slices
    assert auto_grid_size(box, max_voxels=150, min_spacing_mm=(0.5, 0.5, 3.0), multiple=8) == (152, 152, 64)
    tiny = ImageGrid((10, 10, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert auto_grid_size(tiny, max_voxels=160, min_spacing_mm=3.0, multiple=4) == (4, 4, 4)


def test_network_grid_auto_keeps_the_box() -> None:
    grid = ImageGrid((100, 90, 60), (0.8, 0.8, 2.5), (-40.0, 10.0, 5.0))
    net, box = network_grid(grid, None, PreprocessOptions(network_size="auto", auto_min_spacing_mm=(0.4, 0.4, 1.25)))
    assert box == ((0, 0, 0), (100, 90, 60))
    np.testing.assert_allclose(net.extent, grid.extent)
    assert net.size == (200, 180, 120)  # the voxel floor (half the image voxel) under the 224 cap
    with pytest.raises(ValueError, match="auto_min_spacing_mm"):
        PreprocessOptions(network_size="auto", auto_min_spacing_mm=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="'auto'"):
        PreprocessOptions(network_size="big")
