"""Deformations: evaluation, composition, warping, prolongation, Jacobians (oblique anisotropic grids)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.deformation import Deformation, compose_all, folding_fraction, jacobian_determinant
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.sampling import to_batch_tensor

F64 = torch.float64


def smooth_field(grid: ImageGrid, amplitude: float, phase: float = 0.0):
    """A smooth analytic displacement (mm) as a function of LPS points (float64 tensors)."""
    c = torch.as_tensor(grid.index_to_world((np.asarray(grid.size) - 1) / 2), dtype=F64)
    scale = float(np.max(grid.extent))

    def fn(x: torch.Tensor) -> torch.Tensor:
        r = (x - c) / scale
        return amplitude * torch.stack(
            [torch.sin(2 * r[..., 1] + phase), torch.cos(3 * r[..., 2] - phase) - 1, torch.sin(r[..., 0] + r[..., 1])], dim=-1
        )

    return fn


def affine_field(a: np.ndarray, t: np.ndarray):
    """u(x) = (A - I) x + t: the displacement of the affine map x -> A x + t."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x @ torch.as_tensor(a - np.eye(3)).T + torch.as_tensor(t)

    return fn


@pytest.fixture
def fine() -> ImageGrid:
    return oblique_grid(size=(24, 20, 16), spacing=(1.2, 0.9, 2.0))


def test_identity_maps_points_to_themselves(fine: ImageGrid) -> None:
    d = Deformation.identity(fine, batch=2, dtype=F64)
    p = torch.randn(2, 7, 3, dtype=F64) * 10
    torch.testing.assert_close(d.map_points(p), p)
    img = torch.randn(2, 1, *fine.shape_zyx, dtype=F64)
    torch.testing.assert_close(d.warp(img, fine), img, atol=1e-10, rtol=0)


def test_map_points_of_affine_field_is_exact(fine: ImageGrid) -> None:
    rng = np.random.default_rng(3)
    a = np.eye(3) + 0.03 * rng.normal(size=(3, 3))
    t = np.array([2.0, -1.0, 0.5])
    d = Deformation.from_function(fine, affine_field(a, t), dtype=F64)
    # points inside the grid: trilinear interpolation of an affine field is exact
    idx = torch.as_tensor(rng.uniform(0, np.asarray(fine.size) - 1, size=(50, 3)))
    x = fine.index_to_world(idx)
    expected = x @ torch.as_tensor(a).T + torch.as_tensor(t)
    torch.testing.assert_close(d.map_points(x)[0], expected, atol=1e-9, rtol=0)


def test_composition_is_function_composition(fine: ImageGrid) -> None:
    a = Deformation.from_function(fine, smooth_field(fine, 2.0, 0.3), dtype=F64)
    b = Deformation.from_function(fine, smooth_field(fine, 1.5, -0.7), dtype=F64)
    ab = a.compose(b)
    x = fine.world_points(dtype=F64)[4:10, 4:10, 4:10].reshape(-1, 3)
    torch.testing.assert_close(ab.map_points(x)[0], a.map_points(b.map_points(x))[0], atol=1e-3, rtol=0)
    # composing with the identity changes nothing
    ident = Deformation.identity(fine, dtype=F64)
    torch.testing.assert_close(a.compose(ident).displacement, a.displacement, atol=1e-10, rtol=0)
    torch.testing.assert_close(ident.compose(a).displacement, a.displacement, atol=1e-10, rtol=0)


def test_warp_by_composition_equals_sequential_warps(fine: ImageGrid) -> None:
    """M∘(a∘b) equals warping M by a, then warping that result by b (smooth fields, interior)."""
    rng = np.random.default_rng(4)
    arr = sitk.GetImageFromArray(rng.normal(size=fine.shape_zyx))
    fine.copy_to_sitk(arr)
    m = to_batch_tensor(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(arr, 4.0)), dtype=F64)
    a = Deformation.from_function(fine, smooth_field(fine, 1.5, 0.1), dtype=F64)
    b = Deformation.from_function(fine, smooth_field(fine, 1.0, 1.1), dtype=F64)
    direct = a.compose(b).warp(m, fine)
    sequential = b.warp(a.warp(m, fine), fine)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    err = (direct - sequential)[inner].abs().max() / m.abs().max()
    assert err < 0.02


def test_compose_all_is_exact_chain(fine: ImageGrid) -> None:
    coarse = fine.downsampled(2)
    d1 = Deformation.from_function(coarse, smooth_field(coarse, 2.0, 0.2), dtype=F64)
    d2 = Deformation.from_function(fine, smooth_field(fine, 1.0, 0.9), dtype=F64)
    total = compose_all([d1, d2])
    assert total.grid == fine
    x = fine.world_points(dtype=F64).reshape(-1, 3)
    torch.testing.assert_close(total.map_points(x)[0], d1.map_points(d2.map_points(x))[0], atol=1e-9, rtol=0)
    on_coarse = compose_all([d1, d2], grid=coarse)
    assert on_coarse.grid == coarse


def test_prolongation_reproduces_affine_field(fine: ImageGrid) -> None:
    coarse = fine.downsampled(2)
    rng = np.random.default_rng(5)
    a = np.eye(3) + 0.02 * rng.normal(size=(3, 3))
    fn = affine_field(a, np.array([1.0, 2.0, -3.0]))
    d = Deformation.from_function(coarse, fn, dtype=F64).on_grid(fine)
    expected = Deformation.from_function(fine, fn, dtype=F64).displacement
    # exact inside the coarse grid's hull of voxel centres (border extrapolates constantly)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(d.displacement[inner], expected[inner], atol=1e-9, rtol=0)


def test_jacobian_of_affine_field_is_det_a(fine: ImageGrid) -> None:
    rng = np.random.default_rng(6)
    a = np.eye(3) + 0.1 * rng.normal(size=(3, 3))
    d = Deformation.from_function(fine, affine_field(a, np.array([5.0, 0.0, 1.0])), dtype=F64)
    det = d.jacobian_determinant()
    assert det.shape == (1, 1, *fine.shape_zyx)
    torch.testing.assert_close(det, torch.full_like(det, float(np.linalg.det(a))), atol=1e-9, rtol=0)


def test_jacobian_of_quadratic_field_matches_analytic() -> None:
    grid = oblique_grid(size=(20, 18, 16), spacing=(0.8, 1.1, 1.7))
    k = 0.004

    def fn(x: torch.Tensor) -> torch.Tensor:  # u = (k x^2, 0, 0) -> det J = 1 + 2 k x
        return torch.stack([k * x[..., 0] ** 2, torch.zeros_like(x[..., 0]), torch.zeros_like(x[..., 0])], -1)

    d = Deformation.from_function(grid, fn, dtype=F64)
    x = grid.world_points(dtype=F64)
    expected = 1 + 2 * k * x[..., 0]
    inner = (slice(1, -1),) * 3
    torch.testing.assert_close(d.jacobian_determinant()[0, 0][inner], expected[inner], atol=1e-9, rtol=0)


def test_jacobian_in_slabs_equals_the_whole_field_at_once() -> None:
    """The slabs (with their halo slices) give the determinant of the gradient of the whole field,
    borders included, for depths that split unevenly."""
    from MLVIRNETLib.core.deformation import spatial_gradient

    for depth in (1, 2, 9, 17):
        grid = oblique_grid(size=(7, 6, depth), spacing=(0.8, 1.1, 1.7))
        u = torch.randn((2, 3, *grid.shape_zyx), generator=torch.Generator().manual_seed(depth), dtype=F64)
        whole = torch.linalg.det(spatial_gradient(u, grid) + torch.eye(3, dtype=F64))[:, None]
        seen = []
        got = jacobian_determinant(u, grid, progress=lambda f, m: seen.append(f))
        torch.testing.assert_close(got, whole, atol=1e-12, rtol=0)
        assert seen[-1] == 1.0 and seen == sorted(seen)


def test_folding_fraction_counts_nonpositive() -> None:
    det = torch.tensor([1.0, 0.5, 0.0, -0.2]).reshape(1, 1, 1, 1, 4)
    assert folding_fraction(det).item() == pytest.approx(0.5)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0]).reshape(1, 1, 1, 1, 4)
    assert folding_fraction(det, mask).item() == pytest.approx(1 / 3)
    grid = ImageGrid((3, 2, 2))
    # a reflection x -> -x folds everywhere
    d = Deformation.from_function(grid, lambda x: torch.stack([-2 * x[..., 0], 0 * x[..., 1], 0 * x[..., 2]], -1))
    assert d.folding_fraction().item() == 1.0
    assert jacobian_determinant(d.displacement, grid).max() < 0


def test_warp_labels_nearest_and_linear(fine: ImageGrid) -> None:
    labels = torch.zeros(1, 1, *fine.shape_zyx, dtype=torch.int64)
    labels[..., 4:12, 5:15, 6:18] = 2
    labels[..., 6:9, 7:10, 8:12] = 1
    t = torch.as_tensor(fine.index_vectors_to_world(np.array([1.0, 0.0, 0.0])))  # one voxel along i
    d = Deformation.from_function(fine, lambda x: t.expand_as(x).clone(), dtype=F64)
    for mode in ("nearest", "linear"):
        out = d.warp_labels(labels, fine, mode=mode)
        assert out.dtype == labels.dtype
        # y(x) = x + one voxel along i: output at i reads input at i + 1
        assert torch.equal(out[..., :-1], labels[..., 1:])
        assert torch.equal(out[..., -1], torch.zeros_like(out[..., -1]))  # outside the image: label 0
    with pytest.raises(ValueError, match="mode"):
        d.warp_labels(labels, fine, mode="cubic")


def test_bad_inputs_raise_with_shapes(fine: ImageGrid) -> None:
    with pytest.raises(ValueError, match=r"\(1, 2, 16, 20, 24\)"):
        Deformation(fine, torch.zeros(1, 2, *fine.shape_zyx))
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4, 4\)"):
        Deformation(fine, torch.zeros(1, 3, 4, 4, 4))
    d = Deformation.identity(fine)
    with pytest.raises(ValueError, match="image"):
        d.warp(torch.zeros(1, 1, 3, 3, 3), fine)
    with pytest.raises(ValueError, match="batch"):
        d.warp(torch.zeros(2, 1, *fine.shape_zyx), fine)
    with pytest.raises(ValueError, match="points"):
        d.map_points(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="batch"):
        d.compose(Deformation.identity(fine, batch=2))


def test_det3_equals_torch_linalg_det() -> None:
    """The closed-form 3 x 3 determinant of the Jacobians equals LAPACK's, on an oblique anisotropic
    grid with a strong, partly folding field."""
    grid = oblique_grid(size=(9, 8, 7), spacing=(0.8, 1.1, 1.7))
    from MLVIRNETLib.core.deformation import det3, spatial_gradient

    g = torch.Generator().manual_seed(3)
    u = torch.randn((2, 3) + tuple(grid.size[::-1]), generator=g, dtype=torch.float64) * 1.5
    jac = spatial_gradient(u, grid) + torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(det3(jac), torch.linalg.det(jac), rtol=1e-10, atol=1e-12)
    assert bool((det3(jac) <= 0).any()) and bool((det3(jac) > 0).any())
    det = jacobian_determinant(u, grid)
    torch.testing.assert_close(det[:, 0], torch.linalg.det(jac), rtol=1e-10, atol=1e-12)
