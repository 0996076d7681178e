"""Synthetic breathing deformations, deformed pairs and landmarks (world coordinates, any direction)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.deformation import jacobian_determinant
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.sampling import sample
from MLVIRNETLib.preprocessing.pair import image_to_hu_tensor
from MLVIRNETLib.simulation.breathing import (
    breathing_deformation,
    invert_deformation,
    make_synthetic_pair,
    random_smooth_deformation,
    rigid_matrix,
    sample_landmarks,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CENTRE = np.array([10.0, -20.0, 150.0])
LUNG_RADII = np.array([55.0, 45.0, 70.0])  # an ellipsoid "lung" in LPS mm


def _grid(angles=(10.0, -15.0, 20.0), flip_z: bool = False) -> ImageGrid:
    """An oblique, anisotropic grid (about 4 mm voxels) covering the ellipsoid with margin."""
    g = oblique_grid(size=(40, 36, 34), spacing=(4.0, 3.5, 5.0), origin=(0.0, 0.0, 0.0), angles=angles, flip_z=flip_z)
    # place the grid centre at CENTRE
    centre_idx = (np.asarray(g.size) - 1) / 2.0
    origin = CENTRE - (g.index_to_world(centre_idx) - np.asarray(g.origin))
    return ImageGrid(g.size, g.spacing, tuple(origin), g.direction)


def _lung_mask(grid: ImageGrid) -> sitk.Image:
    pts = grid.world_points(dtype=torch.float64).numpy()
    inside = (((pts - CENTRE) / LUNG_RADII) ** 2).sum(axis=-1) <= 1.0
    img = sitk.GetImageFromArray(inside.astype(np.uint8))
    grid.copy_to_sitk(img)
    return img


def _phantom(grid: ImageGrid) -> sitk.Image:
    """Smooth lung-like HU image: a -850 HU ellipsoid in 40 HU tissue with bright Gaussian 'vessels'."""
    pts = grid.world_points(dtype=torch.float64).numpy()
    r = np.sqrt((((pts - CENTRE) / LUNG_RADII) ** 2).sum(axis=-1))
    lung = 1.0 / (1.0 + np.exp((r - 1.0) / 0.06))  # smooth wall, about 4 mm wide
    hu = 40.0 - 890.0 * lung
    rng = np.random.default_rng(5)
    for c in rng.uniform(-0.6, 0.6, size=(25, 3)) * LUNG_RADII + CENTRE:
        hu = hu + 800.0 * np.exp(-((pts - c) ** 2).sum(-1) / (2 * 6.0**2))
    img = sitk.GetImageFromArray(hu.astype(np.float32))
    grid.copy_to_sitk(img)
    return img


@pytest.fixture(scope="module")
def grid() -> ImageGrid:
    return _grid()


@pytest.fixture(scope="module")
def breathing(grid):
    mask = _lung_mask(grid)
    return mask, breathing_deformation(grid, mask, peak_mm=15.0, seed=3)


def test_breathing_is_invertible_with_the_requested_peak(grid, breathing) -> None:
    mask, d = breathing
    assert d.grid == grid and d.displacement.shape == (1, 3, *grid.shape_zyx)
    det = jacobian_determinant(d.displacement, grid)
    assert float(det.min()) > 0.1
    inside = torch.as_tensor(sitk.GetArrayFromImage(mask) > 0)
    mag = d.displacement[0].norm(dim=0)
    # peak defined on the internal 4 mm velocity grid; the output grid samples it trilinearly
    assert float(mag[inside].max()) == pytest.approx(15.0, rel=0.05)


def test_breathing_is_superior_inferior_at_the_base_and_small_at_the_apex(grid, breathing) -> None:
    _, d = breathing
    up = np.array([0.0, 0.0, 1.0])
    base = torch.tensor(np.array([CENTRE - 0.85 * LUNG_RADII * up]), dtype=torch.float32)
    apex = torch.tensor(np.array([CENTRE + 0.85 * LUNG_RADII * up]), dtype=torch.float32)
    u_base = d.displacement_at(base)[0, 0].numpy()
    u_apex = d.displacement_at(apex)[0, 0].numpy()
    assert u_base[2] < -8.0  # inferior (-z in LPS) at the lung base
    assert abs(u_base[2]) > 2.0 * np.hypot(u_base[0], u_base[1])  # SI dominates there
    assert np.linalg.norm(u_apex) < 0.3 * np.linalg.norm(u_base)
    # anterior (-y) motion of the anterior lung exceeds that of the posterior lung
    ant = d.displacement_at(torch.tensor(np.array([CENTRE - [0, 0.8 * LUNG_RADII[1], 0.3 * LUNG_RADII[2]]]), dtype=torch.float32))
    post = d.displacement_at(torch.tensor(np.array([CENTRE + [0, 0.8 * LUNG_RADII[1], -0.3 * LUNG_RADII[2]]]), dtype=torch.float32))
    assert float(ant[0, 0, 1]) < float(post[0, 0, 1]) - 1.0


def test_breathing_slides_along_the_chest_wall(breathing) -> None:
    """At the same height, the lung moves much more than the wall just outside it laterally."""
    _, d = breathing
    z = CENTRE[2] - 0.4 * LUNG_RADII[2]
    half = LUNG_RADII[0] * np.sqrt(1 - 0.4**2)
    inside = torch.tensor([[CENTRE[0] + 0.6 * half, CENTRE[1], z]], dtype=torch.float32)
    outside = torch.tensor([[CENTRE[0] + half + 25.0, CENTRE[1], z]], dtype=torch.float32)
    m_in = float(d.displacement_at(inside).norm())
    m_out = float(d.displacement_at(outside).norm())
    assert m_out < 0.5 * m_in


def test_breathing_uses_world_coordinates_whatever_the_direction() -> None:
    """The same lungs on a grid with another (flipped) direction give the same motion in LPS.

    (The small random component is seeded noise on the internal velocity grid, so it depends on
    the grid: it is switched off here.)
    """
    grid = _grid()
    d = breathing_deformation(grid, _lung_mask(grid), peak_mm=15.0, seed=3, random_fraction=0.0)
    other = _grid(angles=(-20.0, 5.0, 150.0), flip_z=True)
    d2 = breathing_deformation(other, _lung_mask(other), peak_mm=15.0, seed=3, random_fraction=0.0)
    rng = np.random.default_rng(1)
    pts = torch.as_tensor(CENTRE + rng.uniform(-0.7, 0.7, size=(200, 3)) * LUNG_RADII, dtype=torch.float32)
    diff = (d.displacement_at(pts) - d2.displacement_at(pts)).norm(dim=-1)
    assert float(d.displacement_at(pts).norm(dim=-1).mean()) > 4.0
    assert float(diff.mean()) < 0.1
    assert float(diff.max()) < 0.5


def test_breathing_is_seeded(grid) -> None:
    mask = _lung_mask(grid)
    a = breathing_deformation(grid, mask, peak_mm=10.0, seed=7)
    b = breathing_deformation(grid, mask, peak_mm=10.0, seed=7)
    c = breathing_deformation(grid, mask, peak_mm=10.0, seed=8)
    torch.testing.assert_close(a.displacement, b.displacement)
    assert float((a.displacement - c.displacement).abs().max()) > 0.1
    with pytest.raises(ValueError, match="empty"):
        breathing_deformation(grid, _lung_mask(grid) * 0, peak_mm=10.0)


def test_random_smooth_deformation(grid) -> None:
    d = random_smooth_deformation(grid, max_mm=6.0, smoothness_mm=25.0, seed=2)
    mag = d.displacement[0].norm(dim=0)
    assert float(mag.max()) == pytest.approx(6.0, rel=0.05)
    assert float(jacobian_determinant(d.displacement, grid).min()) > 0
    torch.testing.assert_close(d.displacement, random_smooth_deformation(grid, 6.0, 25.0, seed=2).displacement)


def test_invert_deformation(grid, breathing) -> None:
    _, d = breathing
    inv = invert_deformation(d)
    rng = np.random.default_rng(4)
    pts = torch.as_tensor(CENTRE + rng.uniform(-0.6, 0.6, size=(100, 3)) * LUNG_RADII, dtype=torch.float32)
    back = inv.map_points(d.map_points(pts))[0]
    assert float((back - pts).norm(dim=-1).max()) < 0.3


def test_rigid_matrix() -> None:
    c = np.array([5.0, -3.0, 100.0])
    a = rigid_matrix((3.0, -4.0, 5.0), (10.0, 0.0, -5.0), c)
    np.testing.assert_allclose(a[:3, :3] @ a[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.det(a[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(a[:3, :3] @ c + a[:3, 3], c + [10.0, 0.0, -5.0], atol=1e-9)


def test_make_synthetic_pair_has_the_deformation_as_ground_truth(grid, breathing) -> None:
    mask, d = breathing
    fixed = _phantom(grid)
    moving, gt = make_synthetic_pair(fixed, d, mask, density_change=False)
    assert gt is d
    assert ImageGrid.from_sitk(moving).is_close(grid)
    f, _ = image_to_hu_tensor(fixed)
    m, _ = image_to_hu_tensor(moving)
    warped = d.warp(m, grid)
    lung = torch.as_tensor(sitk.GetArrayFromImage(mask) > 0)[None, None]
    err = (warped - f).abs()[lung].mean()
    before = (m - f).abs()[lung].mean()
    assert float(err) < 0.35 * float(before)


def test_make_synthetic_pair_density_noise_and_other_grid(grid, breathing) -> None:
    mask, d = breathing
    fixed = _phantom(grid)
    plain, _ = make_synthetic_pair(fixed, d, mask, density_change=False)
    dense, _ = make_synthetic_pair(fixed, d, mask, density_change=True)
    # mass conservation: the lung's (HU + 1000) integral is about the same in both images
    f, _ = image_to_hu_tensor(fixed)
    md, _ = image_to_hu_tensor(dense)
    mp, _ = image_to_hu_tensor(plain)
    lung_f = (f < -300).float()
    mass_f = float(((f + 1000) * lung_f).sum())
    mass_d = float(((md + 1000) * (md < -300).float()).sum())
    mass_p = float(((mp + 1000) * (mp < -300).float()).sum())
    assert abs(mass_d - mass_f) < 0.5 * abs(mass_p - mass_f)
    noisy, _ = make_synthetic_pair(fixed, d, mask, density_change=False, noise_hu=20.0, seed=1)
    mn, _ = image_to_hu_tensor(noisy)
    assert float((mn - mp).std()) == pytest.approx(20.0, rel=0.05)
    # a moving image on another (smaller, coarser) grid is the same image there
    other = grid.cropped((5, 4, 3), (35, 30, 30)).resized((20, 17, 18))
    small, _ = make_synthetic_pair(fixed, d, mask, density_change=False, moving_grid=other)
    assert ImageGrid.from_sitk(small).is_close(other)
    ms, _ = image_to_hu_tensor(small)
    ref = sample(mp, grid, other.world_points())
    assert float((ref - ms).abs().median()) < 30.0


def test_sample_landmarks(grid) -> None:
    mask = _lung_mask(grid)
    img = _phantom(grid)
    pts = sample_landmarks(img, mask, n=30, seed=0, erosion_mm=5.0, min_distance_mm=10.0, border_mm=10.0)
    assert pts.shape[1] == 3 and 5 <= pts.shape[0] <= 30
    r = (((pts - CENTRE) / LUNG_RADII) ** 2).sum(axis=-1)
    assert np.all(r < 1.0)
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
    assert dist.min() >= 10.0
    np.testing.assert_allclose(pts, sample_landmarks(img, mask, n=30, seed=0, erosion_mm=5.0, min_distance_mm=10.0))
    with pytest.raises(ValueError, match="no lung voxels"):
        sample_landmarks(img, mask, erosion_mm=200.0)
