"""Tests of MLVIRNETLib.preprocessing.lungmask: phantoms with known masks, the bundled real CT, bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.evaluation.metrics import dice
from MLVIRNETLib.paths import bundled_ct_path
from MLVIRNETLib.preprocessing.lung_labels import LEFT_LUNG, RIGHT_LUNG, lung_volume_ml, split_left_right
from MLVIRNETLib.preprocessing.lungmask import (
    LungMaskOptions,
    segment_lungs,
    segment_lungs_with_info,
)
from MLVIRNETLib.preprocessing.morphology import not_hu_reason, robust_range
from MLVIRNETLib.simulation.phantoms import synthetic_chest_ct

CENTRE = np.array([-20.0, 35.0, 410.0])  # LPS mm, away from the origin on purpose
LUNG_SEMI_AXES = np.array([38.0, 55.0, 85.0])  # mm (x, y, z)
LUNG_OFFSET_X = 55.0  # mm; the left lung is at +x (LPS)


def _lung_labels(grid: ImageGrid, bridge: bool = False) -> sitk.Image:
    """Two ellipsoid lungs in world coordinates on ``grid``: 1 = right (-x), 2 = left (+x).

    With ``bridge`` a ball of radius 22 mm joins them (counted in the right lung for the labels).
    """
    pts = grid.world_points(dtype=torch.float64).numpy() - CENTRE
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
    for label, sign in ((RIGHT_LUNG, -1.0), (LEFT_LUNG, 1.0)):
        q = (pts - np.array([sign * LUNG_OFFSET_X, 0.0, 0.0])) / LUNG_SEMI_AXES
        labels[(q ** 2).sum(axis=-1) <= 1.0] = label
    if bridge:
        labels[((pts - np.array([0.0, -10.0, 0.0])) ** 2).sum(axis=-1) <= 22.0 ** 2] = RIGHT_LUNG
    image = sitk.GetImageFromArray(labels)
    grid.copy_to_sitk(image)
    return image


def _phantom_grid(spacing=(2.2, 2.6, 3.3), size=(120, 100, 80), flip_z: bool = True) -> ImageGrid:
    """Oblique, anisotropic grid centred on the phantom (non-zero origin)."""
    probe = oblique_grid(size=size, spacing=spacing, origin=(0.0, 0.0, 0.0), angles=(8.0, -6.0, 12.0),
                         flip_z=flip_z)
    half = probe.index_to_world(np.asarray(size, dtype=float) / 2.0 - 0.5) - np.asarray(probe.origin)
    return ImageGrid(size, spacing, tuple(CENTRE - half), probe.direction)


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


# ----------------------------------------------------------------------------------------------
# Phantoms
# ----------------------------------------------------------------------------------------------
def test_phantom_oblique_recovers_mask_and_grid():
    grid = _phantom_grid()
    labels = _lung_labels(grid)
    truth = sitk.GetArrayFromImage(labels) > 0
    ct = synthetic_chest_ct(labels, seed=3)
    before = sitk.GetArrayFromImage(ct).copy()

    mask, info = segment_lungs_with_info(ct)

    _assert_same_grid(mask, ct)
    assert mask.GetPixelID() == sitk.sitkUInt8
    # the trachea was found between the lungs, above the carina (30 % of the height below the apex)
    assert info["trachea_found"] and info["lung_rule"] == "enclosed by the body"
    seed = np.asarray(info["trachea_seed_lps"])
    assert abs(seed[0] - CENTRE[0]) < 20.0 and seed[2] > CENTRE[2] + 0.4 * LUNG_SEMI_AXES[2]
    out = sitk.GetArrayFromImage(mask)
    assert set(np.unique(out)) <= {0, 1}
    assert np.array_equal(sitk.GetArrayFromImage(ct), before), "the input was modified"
    d = dice(out, truth.astype(np.uint8))[1]
    assert d > 0.95, f"Dice {d:.4f}"
    # the trachea (air, connected to the lungs, running up to the top of the image) was removed
    z = grid.world_points(dtype=torch.float64).numpy()[..., 2]
    above_apex = z > CENTRE[2] + LUNG_SEMI_AXES[2] + 5.0
    assert (sitk.GetArrayFromImage(ct)[above_apex] < -900).sum() > 100  # the trachea is there
    assert out[above_apex].sum() == 0


def test_phantom_working_grid_path_and_int_input():
    """Finer in-plane spacing than the working spacing: the mask is averaged down and mapped back."""
    grid = _phantom_grid(spacing=(1.15, 1.3, 3.3), size=(229, 193, 80), flip_z=False)
    labels = _lung_labels(grid)
    truth = sitk.GetArrayFromImage(labels) > 0
    ct = sitk.Cast(synthetic_chest_ct(labels, seed=5), sitk.sitkInt16)

    mask = segment_lungs(ct, LungMaskOptions(working_spacing_mm=2.4))

    _assert_same_grid(mask, ct)
    d = dice(sitk.GetArrayFromImage(mask), truth.astype(np.uint8))[1]
    assert d > 0.95, f"Dice {d:.4f}"


def test_split_left_right_touching_lungs():
    grid = _phantom_grid()
    labels = _lung_labels(grid, bridge=True)
    binary = sitk.Cast(labels > 0, sitk.sitkUInt8)
    assert sitk.GetArrayFromImage(sitk.ConnectedComponent(binary)).max() == 1  # one piece

    split = split_left_right(binary)

    _assert_same_grid(split, binary)
    scores = dice(sitk.GetArrayFromImage(split), sitk.GetArrayFromImage(labels), labels=[RIGHT_LUNG, LEFT_LUNG])
    assert scores[RIGHT_LUNG] > 0.95 and scores[LEFT_LUNG] > 0.95, scores


def test_split_left_right_one_lung_raises():
    grid = _phantom_grid()
    right_only = sitk.Cast(_lung_labels(grid) == RIGHT_LUNG, sitk.sitkUInt8)
    with pytest.raises(ValueError, match="two lungs"):
        split_left_right(right_only)


# ----------------------------------------------------------------------------------------------
# The bundled real CT
# ----------------------------------------------------------------------------------------------
def test_bundled_ct_both_lungs():
    ct = sitk.ReadImage(str(bundled_ct_path()))
    mask = segment_lungs(ct)
    _assert_same_grid(mask, ct)
    litres = lung_volume_ml(mask) / 1000.0
    # a cropped contrast CT: 180 x 189 x 246 mm field of view around the heart
    assert 1.5 < litres < 4.5, litres

    split = split_left_right(mask)
    grid = ImageGrid.from_sitk(split)
    arr = sitk.GetArrayFromImage(split)
    voxel_l = float(np.prod(grid.spacing)) / 1e6
    right, left = (arr == RIGHT_LUNG), (arr == LEFT_LUNG)
    assert right.sum() * voxel_l > 0.6 and left.sum() * voxel_l > 0.6
    assert 0.5 < right.sum() / left.sum() < 2.0
    x_right = grid.index_to_world(np.argwhere(right).mean(axis=0)[::-1])[0]
    x_left = grid.index_to_world(np.argwhere(left).mean(axis=0)[::-1])[0]
    assert x_left > x_right  # LPS: +x is the patient's left
    # lung voxels are dark, and the mask holds most of the dark voxels inside the body
    hu = sitk.GetArrayFromImage(ct)
    assert np.median(hu[arr > 0]) < -700


def test_cropped_4dct_phase(shared_data):
    """A crop entirely inside the thorax (lungs touch every face): the lung is still found."""
    ct = sitk.ReadImage(str(shared_data / "4dct" / "tcia4dlung_117" / "phase01.nii.gz"))
    mask = segment_lungs(ct)
    fraction = sitk.GetArrayViewFromImage(mask).mean()
    assert 0.5 < fraction < 0.95, fraction


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def _small_ct(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((2.0, 2.0, 3.0))
    return image


def test_rejects_2d_image():
    with pytest.raises(ValueError, match="3-D"):
        segment_lungs(sitk.Image([32, 32], sitk.sitkInt16))


def test_rejects_vector_image():
    with pytest.raises(ValueError, match="scalar"):
        segment_lungs(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 2))


def test_rejects_hu_plus_1024():
    grid = _phantom_grid()
    ct = synthetic_chest_ct(_lung_labels(grid), seed=1)
    shifted = sitk.Clamp(ct + 1024.0, lowerBound=0.0)
    with pytest.raises(ValueError, match="1024"):
        segment_lungs(shifted)


def test_rejects_image_without_air():
    with pytest.raises(ValueError, match="no air"):
        segment_lungs(_small_ct(np.full((20, 20, 20), 40, dtype=np.int16) - 5 * np.arange(20, dtype=np.int16)))


def test_rejects_image_without_lung():
    """A body without lungs in outside air: there is air, but none of it is a lung."""
    arr = np.full((30, 40, 40), -1000, dtype=np.int16)
    yy, xx = np.mgrid[:40, :40]
    arr[:, (yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2] = 40
    with pytest.raises(ValueError, match="no lung found"):
        segment_lungs(_small_ct(arr))


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="closing_radius_mm"):
        LungMaskOptions(closing_radius_mm=-1.0)
    with pytest.raises(ValueError, match="airway_threshold_hu"):
        LungMaskOptions(airway_threshold_hu=-100.0)


# ----------------------------------------------------------------------------------------------
# Bounded work on hostile values
# ----------------------------------------------------------------------------------------------
_HOSTILE_SCRIPT = """
import numpy as np, SimpleITK as sitk, torch
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.preprocessing.lungmask import LungMaskOptions, segment_lungs, segment_lungs_with_info
from MLVIRNETLib.simulation.phantoms import synthetic_chest_ct

grid = ImageGrid((64, 56, 48), (5.0, 5.0, 6.0), (-160.0, -140.0, 250.0))
pts = grid.world_points(dtype=torch.float64).numpy() - np.array([0.0, 0.0, 400.0])
labels = np.zeros(grid.shape_zyx, np.uint8)
for sign in (-1.0, 1.0):
    q = (pts - np.array([sign * 55.0, 0.0, 0.0])) / np.array([38.0, 55.0, 85.0])
    labels[(q ** 2).sum(-1) <= 1.0] = 1
mask = sitk.GetImageFromArray(labels)
grid.copy_to_sitk(mask)
ct = synthetic_chest_ct(mask, seed=1)
try:
    segment_lungs(ct * 1e30)
except ValueError as exc:
    print("1e30:", exc)
# a threshold step far too small for the range: the airway growing still ends (at most 200 steps)
_, info = segment_lungs_with_info(ct, LungMaskOptions(airway_threshold_step_hu=1e-9))
print("steps:", len(info["airway_growth_ml"]), "trachea:", info["trachea_found"])
"""


def test_hostile_values_do_not_hang():
    """A CT multiplied by 1e30 and a near-zero threshold step once looped forever in the airway growing.

    Run in a subprocess with a timeout, so that a hang fails the test instead of blocking the suite.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _HOSTILE_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1e30: the image does not look like CT in Hounsfield units" in done.stdout
    assert "far beyond any HU value" in done.stdout
    steps = int(done.stdout.split("steps:")[1].split()[0])
    assert 1 <= steps <= 201 and "trachea: True" in done.stdout


def test_not_hu_reason_names_what_was_seen_and_what_is_expected():
    grid = _phantom_grid(size=(60, 50, 40), spacing=(4.4, 5.2, 6.6))
    ct = synthetic_chest_ct(_lung_labels(grid), seed=1)
    assert not_hu_reason(ct) is None
    unit = sitk.RescaleIntensity(ct, 0.0, 1.0)
    reason = not_hu_reason(unit, "fixed image")
    assert reason is not None
    assert re.match(r"fixed image has values 0\.\d+\.\.0\.\d+ \(1st-99th percentile\)", reason), reason
    assert "air about -1000 HU" in reason and "normalised to 0..1" in reason
    plus = not_hu_reason(ct + 1024.0, "moving image")
    assert plus is not None and "no air" in plus and "subtract 1024" in plus
    assert "far beyond" in not_hu_reason(ct * 1e30)
    lo, hi = robust_range(ct)
    assert -1100.0 < lo < -900.0 and 0.0 < hi < 200.0


def test_split_left_right_rejects_unbounded_erosion():
    grid = _phantom_grid(size=(60, 50, 40), spacing=(4.4, 5.2, 6.6))
    with pytest.raises(ValueError, match="max_erosion_mm"):
        split_left_right(_lung_labels(grid), max_erosion_mm=float("inf"))
