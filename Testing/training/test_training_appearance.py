"""training.appearance: acquisition differences between the two scans of a synthetic pair, checked
against their analytic definitions on an oblique, anisotropic grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import rotation_matrix

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.preprocessing.pair import AIR_HU
from MLVIRNETLib.training.appearance import (
    AppearanceDraw,
    apply_appearance,
    correlated_noise,
    cut_field_of_view,
    draw_appearance,
    thicker_slices,
)
from MLVIRNETLib.training.config import AppearanceConfig

GRID = ImageGrid((20, 24, 40), (1.5, 1.2, 1.0), (-30.0, 12.0, 80.0), tuple(rotation_matrix((5.0, -4.0, 8.0)).ravel()))


@pytest.mark.parametrize("thickness", [3.0, 8.0])
def test_thicker_slices_spread_an_impulse_by_the_slice_profile_along_z_only(thickness):
    """A point spreads along z with the variance a box profile of the new thickness adds to the
    voxel's own, ``(T**2 - s_z**2) / 12``; nothing spreads along x or y."""
    hu = torch.zeros((1, 1, *GRID.shape_zyx))
    hu[0, 0, 20, 12, 10] = 1.0
    out = thicker_slices(hu, GRID, thickness)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(out[:, 11, :].abs().sum() + out[:, :, 9].abs().sum()) < 1e-6  # x and y untouched
    z = torch.arange(out.shape[0], dtype=torch.float64) * GRID.spacing[2]
    profile = out[:, 12, 10].double()
    mean = float((profile * z).sum())
    var = float((profile * (z - mean) ** 2).sum())
    assert var == pytest.approx((thickness**2 - GRID.spacing[2] ** 2) / 12.0, rel=0.05)


def test_slices_no_thicker_than_the_voxel_change_nothing():
    hu = torch.randn((1, 1, *GRID.shape_zyx))
    assert torch.equal(thicker_slices(hu, GRID, GRID.spacing[2]), hu)
    assert torch.equal(thicker_slices(hu, GRID, 1.0), hu)


def test_correlated_noise_has_the_requested_deviation_and_is_correlated():
    gen = torch.Generator().manual_seed(0)
    noise = correlated_noise((1, 1, 40, 40, 40), 30.0, gen)
    assert float(noise.std()) == pytest.approx(30.0, rel=1e-4)
    assert abs(float(noise.mean())) < 2.0
    a, b = noise[0, 0, :, :, :-1].flatten(), noise[0, 0, :, :, 1:].flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.5  # white noise: about 0


@pytest.mark.parametrize("axis,dim", [(0, 4), (1, 3), (2, 2)])
@pytest.mark.parametrize("upper", [False, True])
def test_field_of_view_cut_puts_air_in_one_slab_at_the_named_face(axis, dim, upper):
    hu = torch.full((1, 1, *GRID.shape_zyx), 50.0)
    out = cut_field_of_view(hu, axis, 0.25, upper)
    n = hu.shape[dim]
    k = round(0.25 * n)
    idx = torch.arange(n)
    cut = (idx >= n - k) if upper else (idx < k)
    air = (out == AIR_HU).float().mean(dim=[d for d in range(5) if d != dim])
    assert torch.equal(air > 0.5, cut) and bool((air[cut] == 1).all()) and bool((air[~cut] == 0).all())
    assert bool((hu == 50.0).all())  # the input is not changed


def test_default_appearance_draws_nothing_and_full_probabilities_draw_everything():
    gen = torch.Generator().manual_seed(3)
    none = draw_appearance(AppearanceConfig(), gen)
    assert none == AppearanceDraw(thick_image=none.thick_image, noisy_image=none.noisy_image)
    assert not AppearanceConfig().enabled
    cfg = AppearanceConfig(thick_slice_probability=1, low_dose_probability=1, hu_offset_hu=20,
                           fov_cut_probability=1, fov_cut_fraction=(0.1, 0.2))
    d = draw_appearance(cfg, torch.Generator().manual_seed(3))
    assert 2.5 <= d.thickness_mm <= 8.0 and 10.0 <= d.noise_hu <= 40.0
    assert all(abs(o) <= 20 for o in d.offsets_hu) and d.offsets_hu[0] != d.offsets_hu[1]
    assert d.cut is not None and 0.1 <= d.cut[2] <= 0.2


def test_the_draw_uses_the_same_random_values_whatever_is_chosen():
    """Later draws of the generator do not depend on which differences were enabled."""
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    draw_appearance(AppearanceConfig(), g1)
    draw_appearance(AppearanceConfig(thick_slice_probability=1, fov_cut_probability=1, hu_offset_hu=5), g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_apply_appearance_changes_only_the_drawn_image():
    a = torch.full((1, 1, *GRID.shape_zyx), -800.0)
    a[..., 10:30, :, :] = 40.0
    b = a.clone()
    draw = AppearanceDraw(thickness_mm=8.0, thick_image=1, noise_hu=None, offsets_hu=(12.5, 0.0),
                          cut=(0, 2, 0.25, False))
    out_a, out_b = apply_appearance((a, b), GRID, draw, torch.Generator().manual_seed(0))
    assert bool((out_a[0, 0, :10] == AIR_HU).all())  # cut at the lower z face of image 0
    assert torch.allclose(out_a[0, 0, 10:], a[0, 0, 10:] + 12.5)  # offset of image 0
    assert torch.allclose(out_b[..., 18:22, :, :], b[..., 18:22, :, :], atol=0.5)  # deep inside the slab: unchanged
    assert float(out_b[0, 0, 10, 0, 0]) > -800.0 and float(out_b[0, 0, 10, 0, 0]) < 40.0  # edge blurred
    assert math.isclose(float(out_b.sum()), float(b.sum()), rel_tol=1e-5)  # blurring keeps the total


def test_config_checks_ranges():
    with pytest.raises(ValueError, match="thick_slice_probability"):
        AppearanceConfig(thick_slice_probability=1.5)
    with pytest.raises(ValueError, match="slice_thickness_mm"):
        AppearanceConfig(slice_thickness_mm=(8.0, 2.0))
    with pytest.raises(ValueError, match="fov_cut_fraction"):
        AppearanceConfig(fov_cut_fraction=(0.5, 0.95))
    assert np.isclose(AppearanceConfig(hu_offset_hu=10).hu_offset_hu, 10.0)
