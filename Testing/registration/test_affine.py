"""Affine pre-alignment: matrices as deformations, and recovery of a known rigid motion on real CT."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import oblique_grid, rotation_matrix

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.progress import RegistrationCancelled
from MLVIRNETLib.paths import bundled_ct_path
from MLVIRNETLib.preprocessing.pair import image_to_hu_tensor
from MLVIRNETLib.registration.affine import AffineOptions, affine_register, affine_to_deformation, compose_affine
from MLVIRNETLib.simulation.breathing import random_smooth_deformation, rigid_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _oblique_ct(spacing=(3.0, 2.6, 3.4), angles=(5.0, -4.0, 8.0), shrink_mm=(10.0, 10.0, 12.0)) -> sitk.Image:
    """The bundled CT resampled (anti-aliased) onto an oblique, anisotropic grid inside its field of view."""
    full = sitk.ReadImage(str(bundled_ct_path()))
    ref = ImageGrid.from_sitk(full)
    centre = ref.index_to_world((np.asarray(ref.size) - 1) / 2.0)
    extent = ref.extent - 2 * np.asarray(shrink_mm)
    size = np.round(extent / np.asarray(spacing)).astype(int)
    d = rotation_matrix(angles)
    origin = centre - d @ ((size - 1) / 2.0 * np.asarray(spacing))
    grid = ImageGrid(tuple(size), spacing, tuple(origin), tuple(d.ravel()))
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(full, sitk.sitkFloat32), 1.2)
    return sitk.Resample(smooth, list(grid.size), sitk.Transform(), sitk.sitkLinear, grid.origin, grid.spacing,
                         grid.direction, -1024.0, sitk.sitkFloat32)


def _moving_by_matrix(image: sitk.Image, a: np.ndarray, grid: ImageGrid) -> sitk.Image:
    """``M(z) = I(A^-1 z)`` on ``grid``, so that ``x_moving = A x_fixed``."""
    inv = np.linalg.inv(a)
    t = sitk.AffineTransform(3)
    t.SetMatrix(inv[:3, :3].ravel().tolist())
    t.SetTranslation(inv[:3, 3].tolist())
    return sitk.Resample(image, list(grid.size), t, sitk.sitkLinear, grid.origin, grid.spacing, grid.direction,
                         -1024.0, sitk.sitkFloat32)


def test_affine_to_deformation_and_compose() -> None:
    grid = oblique_grid()
    a = rigid_matrix((4.0, -3.0, 6.0), (5.0, -2.0, 7.0), center_mm=(1.0, 2.0, 3.0))
    a[:3, :3] *= 1.05
    d = affine_to_deformation(a, grid, dtype=torch.float64)
    pts = grid.world_points(dtype=torch.float64)
    expected = pts @ torch.as_tensor(a[:3, :3].T) + torch.as_tensor(a[:3, 3])
    torch.testing.assert_close(d.points()[0], expected)
    inner = random_smooth_deformation(grid, max_mm=3.0, smoothness_mm=10.0, seed=1).to(torch.float64)
    both = compose_affine(a, inner)
    torch.testing.assert_close(both.points()[0], inner.points()[0] @ torch.as_tensor(a[:3, :3].T) + torch.as_tensor(a[:3, 3]))
    with pytest.raises(ValueError, match="4x4"):
        affine_to_deformation(np.eye(3), grid)


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    return _oblique_ct(shrink_mm=(25.0, 25.0, 25.0))


def test_affine_register_recovers_a_rigid_offset_with_another_field_of_view(ct) -> None:
    grid = ImageGrid.from_sitk(ct)
    centre = grid.index_to_world((np.asarray(grid.size) - 1) / 2.0)
    truth = rigid_matrix((2.0, -3.0, 3.5), (12.0, -10.0, 12.0), centre)  # 19.6 mm, 5 degrees
    # the moving scan has its own oblique grid and a larger field of view (inside the bundled
    # CT, so every voxel holds anatomy); the fixed scan is a smaller crop
    mgrid = ImageGrid.from_sitk(_oblique_ct(spacing=(2.8, 3.1, 3.0), angles=(-3.0, 2.0, -5.0), shrink_mm=(4, 4, 4)))
    full = sitk.ReadImage(str(bundled_ct_path()))
    moving = _moving_by_matrix(sitk.SmoothingRecursiveGaussian(sitk.Cast(full, sitk.sitkFloat32), 1.2), truth, mgrid)
    f, fg = image_to_hu_tensor(ct)
    m, mg = image_to_hu_tensor(moving)
    a = affine_register(f, fg, m, mg, options=AffineOptions())
    rng = np.random.default_rng(0)
    pts = grid.index_to_world(rng.uniform(0.25, 0.75, size=(200, 3)) * (np.asarray(grid.size) - 1))
    err = np.linalg.norm(pts @ a[:3, :3].T + a[:3, 3] - (pts @ truth[:3, :3].T + truth[:3, 3]), axis=1)
    initial = np.linalg.norm(pts @ truth[:3, :3].T + truth[:3, 3] - pts, axis=1)
    assert initial.mean() > 15.0
    assert err.mean() < 1.0, f"mean error {err.mean():.2f} mm"


def test_affine_register_identity_and_cancel(ct) -> None:
    f, fg = image_to_hu_tensor(ct)
    opts = AffineOptions(levels_mm=(8.0,), rigid_iterations=10, affine_iterations=5)
    calls: list[float] = []
    a = affine_register(f, fg, f, fg, options=opts, progress=lambda p, msg: calls.append(p))
    grid = ImageGrid.from_sitk(ct)
    corners = grid.index_to_world(np.array([[0, 0, 0], np.asarray(grid.size) - 1], dtype=float))
    moved = corners @ a[:3, :3].T + a[:3, 3]
    assert np.abs(moved - corners).max() < 0.5
    assert calls and calls[-1] == 1.0 and all(0.0 <= c <= 1.0 for c in calls)
    assert all(b >= a_ for a_, b in zip(calls, calls[1:]))
    with pytest.raises(RegistrationCancelled):
        affine_register(f, fg, f, fg, options=opts, cancel=lambda: True)


def test_affine_options_are_validated() -> None:
    with pytest.raises(ValueError, match="levels_mm"):
        AffineOptions(levels_mm=())
    with pytest.raises(ValueError, match="optimizer"):
        AffineOptions(optimizer="sgd")
