"""The refinement objective of one level with its gradient written out (no autograd graph).

:func:`MLVIRNETLib.registration.refine.refine` minimises, on each level,

    J(u) = NGF(F, M∘y) + alpha * curvature(u),   y(x) = x + u(x)

(:func:`MLVIRNETLib.losses.registration_loss` without the mask term). Through autograd, every
finite difference of NGF and of the curvature is a slice whose backward allocates and fills a
full-size tensor; on a 72 x 80 x 80 level that bookkeeping took more time than the arithmetic.
Here the value and the gradient are computed in one pass each, in place where possible:

* ``warped = M(W (x + u))`` with ``W`` the world -> normalised map of the level grid, by
  :func:`~MLVIRNETLib.core.sampling.grid_sample` (threaded on the CPU);
* NGF at interior voxels, with ``a = grad F`` (constant), ``b = grad warped`` (central
  differences) and ``d = 1 - (a.b + e^2)^2 / ((|a|^2 + e^2)(|b|^2 + e^2))``; its derivative
  ``dd/db = -2 (a.b + e^2)(a (|b|^2 + e^2) - (a.b + e^2) b) / ((|a|^2 + e^2)(|b|^2 + e^2)^2)``
  goes back through the adjoint of the central differences to ``warped``, then through
  ``grid_sampler_3d_backward`` to the coordinates and through ``W`` to ``u``;
* the curvature ``1/2 mean (Laplace u)^2`` with the gradient ``Laplace^T Laplace u / count``;
* the outer layer of ``u`` copies its inner neighbour (replicate padding) and its gradient is
  folded back onto that neighbour.

:class:`FusedLevelLoss` wraps this as a ``torch.autograd.Function``: the optimisers in
:mod:`~MLVIRNETLib.registration.refine` call ``backward()`` as before. The values equal those of
the autograd objective to float rounding (``Testing/registration/test_fused_objective.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import ImageGrid
from ..core.sampling import grid_sample, sampler_backward
from ..losses import central_gradient, interior_laplacian  # the very differences of registration_loss

__all__ = ["FusedLevel", "fused_level_loss"]


@dataclass
class FusedLevel:
    """The constant inputs of one level.

    Attributes:
        grid: the level grid (``u``, the images and the weights live on it).
        fixed: ``(1, 1, D, H, W)`` fixed image.
        moving: ``(1, 1, D, H, W)`` moving image (pre-aligned, on ``grid``).
        alpha: curvature weight, mm^2.
        ngf_eps: NGF edge parameter, intensity per mm.
        ngf_weight: optional ``(1, 1, D, H, W)`` NGF voxel weights (constant).
        moving_valid: optional ``(1, 1, D, H, W)`` where the moving image has data (eroded); the
            NGF weight is multiplied by it sampled at ``y(x)`` (not differentiated).
    """

    grid: ImageGrid
    fixed: torch.Tensor
    moving: torch.Tensor
    alpha: float
    ngf_eps: float
    ngf_weight: torch.Tensor | None = None
    moving_valid: torch.Tensor | None = None

    def __post_init__(self) -> None:
        dtype, device = self.fixed.dtype, self.fixed.device
        # normalised coordinates of the voxel centres (summed in float64) and the linear map of u
        # (kept as numbers on the host: reading them never waits for a device)
        self.base = self.grid.world_to_normalized(self.grid.world_points(dtype=torch.float64))[None].to(dtype).to(device)
        self.linear = np.asarray(self.grid.world_to_normalized_matrix(), dtype=float)[:3, :3]
        self.fixed_grad = central_gradient(self.fixed, self.grid.spacing)
        e2 = float(self.ngf_eps) ** 2
        fx, fy, fz = self.fixed_grad
        self.fixed_norm = fx * fx + fy * fy + fz * fz + e2


def _central_adjoint(gx: torch.Tensor, gy: torch.Tensor, gz: torch.Tensor, spacing, shape) -> torch.Tensor:
    """The adjoint of the central differences (``losses.central_gradient``): the gradient on the full ``(N, C, D, H, W)`` volume of
    ``sum(gx * Dx v + gy * Dy v + gz * Dz v)`` with respect to ``v``."""
    sx, sy, sz = spacing
    out = gx.new_zeros(shape)
    tx, ty, tz = gx / (2.0 * sx), gy / (2.0 * sy), gz / (2.0 * sz)
    out[:, :, 1:-1, 1:-1, 2:] += tx
    out[:, :, 1:-1, 1:-1, :-2] -= tx
    out[:, :, 1:-1, 2:, 1:-1] += ty
    out[:, :, 1:-1, :-2, 1:-1] -= ty
    out[:, :, 2:, 1:-1, 1:-1] += tz
    out[:, :, :-2, 1:-1, 1:-1] -= tz
    return out


def _laplacian_adjoint(g: torch.Tensor, spacing, shape) -> torch.Tensor:
    """The adjoint of ``losses.interior_laplacian`` applied to interior values ``g``."""
    sx, sy, sz = spacing
    out = g.new_zeros(shape)
    centre = g * (-2.0 / (sx * sx) - 2.0 / (sy * sy) - 2.0 / (sz * sz))
    out[:, :, 1:-1, 1:-1, 1:-1] += centre
    gx, gy, gz = g / (sx * sx), g / (sy * sy), g / (sz * sz)
    out[:, :, 1:-1, 1:-1, 2:] += gx
    out[:, :, 1:-1, 1:-1, :-2] += gx
    out[:, :, 1:-1, 2:, 1:-1] += gy
    out[:, :, 1:-1, :-2, 1:-1] += gy
    out[:, :, 2:, 1:-1, 1:-1] += gz
    out[:, :, :-2, 1:-1, 1:-1] += gz
    return out


def _apply_linear(v: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """``matrix @ v`` for vectors ``v`` ``(..., 3)``, by broadcasting (cheaper than a matrix product
    with 3 columns, and a diagonal matrix, i.e. an axis-aligned grid, costs one product per axis)."""
    rows = []
    for j in range(3):
        terms = [v[..., k] * float(matrix[j, k]) for k in range(3) if float(matrix[j, k]) != 0.0]
        rows.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(v[..., 0]))
    return torch.stack(rows, dim=-1)


def _value_and_gradient(level: FusedLevel, u_inner: torch.Tensor, need_gradient: bool):
    """``(total, ngf, curvature, gradient wrt u_inner or None)`` of the level objective."""
    spacing = level.grid.spacing
    u = F.pad(u_inner, (1, 1, 1, 1, 1, 1), mode="replicate")
    shape = u.shape
    coords = level.base + _apply_linear(u.movedim(1, -1), level.linear)
    warped = grid_sample(level.moving, coords, padding_mode="border")

    # NGF at the interior voxels
    e2 = float(level.ngf_eps) ** 2
    ax, ay, az = level.fixed_grad
    bx, by, bz = central_gradient(warped, spacing)
    inner = ax * bx + ay * by + az * bz + e2
    norm_m = bx * bx + by * by + bz * bz + e2
    ratio = inner / (level.fixed_norm * norm_m)
    d = 1.0 - inner * ratio
    weight = level.ngf_weight
    if level.moving_valid is not None:
        inside = grid_sample(level.moving_valid, coords, padding_mode="zeros")
        weight = inside if weight is None else weight * inside
    if weight is None:
        scale = 1.0 / d.numel()
        ngf = d.sum() * scale
        w_int = None
    else:
        w_int = weight[:, :, 1:-1, 1:-1, 1:-1].expand_as(d)
        total_w = w_int.sum().clamp_min(torch.finfo(d.dtype).tiny)
        ngf = (d * w_int).sum() / total_w
        scale = 1.0 / total_w

    # curvature
    lap = interior_laplacian(u, spacing)
    count = lap.numel()
    curv = 0.5 * (lap * lap).sum() / count
    total = ngf + level.alpha * curv
    if not need_gradient:
        return total, ngf, curv, None

    # d d / d b, weighted and scaled to the mean
    factor = -2.0 * ratio / norm_m  # -2 (a.b + e2) / (|a|^2 + e2) / (|b|^2 + e2)^2
    if w_int is not None:
        factor = factor * w_int
    factor = factor * scale
    gx = factor * (ax * norm_m - inner * bx)
    gy = factor * (ay * norm_m - inner * by)
    gz = factor * (az * norm_m - inner * bz)
    grad_warped = _central_adjoint(gx, gy, gz, spacing, warped.shape)
    grad_coords = sampler_backward(grad_warped, level.moving, coords, "bilinear", "border")
    grad_u = _apply_linear(grad_coords, level.linear.T).movedim(-1, 1)
    grad_u += _laplacian_adjoint(lap * (level.alpha / count), spacing, shape)
    grad_inner = torch.ops.aten.replication_pad3d_backward(grad_u, u_inner, [1, 1, 1, 1, 1, 1])
    return total, ngf, curv, grad_inner


class FusedLevelLoss(torch.autograd.Function):
    """``J(u_inner)`` as a 0-dim tensor whose ``backward`` gives the hand-written gradient."""

    @staticmethod
    def forward(ctx, u_inner: torch.Tensor, level: FusedLevel, need_gradient: bool):  # type: ignore[override]
        total, ngf, curv, grad = _value_and_gradient(level, u_inner.detach(), need_gradient)
        ctx.grad = grad
        ctx.mark_non_differentiable(ngf, curv)
        return total, ngf, curv

    @staticmethod
    def backward(ctx, grad_total, grad_ngf, grad_curv):  # type: ignore[override]
        if ctx.grad is None:
            raise RuntimeError("this fused loss was evaluated without its gradient")
        return ctx.grad * grad_total, None, None


def fused_level_loss(level: FusedLevel, u_inner: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, terms)`` like :func:`MLVIRNETLib.losses.registration_loss` (mask term 0) for the
    interior displacement ``u_inner`` ``(1, 3, d - 2, h - 2, w - 2)`` of ``level``."""
    need = torch.is_grad_enabled() and u_inner.requires_grad
    total, ngf, curv = FusedLevelLoss.apply(u_inner, level, need)
    zero = torch.zeros((), dtype=total.dtype, device=total.device)
    return total, {"ngf": ngf.detach(), "curvature": curv.detach(), "mask": zero, "total": total}
