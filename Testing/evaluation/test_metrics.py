"""TRE, Dice and Jacobian statistics against closed-form values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.evaluation.metrics import TREResult, dice, jacobian_stats, snap_to_voxel, tre
from MLVIRNETLib.evaluation.reports import tre_table


@pytest.fixture
def mgrid():
    return oblique_grid(size=(16, 12, 10), spacing=(0.9, 1.4, 2.5), origin=(-20.0, 35.5, -140.25))


def affine_deformation(grid, a: np.ndarray, b: np.ndarray) -> Deformation:
    """u(x) = A x + b (trilinear interpolation reproduces it exactly)."""
    at = torch.as_tensor(a, dtype=torch.float64)
    bt = torch.as_tensor(b, dtype=torch.float64)
    return Deformation.from_function(grid, lambda x: x @ at.T + bt, dtype=torch.float64)


def inside_points(grid, n, seed):
    rng = np.random.default_rng(seed)
    return grid.index_to_world(rng.uniform(0.5, np.asarray(grid.size) - 1.5, size=(n, 3)))


def test_initial_error_and_summary():
    f = np.array([[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [5, 5, 5]])
    m = np.array([[3.0, 4, 0], [1, 0, 0], [0, 0, 2], [5, 5, 5]])
    r = tre(f, m)
    assert np.allclose(r.per_point, [5, 0, 2, 0])
    assert r.mean == pytest.approx(1.75) and r.std == pytest.approx(np.std([5, 0, 2, 0]))  # population sd
    assert r.std == pytest.approx(np.sqrt(np.mean((np.array([5, 0, 2, 0]) - 1.75) ** 2)))
    assert r.max == 5 and r.n == 4 and r.p95 == pytest.approx(np.percentile([5, 0, 2, 0], 95))
    d = r.to_dict()
    assert {"mean", "std", "p95", "max", "n"} <= set(d) and d["direction"] == "fixed -> moving"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tre_through_affine_field(mgrid, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(scale=0.05, size=(3, 3))
    b = rng.normal(scale=3.0, size=3)
    d = affine_deformation(mgrid, a, b)
    f = inside_points(mgrid, 25, seed)
    m = f + rng.normal(scale=2.0, size=f.shape)
    expected = np.linalg.norm(f + f @ a.T + b - m, axis=1)
    r = tre(f, m, d)
    assert np.allclose(r.per_point, expected, atol=1e-6)
    # perfect registration: moving points are the mapped fixed points
    assert tre(f, f + f @ a.T + b, d).max < 1e-6


def test_tre_direction_matters(mgrid):
    b = np.array([1.0, -0.5, 0.8])
    d = affine_deformation(mgrid, np.zeros((3, 3)), b)
    f = mgrid.index_to_world(np.random.default_rng(4).uniform(3, np.asarray(mgrid.size) - 4, size=(10, 3)))
    assert tre(f, f + b, d).max < 1e-9  # fixed -> moving
    assert tre(f + b, f, d).mean == pytest.approx(2 * np.linalg.norm(b))  # swapped files: twice the shift


def test_snap_to_voxel(mgrid):
    idx = np.array([[2.3, 4.6, 1.49], [0.2, 11.7, 9.9], [-3.0, 5.0, 20.0]])
    snapped = snap_to_voxel(mgrid.index_to_world(idx), mgrid)
    assert np.allclose(mgrid.world_to_index(snapped), [[2, 5, 1], [0, 11, 9], [0, 5, 9]])  # rounded, clipped
    # TRE with snapping: a shift of 0.4 voxel along x is rounded away, 0.6 voxel becomes one voxel
    f = mgrid.index_to_world(np.array([[3.0, 3, 3], [5, 6, 7]]))
    for frac, expected in ((0.4, 0.0), (0.6, mgrid.spacing[0])):
        b = mgrid.index_vectors_to_world(np.array([frac, 0.0, 0.0]))
        d = affine_deformation(mgrid, np.zeros((3, 3)), b)
        r = tre(f, f, d, snap_grid=mgrid)
        assert r.snapped and np.allclose(r.per_point, expected, atol=1e-9)


def test_tre_errors(mgrid):
    f = inside_points(mgrid, 5, 0)
    with pytest.raises(ValueError, match="counts differ: 5 fixed vs 4 moving"):
        tre(f, f[:4])
    with pytest.raises(ValueError, match=r"shape \(P, 3\)"):
        tre(f[:, :2], f[:, :2])
    d = Deformation.identity(mgrid, dtype=torch.float64)
    far = f.copy()
    far[2] = mgrid.index_to_world(np.array([30.0, 5.0, 5.0]))
    with pytest.raises(ValueError, match="1 of 5 landmarks lie outside the deformation field's grid"):
        tre(far, far, d)
    with pytest.raises(ValueError, match="empty"):
        tre(np.zeros((0, 3)), np.zeros((0, 3)))


def test_pooled_and_table():
    a = TREResult.from_errors(np.array([1.0, 2.0]))
    b = TREResult.from_errors(np.array([3.0, 4.0, 5.0, 6.0]))
    total = TREResult.pooled([a, b])
    assert total.n == 6 and total.mean == pytest.approx(3.5) and total.std == pytest.approx(np.std([1, 2, 3, 4, 5, 6]))
    table = tre_table({"c1": {"initial": a}, "c2": {"initial": b}}, groups={"g": ["c2"]})
    assert list(table) == ["c1", "c2", "total g", "total"]
    assert table["total"]["initial"].mean == pytest.approx(3.5) and table["total g"]["initial"].n == 4
    with pytest.raises(ValueError, match="different conditions"):
        tre_table({"c1": {"initial": a}, "c2": {"registered": b}})


def test_dice():
    a = np.zeros((10, 10, 10), dtype=np.int16)
    b = np.zeros_like(a)
    a[0:4] = 1  # 400 voxels
    b[2:6] = 1  # 400 voxels, 200 shared
    a[8:, :5] = 2  # 100
    b[8:, :5] = 2
    b[9, 9, 9] = 3
    out = dice(a, torch.as_tensor(b))
    assert out == {1: pytest.approx(0.5), 2: pytest.approx(1.0), 3: pytest.approx(0.0)}
    assert np.isnan(dice(a, b, labels=[7])[7])
    with pytest.raises(ValueError, match="differ in shape"):
        dice(a, b[:5])


@pytest.mark.parametrize(
    "a",
    [np.diag([0.2, -0.1, 0.3]), np.array([[0.0, 0.3, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, -0.4]]), np.diag([-2.0, 0.0, 0.0])],
)
def test_jacobian_stats_affine(mgrid, a):
    d = affine_deformation(mgrid, a, np.array([1.0, 2.0, 3.0]))
    stats = jacobian_stats(d)
    det = np.linalg.det(np.eye(3) + a)
    assert stats["min"] == pytest.approx(det, abs=1e-9) and stats["max"] == pytest.approx(det, abs=1e-9)
    assert stats["std"] == pytest.approx(0.0, abs=1e-9)
    assert stats["n_voxels"] == int(np.prod(mgrid.size))
    folded = det <= 0
    assert stats["folding_fraction"] == (1.0 if folded else 0.0)
    assert stats["folding_percent"] == (100.0 if folded else 0.0)


def test_jacobian_stats_mask(mgrid):
    # u_x = 0.5 * x^2 / L: det J = 1 + x / L varies along x; folding where x <= -L
    x0 = mgrid.world_points(dtype=torch.float64)[..., 0]
    length = float(0.25 * (x0.max() - x0.min()))
    centre = float(x0.mean())

    def fn(x):
        u = torch.zeros_like(x)
        u[..., 0] = 0.5 * (x[..., 0] - centre) ** 2 / length
        return u

    d = Deformation.from_function(mgrid, fn, dtype=torch.float64)
    det = d.jacobian_determinant()[0, 0]
    mask = (torch.arange(mgrid.size[0]) < 4).expand(*mgrid.shape_zyx)
    stats = jacobian_stats(d, mask=mask.numpy())
    assert stats["n_voxels"] == int(mask.sum())
    assert stats["min"] == pytest.approx(float(det[mask].min()))
    assert stats["n_folded"] == int((det[mask] <= 0).sum())
    assert jacobian_stats(d)["n_folded"] == int((det <= 0).sum())
    with pytest.raises(ValueError, match="mask shape"):
        jacobian_stats(d, mask=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="selects no voxels"):
        jacobian_stats(d, mask=np.zeros(mgrid.shape_zyx))
