"""Instance optimisation (variational multilevel refinement) on real CT on an oblique grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import rotation_matrix

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.progress import Progress, RegistrationCancelled
from MLVIRNETLib.paths import bundled_ct_path
from MLVIRNETLib.preprocessing.lungmask import segment_lungs
from MLVIRNETLib.preprocessing.pair import PreprocessOptions, preprocess_pair
from MLVIRNETLib.registration.refine import RefineOptions, refine
from MLVIRNETLib.simulation.breathing import make_synthetic_pair, random_smooth_deformation, sample_landmarks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (32, 32, 40)


def _oblique_ct() -> sitk.Image:
    """The bundled CT on an oblique, anisotropic 3.2 x 2.8 x 3.6 mm grid with a non-zero origin."""
    full = sitk.ReadImage(str(bundled_ct_path()))
    ref = ImageGrid.from_sitk(full)
    centre = ref.index_to_world((np.asarray(ref.size) - 1) / 2.0)
    spacing = np.array([3.2, 2.8, 3.6])
    size = np.round((ref.extent - 24.0) / spacing).astype(int)
    d = rotation_matrix((4.0, -6.0, 7.0))
    origin = centre - d @ ((size - 1) / 2.0 * spacing)
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(full, sitk.sitkFloat32), 1.3)
    return sitk.Resample(smooth, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, tuple(origin),
                         tuple(spacing), tuple(d.ravel()), -1024.0, sitk.sitkFloat32)


@pytest.fixture(scope="module")
def pair():
    fixed = _oblique_ct()
    grid = ImageGrid.from_sitk(fixed)
    truth = random_smooth_deformation(grid, max_mm=6.0, smoothness_mm=30.0, seed=4)
    moving, _ = make_synthetic_pair(fixed, truth)
    pp = preprocess_pair(fixed, moving, options=PreprocessOptions(network_size=SIZE, crop_to_lungs=False))
    # evaluation points: distinctive points inside the lungs (elsewhere a random field is invisible)
    pts = torch.as_tensor(sample_landmarks(fixed, segment_lungs(fixed), n=100, border_mm=8.0), dtype=torch.float32)
    return pp, truth, pts


def _error(d: Deformation, truth: Deformation, pts: torch.Tensor) -> float:
    return float((d.map_points(pts) - truth.map_points(pts)).norm(dim=-1).mean())


@pytest.mark.parametrize(
    "optimizer,iterations,factors,ratio",
    [("lbfgs", 30, (4, 2, 1), 0.45), ("adam", 30, (4, 2, 1), 0.65)],
)
def test_refine_recovers_a_smooth_deformation(pair, optimizer: str, iterations: int, factors, ratio: float) -> None:
    pp, truth, pts = pair
    initial = _error(Deformation.identity(pp.grid), truth, pts)
    opts = RefineOptions(iterations=iterations, level_factors=factors, optimizer=optimizer, alpha=100.0)
    result = refine(pp.fixed, pp.moving, pp.grid, options=opts)
    assert result.deformation.grid == pp.grid
    assert [lv.grid.size for lv in result.levels] == [tuple(s // f for s in SIZE) for f in factors]
    err = _error(result.deformation, truth, pts)
    assert initial > 2.5
    assert err < ratio * initial, f"{optimizer}: error {err:.2f} mm from {initial:.2f} mm"
    if optimizer == "lbfgs":
        assert float(result.deformation.folding_fraction()) < 0.01


def test_identical_images_give_a_near_zero_field(pair) -> None:
    pp, _, _ = pair
    result = refine(pp.fixed, pp.fixed, pp.grid, options=RefineOptions(iterations=20))
    assert float(result.deformation.displacement.abs().max()) < 0.3


def test_zero_iterations_return_the_initial_deformation(pair) -> None:
    pp, truth, pts = pair
    start = truth.on_grid(pp.grid.resized((16, 16, 20)))
    result = refine(pp.fixed, pp.moving, pp.grid, initial=start, options=RefineOptions(iterations=0))
    assert result.deformation.grid == pp.grid and result.levels == []
    torch.testing.assert_close(result.deformation.displacement, start.on_grid(pp.grid).displacement)


def test_refine_starts_from_the_initial_deformation(pair) -> None:
    pp, truth, pts = pair
    opts = RefineOptions(iterations=3, level_factors=(2,))
    from_truth = refine(pp.fixed, pp.moving, pp.grid, initial=truth, options=opts)
    from_zero = refine(pp.fixed, pp.moving, pp.grid, options=opts)
    assert _error(from_truth.deformation, truth, pts) < 0.5 * _error(from_zero.deformation, truth, pts)


def test_progress_and_cancel(pair) -> None:
    pp, _, _ = pair
    seen: list[tuple[float, str]] = []
    refine(pp.fixed, pp.moving, pp.grid, options=RefineOptions(iterations=(12, 5)), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in fractions)
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(RegistrationCancelled):
        refine(pp.fixed, pp.moving, pp.grid, options=RefineOptions(iterations=20), cancel=cancel)


def test_bad_options_and_inputs(pair) -> None:
    pp, _, _ = pair
    with pytest.raises(ValueError, match="powers of two"):
        RefineOptions(level_factors=(3,))
    with pytest.raises(ValueError, match="optimizer"):
        RefineOptions(optimizer="sgd")
    with pytest.raises(ValueError, match="one entry per level"):
        RefineOptions(iterations=(1, 2, 3), level_factors=(4, 2))
    with pytest.raises(ValueError, match="alpha"):
        RefineOptions(alpha=-1.0)
    with pytest.raises(ValueError, match="shape"):
        refine(pp.fixed, pp.moving[..., :-1], pp.grid)
    odd = ImageGrid((30, 30, 30), (2.0, 2.0, 2.0))
    img = torch.zeros((1, 1, 30, 30, 30))
    with pytest.raises(ValueError, match="divisible"):
        refine(img, img, odd, options=RefineOptions(iterations=5, level_factors=(4,)))


def _count_evaluations(monkeypatch) -> dict[str, int]:
    """Count the evaluations of the objective (all, and those with gradients) from now on."""
    from MLVIRNETLib.registration import refine as refine_module

    counts = {"all": 0, "grad": 0}

    def counted(original):
        def counting(*args, **kwargs):
            counts["all"] += 1
            counts["grad"] += int(torch.is_grad_enabled())
            return original(*args, **kwargs)

        return counting

    # both objectives: the hand-written one (no mask term) and the autograd one
    for name in ("registration_loss", "fused_level_loss"):
        monkeypatch.setattr(refine_module, name, counted(getattr(refine_module, name)))
    return counts


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_cancel_takes_effect_during_the_optimisation(pair, monkeypatch, optimizer: str) -> None:
    """A cancel request stops the refinement before the next evaluation of the objective."""
    pp, _, _ = pair
    evaluations = _count_evaluations(monkeypatch)
    requested_at: list[int] = []
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        if calls["n"] >= 9:
            requested_at.append(evaluations["all"])
            return True
        return False

    opts = RefineOptions(iterations=(20, 10), level_factors=(4, 2), optimizer=optimizer)
    with pytest.raises(RegistrationCancelled):
        refine(pp.fixed, pp.moving, pp.grid, options=opts, cancel=cancel)
    assert requested_at and requested_at[0] > 2, "the cancel request came before the optimisation"
    assert evaluations["all"] - requested_at[0] <= 1


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_progress_is_reported_at_every_iteration(pair, monkeypatch, optimizer: str) -> None:
    pp, _, _ = pair
    evaluations = _count_evaluations(monkeypatch)
    seen: list[tuple[float, str]] = []
    prog = Progress(lambda f, m: seen.append((f, m)), None, min_interval_s=0.0)
    opts = RefineOptions(iterations=(4, 3), level_factors=(4, 2), optimizer=optimizer)
    refine(pp.fixed, pp.moving, pp.grid, options=opts, progress=prog)
    assert seen[-1] == (1.0, "refinement done")
    iteration_reports = [m for _, m in seen[:-1]]
    assert all(m.startswith(("refine 1/4 resolution, ", "refine 1/2 resolution, ")) for m in iteration_reports)
    iteration_reports = [m.split(" mm: ")[0].split(",")[0] + ": " + m.split(" mm: ")[1] for m in iteration_reports]
    if optimizer == "adam":
        assert iteration_reports == [f"refine 1/4 resolution: iteration {k}/4" for k in range(1, 5)] + [
            f"refine 1/2 resolution: iteration {k}/3" for k in range(1, 4)
        ]
    else:  # one report per closure evaluation: all evaluations with gradients but each level's first
        assert len(iteration_reports) == evaluations["grad"] - 2 >= 7
        assert all(", loss " in m for m in iteration_reports)
    fractions = [f for f, _ in seen]
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))


def test_a_callers_progress_stage_is_used_as_it_is(pair) -> None:
    """``register`` passes its ``Progress`` with the refinement stage mapped to a sub-range."""
    pp, _, _ = pair
    seen: list[float] = []
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return False

    prog = Progress(lambda f, m: seen.append(f), cancel, min_interval_s=0.0)
    prog.stage(0.5, 0.25, "refinement")
    refine(pp.fixed, pp.moving, pp.grid, options=RefineOptions(iterations=(2, 2), optimizer="adam"), progress=prog)
    assert seen[0] == 0.5 and seen[-1] == 0.75 and all(0.5 <= f <= 0.75 for f in seen)
    assert len(seen) == 1 + 4 + 1 and calls["n"] >= 2 * 4  # the stage's cancel is polled too


def test_the_smoothing_preconditioner_is_the_fourier_multiplier_it_describes() -> None:
    """On sizes that are multiples of 8 (no padding) ``P`` keeps a constant and scales one Fourier
    mode by ``1 / (1 + rho^4 l^2)``, ``l`` the anisotropic Laplacian's symbol in smallest-voxel
    units; on any size (padded for the FFT and cropped back) it is symmetric positive definite."""
    from MLVIRNETLib.registration.refine import smoothing_preconditioner

    spacing, rho = (0.8, 1.2, 2.0), 2.0  # (sx, sy, sz) mm
    g = torch.Generator().manual_seed(0)
    for odd in ((9, 13, 11), (10, 12, 14)):
        p = smoothing_preconditioner(odd, spacing, rho)
        a, b = torch.randn((2, 3) + odd, generator=g), torch.randn((2, 3) + odd, generator=g)
        assert p(a).shape == a.shape
        assert float((a * p(b)).sum()) == pytest.approx(float((p(a) * b).sum()), rel=1e-5)
        assert float((a * p(a)).sum()) > 0
    shape = (8, 16, 24)  # (D, H, W)
    p = smoothing_preconditioner(shape, spacing, rho)
    const = torch.full((1, 3) + shape, 1.7, dtype=torch.float32)
    torch.testing.assert_close(p(const), const)
    kz, ky, kx = 3, 2, 5
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    mode = torch.cos(2 * np.pi * (kz * z / shape[0] + ky * y / shape[1] + kx * x / shape[2]))
    h = min(spacing)
    lap = sum((h / s) ** 2 * (2 * np.cos(2 * np.pi * k / n) - 2)
              for k, n, s in ((kx, shape[2], spacing[0]), (ky, shape[1], spacing[1]), (kz, shape[0], spacing[2])))
    expected = mode / (1 + rho ** 4 * lap ** 2)
    torch.testing.assert_close(p(mode[None, None].float())[0, 0].double(), expected, atol=1e-5, rtol=0)


def test_preconditioned_refinement_recovers_more_in_the_same_iterations(pair) -> None:
    """On the oblique anisotropic pair, with few iterations per level: the preconditioned L-BFGS
    lands closer to the true deformation than the plain one it replaces, and does not fold."""
    pp, truth, pts = pair
    errors = {}
    for rho in (0.0, 2.0):
        opts = RefineOptions(iterations=(15, 8), level_factors=(4, 2), smoothing_voxels=rho)
        result = refine(pp.fixed, pp.moving, pp.grid, options=opts)
        errors[rho] = _error(result.deformation, truth, pts)
        assert float(result.deformation.folding_fraction()) < 0.01
    assert errors[2.0] < errors[0.0], errors


def test_smoothing_voxels_must_be_a_finite_nonnegative_number() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="smoothing_voxels"):
            RefineOptions(smoothing_voxels=bad)
