"""simulation.acquisition: a thick-slice, low-dose scan of the same anatomy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import oblique_grid

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.simulation.acquisition import AcquisitionOptions, simulate_acquisition


def _ramp_ct() -> sitk.Image:
    """An oblique CT whose HU rise linearly along the first index axis (-1000 .. 200)."""
    grid = oblique_grid(size=(60, 50, 40), spacing=(0.7, 0.7, 1.0))
    values = np.linspace(-1000.0, 200.0, 60, dtype=np.float32)[None, None, :] * np.ones((40, 50, 1), np.float32)
    image = sitk.GetImageFromArray(values)
    grid.copy_to_sitk(image)
    return image


def test_same_box_and_direction_at_the_new_voxel_size() -> None:
    ct = _ramp_ct()
    out = simulate_acquisition(ct, AcquisitionOptions(spacing_mm=(1.4, 1.4, 2.5), noise_hu=0.0))
    src, new = ImageGrid.from_sitk(ct), ImageGrid.from_sitk(out)
    assert new.size == (30, 25, 16)
    np.testing.assert_allclose(new.direction, src.direction)
    np.testing.assert_allclose(new.extent, src.extent)
    # a linear ramp stays linear: the value at an inner voxel centre is the ramp there
    point = np.asarray(new.index_to_world(np.array([15.0, 12.0, 8.0])))
    i = float(np.asarray(src.world_to_index(point))[0])
    expected = -1000.0 + 1200.0 * i / 59.0
    value = sitk.GetArrayViewFromImage(out)[8, 12, 15]  # (z, y, x) = index (15, 12, 8)
    assert abs(float(value) - expected) < 1.0


def test_noise_has_the_requested_standard_deviation() -> None:
    flat = sitk.GetImageFromArray(np.full((40, 50, 60), -800.0, dtype=np.float32))
    flat.SetSpacing((0.7, 0.7, 1.0))
    out = simulate_acquisition(flat, AcquisitionOptions(spacing_mm=(1.0, 1.0, 2.5), noise_hu=40.0), seed=3)
    values = sitk.GetArrayViewFromImage(out)
    assert abs(float(values.std()) - 40.0) < 1.0
    assert abs(float(values.mean()) + 800.0) < 2.0
    again = simulate_acquisition(flat, AcquisitionOptions(spacing_mm=(1.0, 1.0, 2.5), noise_hu=40.0), seed=3)
    assert np.array_equal(sitk.GetArrayViewFromImage(again), values)


@pytest.mark.parametrize("kwargs,match", [({"spacing_mm": (1.0, 0.0, 2.5)}, "spacing_mm"),
                                          ({"noise_hu": -1.0}, "noise_hu"),
                                          ({"noise_correlation_mm": float("nan")}, "noise_correlation_mm")])
def test_bad_options_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        AcquisitionOptions(**kwargs)


def test_only_3d_scalar_images() -> None:
    with pytest.raises(ValueError, match="3-D scalar"):
        simulate_acquisition(sitk.Image([4, 4], sitk.sitkFloat32))
