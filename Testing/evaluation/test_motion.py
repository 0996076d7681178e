"""The motion summary on analytic fields (a uniform scaling of a ball on an oblique, anisotropic grid),
the flags of failed-looking phases, the plot, and the DIR-LAB 4D-75 reader on files in that format."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import rotation_matrix

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.evaluation.motion import (BASE_FRACTION, PhaseMotion, flag_phases, motion_plot, phase_motion,
                                           summarize_series)
from MLVIRNETLib.io.dirlab import FOUR_D_75_TAGS, dirlab_grid, find_dirlab_4d75_files, read_dirlab_4d75

CENTRE = np.array([3.0, -4.0, 52.0])
RADIUS = 14.0


def _ball(grid: ImageGrid, radius: float) -> sitk.Image:
    x = grid.world_points(dtype=torch.float64).numpy()
    inside = np.linalg.norm(x - CENTRE, axis=-1) <= radius
    image = sitk.GetImageFromArray(inside.astype(np.uint8))
    grid.copy_to_sitk(image)
    return image


def _cap(radius: float, fraction: float) -> tuple[float, float]:
    """Height ``h`` of the spherical cap holding ``fraction`` of a ball's volume, and the distance of
    the cap's centroid below the centre."""
    lo, hi = 0.0, 2 * radius
    for _ in range(60):  # cap volume pi h^2 (3R - h) / 3 grows with h
        h = (lo + hi) / 2
        lo, hi = (h, hi) if math.pi * h * h * (3 * radius - h) / 3 < fraction * 4 / 3 * math.pi * radius ** 3 else (lo, h)
    return h, 3 * (2 * radius - h) ** 2 / (4 * (3 * radius - h))


@pytest.fixture(scope="module")
def scaled():
    """A uniform scaling by ``s`` about CENTRE on an oblique, anisotropic grid, the ball mask of
    RADIUS there and the phase's own mask (the ball grown by ``s``) on an axis-aligned 1 mm grid."""
    s = 1.08
    size, spacing, d = (44, 30, 22), (0.9, 1.3, 1.7), rotation_matrix((25.0, -30.0, 40.0))
    origin = CENTRE - d @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)  # centred on CENTRE
    grid = ImageGrid(size, spacing, tuple(origin), tuple(d.ravel()))
    field = Deformation.from_function(grid, lambda x: (s - 1.0) * (x - torch.as_tensor(CENTRE)))
    phase_grid = ImageGrid((40, 40, 40), (1.0, 1.0, 1.0), tuple(CENTRE - 19.5), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return s, grid, field, _ball(grid, RADIUS), _ball(phase_grid, s * RADIUS)


def test_volume_excursion_and_displacement_of_a_uniform_scaling(scaled) -> None:
    s, grid, field, ref_mask, phase_mask = scaled
    lungs = sitk.GetArrayViewFromImage(ref_mask) != 0
    voxel_ml = np.prod(grid.spacing) / 1000.0
    row = phase_motion(field, ref_mask, phase_mask, index=3, phase="T30")
    assert row.lung_volume_jacobian_ml == pytest.approx(s ** 3 * lungs.sum() * voxel_ml, rel=1e-5)  # det J = s^3
    ball_ml = 4 / 3 * math.pi * RADIUS ** 3 / 1000.0
    assert row.lung_volume_jacobian_ml == pytest.approx(s ** 3 * ball_ml, rel=0.03)
    assert row.lung_volume_mask_ml == pytest.approx(s ** 3 * ball_ml, rel=0.03)
    assert row.lung_dice > 0.95  # on 2 mm voxels, the border of a 14 mm ball is a few per cent of it
    # |u| = (s - 1) |x - c|: the mean over a ball is 3/4 R, the max R
    assert row.displacement_mean_mm == pytest.approx((s - 1) * 0.75 * RADIUS, rel=0.03)
    assert row.displacement_max_mm == pytest.approx((s - 1) * RADIUS, rel=0.03)
    # the lung base is the lowest cap in LPS z (not along an index axis of this oblique grid)
    _, below = _cap(RADIUS, BASE_FRACTION)
    assert row.si_excursion_mm == pytest.approx(-(s - 1) * below, rel=0.05)
    assert row.folding_percent == 0.0


def test_landmarks_moved_by_the_field_have_no_error(scaled) -> None:
    s, grid, field, ref_mask, _ = scaled
    ref_points = CENTRE + np.array([[5.0, 0.0, 0.0], [0.0, -6.0, 2.0], [-3.0, 4.0, -7.0]])
    phase_points = CENTRE + s * (ref_points - CENTRE)
    row = phase_motion(field, ref_mask, landmarks=(ref_points, phase_points))
    assert row.landmarks == 3 and row.tre_mean_mm < 1e-4
    assert row.tre_before_mm == pytest.approx((s - 1) * np.linalg.norm(ref_points - CENTRE, axis=1).mean(), rel=1e-9)
    assert np.allclose(row.trajectory["registered"], phase_points, atol=1e-4)


def test_a_mask_off_the_field_grid_is_refused(scaled) -> None:
    _, _, field, _, phase_mask = scaled
    with pytest.raises(ValueError, match="reference lung mask .* is not on the grid"):
        phase_motion(field, phase_mask)


def _rows(volumes, excursions=None, quality_ok=None) -> list[PhaseMotion]:
    excursions = excursions if excursions is not None else [0.0] * len(volumes)
    return [PhaseMotion(index=i, phase=f"T{10 * i:02d}", reference=i == 0, lung_volume_jacobian_ml=v,
                        lung_volume_mask_ml=v, lung_dice=0.98, displacement_mean_mm=1.0, displacement_p95_mm=2.0,
                        displacement_max_mm=3.0, si_excursion_mm=e, folding_percent=0.0,
                        quality_ok=None if quality_ok is None else quality_ok[i], quality_ncc=0.9)
            for i, (v, e) in enumerate(zip(volumes, excursions))]


BREATHING = [3000 - 250 * (1 - math.cos(2 * math.pi * k / 10)) / 2 for k in range(10)]


def test_a_smooth_breathing_cycle_flags_nothing_and_finds_inhale_and_exhale() -> None:
    summary = summarize_series(_rows(BREATHING, [-8 * (1 - math.cos(2 * math.pi * k / 10)) / 2 for k in range(10)]))
    assert summary.flagged == {}
    assert (summary.end_inhale, summary.end_exhale) == ("T00", "T50")


def test_a_phase_that_jumps_is_flagged() -> None:
    volumes = list(BREATHING)
    volumes[6] -= 400.0  # an artefact phase: its lungs "shrink" far below its neighbours'
    excursions = [0.0] * 10
    excursions[3] = 9.0
    flags = flag_phases(_rows(volumes, excursions))
    assert sorted(flags) == ["T30", "T60"]
    assert "lung volume jumps by -" in flags["T60"] and "lung base excursion jumps by +" in flags["T30"]
    summary = summarize_series(_rows(volumes, excursions))  # the artefact is not the end-exhale phase
    assert (summary.end_inhale, summary.end_exhale) == ("T00", "T50") and summary.rows[6].flagged


HALF = [3000 - 500 * (1 - math.cos(math.pi * k / 5)) / 2 for k in range(6)]
"""DIR-LAB's T00..T50: end-inhale to end-exhale, half a breathing cycle (the lungs lose 500 ml)."""
HALF_SI = [-16 * (1 - math.cos(math.pi * k / 5)) / 2 for k in range(6)]


def test_a_half_cycle_is_not_closed_into_a_loop() -> None:
    summary = summarize_series(_rows(HALF, HALF_SI))
    assert summary.flagged == {} and (summary.end_inhale, summary.end_exhale) == ("T00", "T50")
    assert "T50" in flag_phases(_rows(HALF, HALF_SI), cyclic=True)  # its neighbour across the loop is T00


@pytest.mark.parametrize("k", [1, 2, 5])
def test_a_jump_in_a_half_cycle_is_flagged_at_that_phase_only(k) -> None:
    volumes = list(HALF)
    volumes[k] -= 400.0
    flags = flag_phases(_rows(volumes, HALF_SI))
    assert list(flags) == [f"T{10 * k:02d}"] and "lung volume jumps by -" in flags[f"T{10 * k:02d}"]


def test_a_failed_quality_check_or_a_poor_lung_dice_is_flagged() -> None:
    rows = _rows(BREATHING[:3], quality_ok=[None, False, True])
    rows[2].lung_dice = 0.6
    flags = flag_phases(rows)
    assert "quality check failed" in flags["T10"] and "lung Dice 0.60" in flags["T20"] and "T00" not in flags


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_the_plot_is_written(tmp_path, scaled) -> None:
    rows = _rows(BREATHING)
    rows[4].flagged = True
    rows[2].tre_mean_mm, rows[2].tre_before_mm, rows[2].tre_p95_mm = 1.0, 3.0, 2.0
    for r in rows:
        r.trajectory = {"true": [[0.0, 0.0, r.index]], "registered": [[0.0, 0.0, r.index + 0.5]]}
    path = motion_plot(summarize_series(rows), tmp_path / "motion.png")
    assert path.stat().st_size > 10_000 and [p.name for p in tmp_path.iterdir()] == ["motion.png"]


# ----------------------------------------------------------------------------------------------
# DIR-LAB 4D-75
# ----------------------------------------------------------------------------------------------
def _write_4d75(folder, case: int = 3, tags=FOUR_D_75_TAGS, points: int = 75) -> dict[str, np.ndarray]:
    """Files as DIR-LAB distributes them (``caseN_4D-75_T00.txt``: 1-based voxel indices x y z, tab
    separated with a trailing tab, CRLF), of points that move 2 voxels down per phase."""
    rng = np.random.default_rng(case)
    base = np.column_stack([rng.integers(40, 200, points), rng.integers(40, 200, points), rng.integers(10, 80, points)])
    written = {}
    folder.mkdir(parents=True, exist_ok=True)
    for k, tag in enumerate(tags):
        xyz = base + np.array([0, 0, 2 * k])
        (folder / f"case{case}_4D-75_{tag}.txt").write_bytes(
            "".join("\t".join(str(v) for v in row) + "\t\r\n" for row in xyz).encode())
        written[tag] = xyz
    return written


def test_4d75_files_read_in_phase_order_in_lps_mm(tmp_path) -> None:
    written = _write_4d75(tmp_path / "Case3Pack" / "Sampled4D")
    (tmp_path / "Case3Pack" / "case3_300_T00_xyz.txt").write_text("1\t1\t1\n")  # another kind of file
    points = read_dirlab_4d75(tmp_path, case="4dct:3")
    assert list(points) == list(FOUR_D_75_TAGS)
    grid = dirlab_grid("4dct:3")
    for tag, xyz in written.items():
        assert points[tag].shape == (75, 3)
        assert np.allclose(points[tag], grid.index_to_world(xyz - 1.0))
    # two voxels more along the slice index = 5 mm lower (DIR-LAB's slices run head to feet)
    assert np.allclose(points["T10"][:, 2] - points["T00"][:, 2], -5.0)


def test_4d75_files_of_the_wrong_size_or_without_a_grid_are_refused(tmp_path) -> None:
    _write_4d75(tmp_path / "short", points=74)
    with pytest.raises(ValueError, match="holds 74 points; a 4D-75 file holds 75"):
        read_dirlab_4d75(tmp_path / "short", case="4dct:3")
    _write_4d75(tmp_path / "ok")
    with pytest.raises(ValueError, match="give the image grid or the DIR-LAB case"):
        read_dirlab_4d75(tmp_path / "ok")
    _write_4d75(tmp_path / "ok", case=4)
    with pytest.raises(ValueError, match=r"cases \[3, 4\]; name the case"):
        find_dirlab_4d75_files(tmp_path / "ok")
    assert sorted(find_dirlab_4d75_files(tmp_path / "ok", case="4dct:4")) == list(FOUR_D_75_TAGS)
    _write_4d75(tmp_path / "one", tags=("T00",))
    with pytest.raises(FileNotFoundError, match="for 2 or more phases"):
        find_dirlab_4d75_files(tmp_path / "one")


def test_the_lung_jacobian_on_the_lungs_box_equals_the_whole_grid() -> None:
    from MLVIRNETLib.evaluation.motion import _lung_jacobian

    grid = ImageGrid((12, 10, 9), (0.9, 1.3, 1.7), (0.0, 0.0, 0.0), tuple(rotation_matrix((10.0, 20.0, 30.0)).ravel()))
    field = Deformation(grid, torch.randn((1, 3, *grid.shape_zyx), generator=torch.Generator().manual_seed(1)))
    whole = field.jacobian_determinant()[0, 0].numpy()
    for box in ((slice(2, 6), slice(3, 7), slice(4, 9)), (slice(0, 9), slice(0, 3), slice(10, 12))):  # inside; at borders
        lungs = np.zeros(grid.shape_zyx, dtype=bool)
        lungs[box] = True
        lungs[box[0].start, box[1].start, box[2].start] = False
        np.testing.assert_allclose(_lung_jacobian(field, lungs), whole[lungs], rtol=0, atol=1e-6)
