"""Affine pre-alignment: matrices as deformations, and recovery of a known rigid motion on real CT."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid, rotation_matrix

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.progress import Progress, RegistrationCancelled
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


def _count_evaluations(monkeypatch) -> dict[str, int]:
    """Count the evaluations of the affine objective (all, and those with gradients) from now on."""
    from MLVIRNETLib.registration import affine as affine_module

    counts = {"all": 0, "grad": 0}
    original = affine_module._loss

    def counting(*args, **kwargs):
        counts["all"] += 1
        counts["grad"] += int(torch.is_grad_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(affine_module, "_loss", counting)
    return counts


def _shifted(ct: sitk.Image) -> sitk.Image:
    grid = ImageGrid.from_sitk(ct)
    centre = grid.index_to_world((np.asarray(grid.size) - 1) / 2.0)
    return _moving_by_matrix(ct, rigid_matrix((1.0, -2.0, 1.5), (4.0, -3.0, 5.0), centre), grid)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_cancel_takes_effect_during_the_affine_optimisation(ct, monkeypatch, optimizer: str) -> None:
    """A cancel request stops the pre-alignment before the next evaluation of the objective."""
    f, fg = image_to_hu_tensor(ct)
    m, mg = image_to_hu_tensor(_shifted(ct))
    evaluations = _count_evaluations(monkeypatch)
    requested_at: list[int] = []
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        if calls["n"] >= 12:
            requested_at.append(evaluations["all"])
            return True
        return False

    opts = AffineOptions(levels_mm=(8.0,), rigid_iterations=20, affine_iterations=10, optimizer=optimizer)
    with pytest.raises(RegistrationCancelled):
        affine_register(f, fg, m, mg, options=opts, cancel=cancel)
    assert requested_at and requested_at[0] > 2, "the cancel request came before the optimisation"
    assert evaluations["all"] - requested_at[0] <= 1


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_affine_progress_is_reported_at_every_iteration(ct, monkeypatch, optimizer: str) -> None:
    f, fg = image_to_hu_tensor(ct)
    m, mg = image_to_hu_tensor(_shifted(ct))
    evaluations = _count_evaluations(monkeypatch)
    seen: list[tuple[float, str]] = []
    prog = Progress(lambda p, msg: seen.append((p, msg)), None, min_interval_s=0.0)
    opts = AffineOptions(levels_mm=(8.0, 6.0), rigid_iterations=4, affine_iterations=3, optimizer=optimizer)
    affine_register(f, fg, m, mg, options=opts, progress=prog)
    assert seen[-1] == (1.0, "affine pre-alignment done")
    fit_reports = [msg for _, msg in seen if msg.startswith(("affine start", "affine rigid", "affine affine"))]
    if optimizer == "adam":  # every iteration of every fit: 2 per starting point, then 4 rigid + 3 affine per level
        for stage, n in (("rigid", 4), ("affine", 3)):
            assert [fit_reports.count(f"affine {stage} at {mm} mm") for mm in (8, 6)] == [n, n]
        assert fit_reports.count("affine start at 8 mm") in (2, 4)
    # one report per evaluation with gradients (Adam: per iteration; L-BFGS: per closure call)
    assert len(fit_reports) == evaluations["grad"] >= 2 + 2 * (4 + 3)
    fractions = [p for p, _ in seen]
    assert all(0.0 <= p <= 1.0 for p in fractions) and all(b >= a for a, b in zip(fractions, fractions[1:]))
