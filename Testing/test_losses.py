"""Tests of MLVIRNETLib.losses: analytic values, invariances, gradients, precision and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.losses import (
    CurvatureLoss,
    LossWeights,
    MaskLoss,
    NGFLoss,
    RegistrationLoss,
    curvature,
    displacement_error,
    mask_loss,
    ngf,
    registration_loss,
)


def _oblique_grid(size=(9, 8, 7)) -> ImageGrid:
    """Anisotropic spacing, non-zero origin, a rotation about an oblique axis."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    angle = 0.6
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return ImageGrid(size, (0.8, 1.3, 2.1), (-12.5, 30.0, 7.25), tuple(rot.ravel()))


def _world(grid: ImageGrid) -> torch.Tensor:
    """World points ``(D, H, W, 3)`` float64."""
    return grid.world_points(dtype=torch.float64)


def _scalar_field(grid: ImageGrid, fn) -> torch.Tensor:
    """``fn(points (D,H,W,3)) -> (D,H,W)`` as a ``(1, 1, D, H, W)`` float64 image."""
    return fn(_world(grid))[None, None]


def _smooth_random(shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    # a little smoothing so gradients are not pure noise
    k = torch.ones(1, 1, 3, 3, 3, dtype=dtype) / 27
    return torch.nn.functional.conv3d(x.reshape(-1, 1, *shape[2:]), k, padding=1).reshape(shape)


# ----------------------------------------------------------------------------------------------
# NGF
# ----------------------------------------------------------------------------------------------
def test_ngf_identical_images_is_zero():
    img = _smooth_random((2, 1, 10, 9, 8), seed=0)
    assert ngf(img, img, (0.7, 1.1, 2.5), eps=0.05).item() == pytest.approx(0.0, abs=1e-12)
    assert ngf(img, img, (0.7, 1.1, 2.5), eps=0.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "a_vec,b_vec",
    [((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), ((2.0, -1.0, 0.5), (3.0, 0.2, -1.0)), ((0.3, 0.4, 0.0), (-0.6, -0.8, 0.0))],
)
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_ngf_linear_ramps_on_oblique_grid_match_analytic(a_vec, b_vec, eps):
    grid = _oblique_grid()
    a = torch.tensor(a_vec, dtype=torch.float64)
    b = torch.tensor(b_vec, dtype=torch.float64)
    fixed = _scalar_field(grid, lambda x: x @ a + 3.0)
    moving = _scalar_field(grid, lambda x: x @ b - 1.0)
    e2 = eps * eps
    expected = 1.0 - (float(a @ b) + e2) ** 2 / ((float(a @ a) + e2) * (float(b @ b) + e2))
    got = ngf(fixed, moving, grid.spacing, eps=eps)
    assert got.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("scale", [0.5, 3.0, -2.0])
def test_ngf_joint_affine_intensity_change_with_scaled_eps_is_exact(scale):
    spacing = (0.9, 1.4, 2.0)
    f = _smooth_random((1, 1, 9, 10, 11), seed=1)
    m = _smooth_random((1, 1, 9, 10, 11), seed=2)
    ref = ngf(f, m, spacing, eps=0.05)
    got = ngf(scale * f + 7.0, scale * m - 4.0, spacing, eps=0.05 * abs(scale))
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)


@pytest.mark.parametrize("scale,offset", [(0.25, 100.0), (4.0, -3.0), (-1.5, 0.0)])
def test_ngf_one_image_affine_intensity_change_with_eps_zero(scale, offset):
    spacing = (0.9, 1.4, 2.0)
    f = _smooth_random((1, 1, 9, 10, 11), seed=3)
    m = _smooth_random((1, 1, 9, 10, 11), seed=4)
    assert ngf(f, scale * f + offset, spacing, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)
    ref = ngf(f, m, spacing, eps=0.0)
    assert ngf(f, scale * m + offset, spacing, eps=0.0).item() == pytest.approx(ref.item(), rel=1e-10)
    # with eps relative to the gradient magnitude (1e-4 of it) the change stays tiny
    gmag = float((torch.stack(torch.gradient(m[0, 0], spacing=(2.0, 1.4, 0.9))) ** 2).sum(0).sqrt().mean())
    eps = 1e-4 * gmag
    assert ngf(f, scale * m + offset, spacing, eps=eps).item() == pytest.approx(
        ngf(f, m, spacing, eps=eps).item(), abs=1e-3
    )


def test_ngf_uses_physical_spacing():
    # F = index_x (1 per voxel), M = index_y: gradients (1/sx, 0, 0) and (0, 1/sy, 0) per mm
    d, h, w = 5, 6, 7
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (d, h, w)), indexing="ij")
    f, m = i[None, None], (i + j)[None, None]
    sx, sy = 2.0, 0.5
    eps = 0.3
    gf = torch.tensor([1 / sx, 0.0, 0.0], dtype=torch.float64)
    gm = torch.tensor([1 / sx, 1 / sy, 0.0], dtype=torch.float64)
    e2 = eps**2
    expected = 1 - (float(gf @ gm) + e2) ** 2 / ((float(gf @ gf) + e2) * (float(gm @ gm) + e2))
    assert ngf(f, m, (sx, sy, 1.0), eps=eps).item() == pytest.approx(expected, abs=1e-12)


def test_ngf_mask_weights_batch_items():
    f = _smooth_random((2, 1, 8, 8, 8), seed=5)
    m = _smooth_random((2, 1, 8, 8, 8), seed=6)
    sp = (1.0, 1.5, 2.0)
    mask = torch.zeros(2, 1, 8, 8, 8, dtype=torch.float64)
    mask[0] = 1.0
    assert ngf(f, m, sp, 0.1, mask=mask).item() == pytest.approx(ngf(f[:1], m[:1], sp, 0.1).item(), rel=1e-12)
    assert ngf(f, m, sp, 0.1, mask=torch.ones_like(mask)).item() == pytest.approx(ngf(f, m, sp, 0.1).item(), rel=1e-12)
    assert ngf(f, m, sp, 0.1, mask=torch.zeros_like(mask)).item() == 0.0


# ----------------------------------------------------------------------------------------------
# curvature
# ----------------------------------------------------------------------------------------------
def _vector_field(grid: ImageGrid, fn) -> torch.Tensor:
    """``fn(points (D,H,W,3)) -> (D,H,W,3)`` as ``(1, 3, D, H, W)`` float64."""
    return fn(_world(grid)).movedim(-1, 0)[None].contiguous()


def test_curvature_of_affine_field_is_zero():
    grid = _oblique_grid()
    a = torch.tensor([[0.1, -0.3, 0.2], [0.05, 0.4, -0.1], [-0.2, 0.1, 0.3]], dtype=torch.float64)
    u = _vector_field(grid, lambda x: x @ a.T + torch.tensor([5.0, -2.0, 1.0], dtype=torch.float64))
    assert curvature(u, grid.spacing).item() == pytest.approx(0.0, abs=1e-20)
    assert abs(curvature(u.float(), grid.spacing).item()) < 1e-7


def test_curvature_of_quadratic_field_matches_analytic():
    grid = _oblique_grid((10, 9, 8))
    g = torch.Generator().manual_seed(7)
    q = torch.randn(3, 3, 3, generator=g, dtype=torch.float64) * 0.01  # u_c = x^T Q_c x + ...
    lin = torch.randn(3, 3, generator=g, dtype=torch.float64)
    centre = torch.tensor([-10.0, 25.0, 10.0], dtype=torch.float64)

    def fn(x):
        y = x - centre
        return torch.einsum("...i,cij,...j->...c", y, q, y) + y @ lin.T

    u = _vector_field(grid, fn)
    lap = 2.0 * torch.einsum("cii->c", q)  # Laplacian of x^T Q x is 2 trace(Q), in any orthonormal frame
    expected = 0.5 * float((lap**2).mean())
    assert curvature(u, grid.spacing).item() == pytest.approx(expected, rel=1e-9)
    assert CurvatureLoss()(u, grid.spacing).item() == pytest.approx(expected, rel=1e-9)


def test_curvature_single_axis_second_difference():
    # u_x = c * z_mm^2 along the slow axis with sz = 2.5: Laplacian 2c, only component 0
    sz, c = 2.5, 0.3
    z = torch.arange(6, dtype=torch.float64) * sz
    u = torch.zeros(1, 3, 6, 5, 4, dtype=torch.float64)
    u[0, 0] = (c * z**2)[:, None, None]
    assert curvature(u, (1.0, 1.0, sz)).item() == pytest.approx(0.5 * (2 * c) ** 2 / 3, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# gradients and precision
# ----------------------------------------------------------------------------------------------
def test_gradcheck_ngf_and_curvature():
    f = _smooth_random((1, 1, 4, 5, 6), seed=8).requires_grad_(True)
    m = _smooth_random((1, 1, 4, 5, 6), seed=9).requires_grad_(True)
    w = torch.rand(1, 1, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda a, b: ngf(a, b, (0.8, 1.2, 2.0), eps=0.05, mask=w), (f, m))
    u = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(lambda v: curvature(v, (0.8, 1.2, 2.0)), (u.requires_grad_(True),))


def test_bf16_autocast_close_to_float32():
    f = _smooth_random((1, 1, 12, 12, 12), seed=10, dtype=torch.float32)
    m = _smooth_random((1, 1, 12, 12, 12), seed=11, dtype=torch.float32)
    u = _smooth_random((1, 3, 12, 12, 12), seed=12, dtype=torch.float32) * 5
    bf = torch.rand(1, 2, 12, 12, 12, generator=torch.Generator().manual_seed(3))
    bm = torch.rand(1, 2, 12, 12, 12, generator=torch.Generator().manual_seed(4))
    w = LossWeights(alpha=0.7, beta=2.0, ngf_eps=0.02)
    sp = (1.0, 1.5, 2.5)
    ref, ref_terms = registration_loss(f, m, u, sp, w, bf, bm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, terms = registration_loss(
            f.bfloat16(), m.bfloat16(), u.bfloat16(), sp, w, bf.bfloat16(), bm.bfloat16()
        )
    assert got.dtype == torch.float32
    for key in ("ngf", "curvature", "mask", "total"):
        assert terms[key].dtype == torch.float32
        assert terms[key].item() == pytest.approx(ref_terms[key].item(), rel=3e-2), key


# ----------------------------------------------------------------------------------------------
# mask term and combined loss
# ----------------------------------------------------------------------------------------------
def test_mask_loss_counts_mismatched_voxels():
    a = torch.zeros(1, 2, 4, 5, 6)
    b = a.clone()
    b[0, 0, 1, 2, 3] = 1.0
    b[0, 1, :2] = 1.0  # 2*5*6 = 60 voxels
    assert mask_loss(a, b).item() == pytest.approx(0.5 * 61 / (2 * 120))
    assert MaskLoss()(a, b).item() == pytest.approx(mask_loss(b, a).item())
    assert mask_loss(b, b).item() == 0.0


def test_registration_loss_is_weighted_sum_of_terms():
    f = _smooth_random((1, 1, 8, 9, 10), seed=13, dtype=torch.float32)
    m = _smooth_random((1, 1, 8, 9, 10), seed=14, dtype=torch.float32)
    u = _smooth_random((1, 3, 8, 9, 10), seed=15, dtype=torch.float32)
    bf = (f > 0).float()
    bm = (m > 0).float()
    sp = (1.2, 0.9, 2.0)
    w = LossWeights(alpha=3.0, beta=0.5, ngf_eps=0.1)
    total, terms = registration_loss(f, m, u, sp, w, bf, bm, ngf_mask=bf)
    assert set(terms) == {"ngf", "curvature", "mask", "total"}
    assert terms["ngf"].item() == pytest.approx(ngf(f, m, sp, 0.1, mask=bf).item())
    assert terms["curvature"].item() == pytest.approx(curvature(u, sp).item())
    assert terms["mask"].item() == pytest.approx(mask_loss(bf, bm).item())
    expected = terms["ngf"] + 3.0 * terms["curvature"] + 0.5 * terms["mask"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    mod_total, _ = RegistrationLoss(w)(f, m, u, sp, bf, bm, ngf_mask=bf)
    assert mod_total.item() == pytest.approx(total.item())
    no_mask, t2 = registration_loss(f, m, u, sp, w)
    assert t2["mask"].item() == 0.0
    assert no_mask.item() == pytest.approx((ngf(f, m, sp, 0.1) + 3.0 * terms["curvature"]).item())
    assert NGFLoss(0.1)(f, m, sp).item() == pytest.approx(ngf(f, m, sp, 0.1).item())


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_error_naming_shapes():
    img = torch.zeros(1, 1, 6, 6, 6)
    sp = (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\(1, 6, 6, 6\)"):
        ngf(img[0], img, sp)
    with pytest.raises(ValueError, match=r"\(1, 1, 6, 6, 5\)"):
        ngf(img, img[..., :5], sp)
    with pytest.raises(ValueError, match=r"\(1, 1, 2, 6, 6\)"):
        ngf(img[:, :, :2], img[:, :, :2], sp)
    with pytest.raises(ValueError, match="spacing"):
        ngf(img, img, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        curvature(torch.zeros(1, 3, 6, 6, 6), (1.0, 1.0))
    with pytest.raises(ValueError, match="eps"):
        ngf(img, img, sp, eps=-1.0)
    with pytest.raises(ValueError, match=r"\(1, 1, 6, 6, 4\)"):
        ngf(img, img, sp, mask=torch.ones(1, 1, 6, 6, 4))
    with pytest.raises(ValueError, match=r"\(1, 2, 6, 6, 6\)"):
        curvature(torch.zeros(1, 2, 6, 6, 6), sp)
    with pytest.raises(ValueError, match=r"\(1, 1, 6, 6, 6\).*\(1, 2, 6, 6, 6\)"):
        mask_loss(img, torch.zeros(1, 2, 6, 6, 6))
    with pytest.raises(ValueError, match=r"\(1, 3, 6, 6, 5\)"):
        registration_loss(img, img, torch.zeros(1, 3, 6, 6, 5), sp, LossWeights())
    with pytest.raises(ValueError, match="both"):
        registration_loss(img, img, torch.zeros(1, 3, 6, 6, 6), sp, LossWeights(), mask_fixed=img)
    with pytest.raises(ValueError, match="alpha"):
        LossWeights(alpha=-1.0)


# ----------------------------------------------------------------------------------------------
# displacement_error (the supervised training term)
# ----------------------------------------------------------------------------------------------
def test_displacement_error_is_the_mean_squared_distance_in_mm2():
    truth = torch.zeros((2, 3, 4, 5, 6))
    pred = truth.clone()
    pred[:, 0] = 3.0  # 3 mm along x
    pred[:, 2] = 4.0  # 4 mm along z: 5 mm apart everywhere
    assert float(displacement_error(pred, truth)) == pytest.approx(25.0)
    weight = torch.zeros((2, 1, 4, 5, 6))
    weight[..., :2] = 1.0
    pred[..., 2:] = 0.0  # exact where the weight is 0
    assert float(displacement_error(pred, truth, weight)) == pytest.approx(25.0)
    assert float(displacement_error(pred, truth)) == pytest.approx(25.0 * 2 / 6)


def test_displacement_error_checks_shapes():
    with pytest.raises(ValueError, match="truth shape"):
        displacement_error(torch.zeros((1, 3, 4, 4, 4)), torch.zeros((1, 3, 4, 4, 5)))
    with pytest.raises(ValueError, match="displacement"):
        displacement_error(torch.zeros((1, 2, 4, 4, 4)), torch.zeros((1, 2, 4, 4, 4)))
    with pytest.raises(ValueError, match="truth"):
        LossWeights(truth=-1.0)
    with pytest.raises(ValueError, match="identity"):
        LossWeights(identity=-1.0)
