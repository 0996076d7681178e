"""registration.fused_objective: the hand-written gradient against the autograd objective it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.losses import LossWeights
from MLVIRNETLib.registration import refine as refine_module
from MLVIRNETLib.registration.fused_objective import FusedLevel, fused_level_loss


def _level(dtype, with_weights: bool, axis_aligned: bool = False):
    """Smooth random images on an oblique (or axis-aligned: the one-pass sample points), anisotropic
    grid with a non-zero origin."""
    grid = oblique_grid(size=(12, 9, 10))
    if axis_aligned:
        grid = ImageGrid(grid.size, grid.spacing, grid.origin, np.eye(3))
    gen = torch.Generator().manual_seed(3)
    shape = (1, 1, *grid.shape_zyx)

    def smooth() -> torch.Tensor:
        v = torch.rand(shape, generator=gen, dtype=dtype)
        return torch.nn.functional.avg_pool3d(v, 3, stride=1, padding=1, count_include_pad=False)

    fixed, moving = smooth(), smooth()
    ngf_weight = torch.rand(shape, generator=gen, dtype=dtype) if with_weights else None
    valid = (torch.rand(shape, generator=gen, dtype=dtype) > 0.2).to(dtype) if with_weights else None
    data = refine_module._LevelData(2, grid, fixed, moving, None, None, ngf_weight, valid)
    u = torch.randn((1, 3, *(n - 2 for n in grid.shape_zyx)), generator=gen, dtype=dtype) * 0.7
    return grid, data, u


@pytest.mark.parametrize("axis_aligned", [False, True])
@pytest.mark.parametrize("with_weights", [False, True])
def test_value_and_gradient_equal_autograd(with_weights: bool, axis_aligned: bool) -> None:
    grid, data, u0 = _level(torch.float64, with_weights, axis_aligned)
    weights = LossWeights(alpha=50.0, beta=0.0, ngf_eps=0.01)
    u_ref = u0.clone().requires_grad_(True)
    loss_ref, terms_ref = refine_module.autograd_objective(data, u_ref, weights, lambda: None)()
    loss_ref.backward()
    level = FusedLevel(grid, data.fixed, data.moving, weights.alpha, weights.ngf_eps, data.ngf_weight, data.moving_valid)
    u = u0.clone().requires_grad_(True)
    loss, terms = fused_level_loss(level, u)
    loss.backward()
    # the reference builds its voxel positions in float32 (1e-6 mm), hence agreement to about 1e-7
    torch.testing.assert_close(loss.detach(), loss_ref.detach(), atol=0, rtol=1e-6)
    for name in ("ngf", "curvature", "mask"):
        torch.testing.assert_close(terms[name], terms_ref[name].detach(), atol=1e-12, rtol=1e-6)
    torch.testing.assert_close(u.grad, u_ref.grad, atol=1e-5 * float(u_ref.grad.abs().max()), rtol=0)


def test_gradient_matches_finite_differences() -> None:
    """An independent check of the adjoints: central differences of the value in float64."""
    grid, data, u0 = _level(torch.float64, True)
    level = FusedLevel(grid, data.fixed, data.moving, 30.0, 0.02, data.ngf_weight, None)
    u = u0.clone().requires_grad_(True)
    loss, _ = fused_level_loss(level, u)
    loss.backward()
    gen = torch.Generator().manual_seed(9)
    direction = torch.randn(u0.shape, generator=gen, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        plus, _ = fused_level_loss(level, u0 + h * direction)
        minus, _ = fused_level_loss(level, u0 - h * direction)
    numeric = float(plus - minus) / (2 * h)
    analytic = float((u.grad * direction).sum())
    assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(analytic))


def test_without_gradient_backward_refuses() -> None:
    grid, data, u0 = _level(torch.float32, False)
    level = FusedLevel(grid, data.fixed, data.moving, 1.0, 0.01)
    with torch.no_grad():
        loss, _ = fused_level_loss(level, u0)
    assert loss.ndim == 0 and torch.isfinite(loss)
