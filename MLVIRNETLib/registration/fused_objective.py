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
        # normalised coordinates of the voxel centres and the linear map of u (kept as numbers on
        # the host: reading them never waits for a device)
        self.base = self.grid.normalized_points(device=device, dtype=dtype)[None]
        self.linear = np.asarray(self.grid.world_to_normalized_matrix(), dtype=float)[:3, :3]
        self.diagonal = bool(np.count_nonzero(self.linear - np.diag(np.diag(self.linear))) == 0)
        self.linear_diag = torch.tensor(np.diag(self.linear).tolist(), dtype=dtype, device=device)
        # the fixed gradient divided by 2 h once more: a.b = a'.B with the raw differences B = 2 h b
        two_h = [2.0 * float(s) for s in self.grid.spacing]
        ax, ay, az = central_gradient(self.fixed, self.grid.spacing)
        e2 = float(self.ngf_eps) ** 2
        self.inv_fixed_norm = 1.0 / (ax * ax + ay * ay + az * az + e2)
        self.fixed_half = (ax / two_h[0], ay / two_h[1], az / two_h[2])
        self.raw_scale = tuple(1.0 / (t * t) for t in two_h)  # |b|^2 = sum_k B_k^2 / (2 h_k)^2


def _raw_differences(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``v[i + 1] - v[i - 1]`` along x (W), y (H) and z (D) at the interior voxels (not divided by 2 h)."""
    return (v[:, :, 1:-1, 1:-1, 2:] - v[:, :, 1:-1, 1:-1, :-2],
            v[:, :, 1:-1, 2:, 1:-1] - v[:, :, 1:-1, :-2, 1:-1],
            v[:, :, 2:, 1:-1, 1:-1] - v[:, :, :-2, 1:-1, 1:-1])


def _raw_differences_adjoint(gx: torch.Tensor, gy: torch.Tensor, gz: torch.Tensor, shape) -> torch.Tensor:
    """The adjoint of :func:`_raw_differences`: the gradient on the full ``(N, C, D, H, W)`` volume of
    ``sum(gx * Bx v + gy * By v + gz * Bz v)`` with respect to ``v``."""
    out = gx.new_zeros(shape)
    out[:, :, 1:-1, 1:-1, 2:] += gx
    out[:, :, 1:-1, 1:-1, :-2] -= gx
    out[:, :, 1:-1, 2:, 1:-1] += gy
    out[:, :, 1:-1, :-2, 1:-1] -= gy
    out[:, :, 2:, 1:-1, 1:-1] += gz
    out[:, :, :-2, 1:-1, 1:-1] -= gz
    return out


def _add_laplacian_adjoint(out: torch.Tensor, g: torch.Tensor, spacing, scale: float) -> None:
    """``out += scale * L^T g`` for the interior Laplacian ``L`` of ``losses.interior_laplacian`` (``out`` full size)."""
    cx, cy, cz = (1.0 / (float(s) * float(s)) for s in spacing)
    out[:, :, 1:-1, 1:-1, 1:-1].add_(g, alpha=-2.0 * (cx + cy + cz) * scale)
    out[:, :, 1:-1, 1:-1, 2:].add_(g, alpha=cx * scale)
    out[:, :, 1:-1, 1:-1, :-2].add_(g, alpha=cx * scale)
    out[:, :, 1:-1, 2:, 1:-1].add_(g, alpha=cy * scale)
    out[:, :, 1:-1, :-2, 1:-1].add_(g, alpha=cy * scale)
    out[:, :, 2:, 1:-1, 1:-1].add_(g, alpha=cz * scale)
    out[:, :, :-2, 1:-1, 1:-1].add_(g, alpha=cz * scale)


def _fold_outer_layer(grad_u: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to the interior of ``u`` when its outer layer copies its inner
    neighbour (replicate padding): each outer face is added onto the layer inside it, axis by
    axis (edges and corners follow), and the interior is returned. ``grad_u`` is changed."""
    grad_u[:, :, 1] += grad_u[:, :, 0]
    grad_u[:, :, -2] += grad_u[:, :, -1]
    inner_z = grad_u[:, :, 1:-1]
    inner_z[:, :, :, 1] += inner_z[:, :, :, 0]
    inner_z[:, :, :, -2] += inner_z[:, :, :, -1]
    inner_zy = inner_z[:, :, :, 1:-1]
    inner_zy[..., 1] += inner_zy[..., 0]
    inner_zy[..., -2] += inner_zy[..., -1]
    return inner_zy[..., 1:-1].contiguous()


def _apply_linear(v: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """``matrix @ v`` for vectors ``v`` ``(..., 3)``, by broadcasting (cheaper than a matrix product
    with 3 columns)."""
    rows = []
    for j in range(3):
        terms = [v[..., k] * float(matrix[j, k]) for k in range(3) if float(matrix[j, k]) != 0.0]
        rows.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(v[..., 0]))
    return torch.stack(rows, dim=-1)


def _sample_points(level: FusedLevel, u: torch.Tensor) -> torch.Tensor:
    """Normalised sample coordinates ``W (x + u(x))`` ``(1, D, H, W, 3)``; one pass on an axis-aligned grid."""
    if level.diagonal:
        return torch.addcmul(level.base, u.movedim(1, -1), level.linear_diag)
    return level.base + _apply_linear(u.movedim(1, -1), level.linear)


def _value_and_gradient(level: FusedLevel, u_inner: torch.Tensor, need_gradient: bool):
    """``(total, ngf, curvature, gradient wrt u_inner or None)`` of the level objective.

    With the raw differences ``B_k = 2 h_k b_k`` of the warped image and ``a'_k = a_k / (2 h_k)``:
    ``a.b = a'.B`` and ``|b|^2 = sum_k B_k^2 / (2 h_k)^2``, and the derivative of ``d`` with respect
    to ``B_k`` is ``f_n a'_k - f_i B_k / (2 h_k)^2`` with ``f_n = factor |b|^2``, ``f_i = factor a.b``.
    """
    spacing = level.grid.spacing
    u = F.pad(u_inner, (1, 1, 1, 1, 1, 1), mode="replicate")
    coords = _sample_points(level, u)
    warped = grid_sample(level.moving, coords, padding_mode="border")

    # NGF at the interior voxels
    e2 = float(level.ngf_eps) ** 2
    ax, ay, az = level.fixed_half
    cx, cy, cz = level.raw_scale
    bx, by, bz = _raw_differences(warped)
    inner = torch.mul(ax, bx).addcmul_(ay, by).addcmul_(az, bz).add_(e2)  # a.b + e^2
    norm_m = torch.mul(bx, bx).mul_(cx).addcmul_(by, by, value=cy).addcmul_(bz, bz, value=cz).add_(e2)
    ratio = torch.mul(inner, level.inv_fixed_norm).div_(norm_m)  # (a.b + e2) / ((|a|^2 + e2)(|b|^2 + e2))
    weight = level.ngf_weight
    if level.moving_valid is not None:
        inside = grid_sample(level.moving_valid, coords, padding_mode="zeros")
        weight = inside if weight is None else weight * inside
    # d = 1 - (a.b + e2) ratio, summed voxel by voxel (d is small where edges align: summing the
    # products and subtracting from the count would lose it to rounding)
    d = torch.mul(inner, ratio).neg_().add_(1.0)
    if weight is None:
        scale = 1.0 / d.numel()
        ngf = d.sum() * scale
        w_int = None
    else:
        w_int = weight[:, :, 1:-1, 1:-1, 1:-1].expand_as(inner)
        total_w = w_int.sum().clamp_min(torch.finfo(inner.dtype).tiny)
        ngf = (d * w_int).sum() / total_w
        scale = 1.0 / total_w
    del d

    # curvature
    lap = interior_laplacian(u, spacing)
    count_lap = lap.numel()
    curv = 0.5 * torch.dot(lap.reshape(-1), lap.reshape(-1)) / count_lap
    total = ngf + level.alpha * curv
    if not need_gradient:
        return total, ngf, curv, None

    # d d / d B_k, weighted and scaled to the mean: factor = -2 (a.b + e2) / (|a|^2 + e2) / (|b|^2 + e2)^2
    # (``scale`` may be a tensor: it only multiplies tensors, so nothing waits for a device)
    f_n = ratio * (-2.0 * scale) if w_int is None else (ratio * w_int).mul_(-2.0 * scale)  # factor |b|^2
    f_i = torch.mul(f_n, inner).div_(norm_m)  # factor a.b
    gx = torch.mul(f_n, ax).addcmul_(f_i, bx, value=-cx)
    gy = torch.mul(f_n, ay).addcmul_(f_i, by, value=-cy)
    gz = torch.mul(f_n, az).addcmul_(f_i, bz, value=-cz)
    grad_warped = _raw_differences_adjoint(gx, gy, gz, warped.shape)
    grad_coords = sampler_backward(grad_warped, level.moving, coords, "bilinear", "border")
    grad_u = torch.zeros_like(u)
    _add_laplacian_adjoint(grad_u, lap, spacing, level.alpha / count_lap)
    if level.diagonal:
        grad_u.addcmul_(grad_coords.movedim(-1, 1), level.linear_diag.view(1, 3, 1, 1, 1))
    else:
        grad_u += _apply_linear(grad_coords, level.linear.T).movedim(-1, 1)
    return total, ngf, curv, _fold_outer_layer(grad_u)


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
