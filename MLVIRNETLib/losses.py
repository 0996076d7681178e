"""Registration losses of mlVIRNET: NGF distance, curvature regulariser and mask alignment.

The training objective is eq. (2) of the paper,

    J(y) = D_NGF(F, M∘y) + alpha * R_curv(u) + beta/2 * ||b_F - b_M∘y||^2,

with ``y(x) = x + u(x)``. Every term here is a *mean* over voxels (not an integral), so the values
do not grow with the image size; ``alpha`` and ``beta`` in :class:`LossWeights` are meant for
that normalisation.

Conventions shared by all functions:

* Images, masks and weights are ``(N, C, D, H, W)`` tensors (``D = z``, ``H = y``, ``W = x``).
* ``spacing`` is the voxel size ``(sx, sy, sz)`` in mm in **x, y, z order** (``ImageGrid.spacing``).
  Derivatives are taken along the index axes and divided by this spacing, which gives the
  physical gradient in the image's own orthonormal frame. Both NGF and the curvature term only use
  rotation-invariant quantities of it (inner products, norms, the Laplacian), so the grid's
  direction matrix does not enter.
* Finite differences are central and are evaluated on the **interior** voxels only (those with a
  neighbour on both sides along every axis); the outermost voxel layer contributes no term. This
  needs at least 3 voxels along every axis. No padding is involved, so no artificial boundary
  values enter the losses, and the curvature of an affine field is exactly zero.
* Reductions are computed in float32 when the inputs are float16/bfloat16 (e.g. under
  ``torch.autocast``); float32 and float64 inputs keep their precision. Every loss returns a
  0-dimensional tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "LossWeights",
    "ngf",
    "curvature",
    "mask_loss",
    "registration_loss",
    "NGFLoss",
    "CurvatureLoss",
    "MaskLoss",
    "RegistrationLoss",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _as_compute(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is half precision or not floating point, else unchanged."""
    if t.dtype in _LOW_PRECISION or not t.is_floating_point():
        return t.float()
    return t


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        s = tuple(float(v) for v in spacing)
    except TypeError as exc:
        raise ValueError(f"spacing must be 3 positive mm values (sx, sy, sz), got {spacing!r}") from exc
    if len(s) != 3 or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing must be 3 positive finite mm values (sx, sy, sz), got {spacing!r}")
    return s  # type: ignore[return-value]


def _check_5d(t: torch.Tensor, name: str, channels: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, C, D, H, W), got {type(t).__name__}")
    if t.ndim != 5:
        raise ValueError(f"{name} must have shape (N, C, D, H, W), got {tuple(t.shape)}")
    if channels is not None and t.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got shape {tuple(t.shape)}")
    if min(t.shape[2:]) < 3:
        raise ValueError(
            f"{name} needs at least 3 voxels along every spatial axis for central differences, "
            f"got shape {tuple(t.shape)}"
        )


def _check_weights(mask: torch.Tensor | None, like: torch.Tensor, name: str) -> torch.Tensor | None:
    """Validate an optional weight volume against ``like`` ``(N, C, D, H, W)``; return it in float."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim != 5:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must have shape (N, 1, D, H, W), got {shape}")
    n, c = like.shape[:2]
    if mask.shape[0] != n or mask.shape[1] not in (1, c) or mask.shape[2:] != like.shape[2:]:
        raise ValueError(
            f"{name} shape {tuple(mask.shape)} does not fit image shape {tuple(like.shape)} "
            f"(expected ({n}, 1, ...) or ({n}, {c}, ...) with the same spatial shape)"
        )
    return _as_compute(mask)


def _interior(t: torch.Tensor) -> torch.Tensor:
    """Drop the outermost voxel layer: ``(N, C, D, H, W) -> (N, C, D-2, H-2, W-2)``."""
    return t[:, :, 1:-1, 1:-1, 1:-1]


def central_gradient(image: torch.Tensor, spacing: tuple[float, float, float]) -> tuple[torch.Tensor, ...]:
    """Central differences on the interior, in intensity per mm.

    Args:
        image: ``(N, C, D, H, W)``.
        spacing: ``(sx, sy, sz)`` mm.

    Returns:
        ``(gx, gy, gz)``, each ``(N, C, D-2, H-2, W-2)``; ``gx`` is along the W axis.
    """
    sx, sy, sz = spacing
    gx = (image[:, :, 1:-1, 1:-1, 2:] - image[:, :, 1:-1, 1:-1, :-2]) / (2.0 * sx)
    gy = (image[:, :, 1:-1, 2:, 1:-1] - image[:, :, 1:-1, :-2, 1:-1]) / (2.0 * sy)
    gz = (image[:, :, 2:, 1:-1, 1:-1] - image[:, :, :-2, 1:-1, 1:-1]) / (2.0 * sz)
    return gx, gy, gz


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``(N, C, d, h, w)``, weighted by ``weights`` ``(N, 1 or C, d, h, w)``.

    With all weights zero the result is 0 (not NaN).
    """
    if weights is None:
        return values.mean()
    w = weights.expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(torch.finfo(values.dtype).tiny)


# ----------------------------------------------------------------------------------------------
# functional losses
# ----------------------------------------------------------------------------------------------
def ngf(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    spacing: Sequence[float],
    eps: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised gradient field distance (Haber & Modersitzki 2006), averaged over voxels.

    At every interior voxel, with physical gradients ``a = grad F`` and ``b = grad M`` (intensity
    per mm, central differences) and ``eps`` the edge parameter (same unit)::

        d = 1 - (<a, b> + eps^2)^2 / ((|a|^2 + eps^2) * (|b|^2 + eps^2))

    ``d`` lies in ``[0, 1]`` by Cauchy-Schwarz: 0 where the gradients are parallel or anti-parallel
    (or both flat), 1 where they are orthogonal and strong. The result is the mean of ``d`` over
    the interior voxels (and channels), weighted by ``mask`` if given.

    Intensity changes: an offset ``I + b`` never changes ``d``. Scaling *both* images by ``a != 0``
    together with ``eps -> |a| eps`` leaves ``d`` exactly unchanged; scaling only one image by
    ``a != 0`` changes ``d`` by ``O(eps^2 / |grad|^2)``, i.e. ``d`` is invariant in the limit
    ``eps -> 0`` wherever the gradients do not vanish. Choose ``eps`` well below the gradient
    magnitude of the edges that should be aligned and above that of noise.

    Args:
        fixed: ``(N, C, D, H, W)`` fixed image.
        moving: same shape, the (warped) moving image on the same grid.
        spacing: ``(sx, sy, sz)`` voxel size in mm, x y z order.
        eps: edge parameter, intensity units per mm, ``>= 0``.
        mask: optional voxel weights ``(N, 1, D, H, W)`` or ``(N, C, D, H, W)`` (e.g. a lung mask);
            the result is then ``sum(w d) / sum(w)`` over the interior.

    Returns:
        0-dim tensor.
    """
    _check_5d(fixed, "fixed")
    _check_5d(moving, "moving")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed shape {tuple(fixed.shape)} and moving shape {tuple(moving.shape)} differ")
    s = _check_spacing(spacing)
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"ngf eps must be a finite value >= 0, got {eps}")
    w = _check_weights(mask, fixed, "ngf mask")

    f = _as_compute(fixed)
    m = _as_compute(moving)
    fx, fy, fz = central_gradient(f, s)
    mx, my, mz = central_gradient(m, s)
    e2 = eps * eps
    inner = fx * mx + fy * my + fz * mz + e2
    norm_f = fx * fx + fy * fy + fz * fz + e2
    norm_m = mx * mx + my * my + mz * mz + e2
    denom = norm_f * norm_m
    if e2 == 0.0:
        # flat regions: 0/0; define d = 0 there (both gradients vanish -> nothing to align)
        tiny = torch.finfo(denom.dtype).tiny
        d = 1.0 - inner * inner / denom.clamp_min(tiny)
        d = torch.where(denom > tiny, d, torch.zeros_like(d))
    else:
        d = 1.0 - inner * inner / denom
    return _weighted_mean(d, None if w is None else _interior(w))


def curvature(displacement: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Curvature regulariser ``R = 1/2 mean_{voxels, c} (Laplace u_c)^2``.

    The Laplacian uses the second central difference along each index axis divided by the squared
    physical spacing, evaluated at interior voxels only (the outermost layer has no term; boundary
    voxels still enter as neighbours). The mean runs over interior voxels, the 3 components and the
    batch. ``R`` is exactly 0 for affine displacements and equals ``1/2 mean_c (Laplace u_c)^2`` for
    quadratic ones (the difference quotient is exact for polynomials of degree <= 3). Because the
    Laplacian and the Euclidean norm are rotation invariant, the value does not depend on the grid
    direction or on the frame (LPS or index axes) of the vector components.

    Args:
        displacement: ``(N, 3, D, H, W)`` displacement in mm.
        spacing: ``(sx, sy, sz)`` voxel size in mm of its grid, x y z order.

    Returns:
        0-dim tensor, unit mm^-2.
    """
    _check_5d(displacement, "displacement", channels=3)
    lap = interior_laplacian(_as_compute(displacement), _check_spacing(spacing))
    return 0.5 * (lap * lap).mean()


def interior_laplacian(u: torch.Tensor, spacing: tuple[float, float, float]) -> torch.Tensor:
    """Second central differences summed over the axes, per mm^2, at the interior voxels of
    ``(N, C, D, H, W)``: ``(N, C, D-2, H-2, W-2)``.

    Grouped as ``sum_a (u[i + e_a] + u[i - e_a]) / s_a^2 - 2 (sum_a 1 / s_a^2) u[i]``: few passes
    over the volume (the refinement evaluates it at every iteration), and differentiable (the
    in-place steps act on new tensors only)."""
    cx, cy, cz = (1.0 / (float(s) * float(s)) for s in spacing)
    lap = torch.add(u[:, :, 1:-1, 1:-1, 2:], u[:, :, 1:-1, 1:-1, :-2]).mul_(cx)
    lap.add_(torch.add(u[:, :, 1:-1, 2:, 1:-1], u[:, :, 1:-1, :-2, 1:-1]), alpha=cy)
    lap.add_(torch.add(u[:, :, 2:, 1:-1, 1:-1], u[:, :, :-2, 1:-1, 1:-1]), alpha=cz)
    return lap.add_(u[:, :, 1:-1, 1:-1, 1:-1], alpha=-2.0 * (cx + cy + cz))


def mask_loss(mask_fixed: torch.Tensor, mask_warped: torch.Tensor) -> torch.Tensor:
    """Mask alignment term ``1/2 mean (b_F - b_M∘y)^2`` (the ``beta/2 ||.||^2`` term of eq. (2)).

    Args:
        mask_fixed: ``(N, C, D, H, W)`` fixed mask(s), values in ``[0, 1]`` (C = 1 for a lung
            mask, C > 1 for one channel per lobe).
        mask_warped: same shape, the moving mask(s) warped into the fixed grid (linearly
            interpolated, so also in ``[0, 1]``).

    Returns:
        0-dim tensor; the mean runs over batch, channels and all voxels, so it is the fraction of
        mismatched voxels over 2 for binary masks, independent of the number of channels.
    """
    for t, name in ((mask_fixed, "mask_fixed"), (mask_warped, "mask_warped")):
        if not isinstance(t, torch.Tensor) or t.ndim != 5:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape (N, C, D, H, W), got {shape}")
    if mask_fixed.shape != mask_warped.shape:
        raise ValueError(
            f"mask_fixed shape {tuple(mask_fixed.shape)} and mask_warped shape {tuple(mask_warped.shape)} differ"
        )
    diff = _as_compute(mask_fixed) - _as_compute(mask_warped)
    return 0.5 * (diff * diff).mean()


@dataclass
class LossWeights:
    """Weights of eq. (2): ``ngf + alpha * curvature + beta * mask_loss``.

    Attributes:
        alpha: curvature weight, mm^2 (curvature is in mm^-2 and NGF is unit-less).
        beta: mask alignment weight (unit-less).
        ngf_eps: NGF edge parameter, intensity units per mm. The default suits intensities scaled
            to about ``[0, 1]`` over the lung window at 1-3 mm voxels.
        truth: training only, per mm^2: weight of :func:`displacement_error` against a known
            deformation (synthetic pairs); 0 = the paper's unsupervised loss.
        identity: training only, per mm^2: weight of the mean squared displacement inside the
            fixed lungs (over the whole grid for pairs without lung masks) that the net predicts
            for the pair's fixed image given as both inputs (the identity is the answer there);
            0 = no such term.

    The defaults are our starting point for the mean-normalised terms of this module, not values
    copied from the paper (whose terms are integrals); tune them on validation data.
    """

    alpha: float = 1.0
    beta: float = 1.0
    ngf_eps: float = 0.01
    truth: float = 0.0
    identity: float = 0.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "ngf_eps", "truth", "identity"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"LossWeights.{name} must be a finite value >= 0, got {getattr(self, name)!r}")
            setattr(self, name, v)


def displacement_error(displacement: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance, mm^2, between a predicted and a known displacement on one grid.

    Args:
        displacement, truth: ``(N, 3, D, H, W)`` displacements in mm.
        weight: optional ``(N, 1, D, H, W)`` voxel weights (e.g. the fixed lungs); the mean is
            weighted by them.

    Raises:
        ValueError: shapes that differ or are not ``(N, 3, D, H, W)``.
    """
    _check_5d(displacement, "displacement", channels=3)
    if truth.shape != displacement.shape:
        raise ValueError(f"truth shape {tuple(truth.shape)} differs from displacement shape {tuple(displacement.shape)}")
    sq = ((displacement - truth) ** 2).sum(dim=1, keepdim=True)
    if weight is None:
        return sq.mean()
    return (sq * weight).sum() / weight.sum().clamp_min(1e-6)


def registration_loss(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    displacement: torch.Tensor,
    spacing: Sequence[float],
    weights: LossWeights,
    mask_fixed: torch.Tensor | None = None,
    mask_warped: torch.Tensor | None = None,
    ngf_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (2): ``ngf(F, M∘y) + alpha * curvature(u) + beta * mask_loss(b_F, b_M∘y)``.

    Args:
        fixed: ``(N, 1, D, H, W)`` fixed image.
        warped: same shape, moving image warped by ``y`` onto the fixed grid.
        displacement: ``(N, 3, D, H, W)`` displacement ``u`` in mm on the fixed grid.
        spacing: ``(sx, sy, sz)`` mm of the fixed grid.
        weights: the term weights and NGF ``eps``.
        mask_fixed, mask_warped: optional ``(N, C, D, H, W)`` masks; give both or neither. Without
            them the mask term is 0.
        ngf_mask: optional ``(N, 1, D, H, W)`` voxel weights for the NGF mean.

    Returns:
        ``(total, terms)`` with ``terms`` holding the 0-dim tensors ``'ngf'``, ``'curvature'``,
        ``'mask'`` (unweighted) and ``'total'`` (weighted sum, the same tensor as ``total``).
    """
    _check_5d(fixed, "fixed")
    _check_5d(displacement, "displacement", channels=3)
    if displacement.shape[0] != fixed.shape[0] or displacement.shape[2:] != fixed.shape[2:]:
        raise ValueError(
            f"displacement shape {tuple(displacement.shape)} does not match fixed shape {tuple(fixed.shape)} "
            "(expected (N, 3, D, H, W) on the fixed grid)"
        )
    if (mask_fixed is None) != (mask_warped is None):
        raise ValueError("give both mask_fixed and mask_warped, or neither")
    if mask_fixed is not None and (mask_fixed.shape[0] != fixed.shape[0] or mask_fixed.shape[2:] != fixed.shape[2:]):
        raise ValueError(f"mask_fixed shape {tuple(mask_fixed.shape)} does not fit fixed shape {tuple(fixed.shape)}")
    d = ngf(fixed, warped, spacing, eps=weights.ngf_eps, mask=ngf_mask)
    r = curvature(displacement, spacing)
    if mask_fixed is not None:
        b = mask_loss(mask_fixed, mask_warped)
    else:
        b = torch.zeros((), dtype=d.dtype, device=d.device)
    total = d + weights.alpha * r + weights.beta * b
    return total, {"ngf": d, "curvature": r, "mask": b, "total": total}


# ----------------------------------------------------------------------------------------------
# module wrappers
# ----------------------------------------------------------------------------------------------
class NGFLoss(nn.Module):
    """:func:`ngf` as a module; ``forward(fixed, moving, spacing, mask=None)``."""

    def __init__(self, eps: float = 0.01) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        spacing: Sequence[float],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return ngf(fixed, moving, spacing, eps=self.eps, mask=mask)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class CurvatureLoss(nn.Module):
    """:func:`curvature` as a module; ``forward(displacement, spacing)``."""

    def forward(self, displacement: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
        return curvature(displacement, spacing)


class MaskLoss(nn.Module):
    """:func:`mask_loss` as a module; ``forward(mask_fixed, mask_warped)``."""

    def forward(self, mask_fixed: torch.Tensor, mask_warped: torch.Tensor) -> torch.Tensor:
        return mask_loss(mask_fixed, mask_warped)


class RegistrationLoss(nn.Module):
    """:func:`registration_loss` with fixed :class:`LossWeights`."""

    def __init__(self, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights if weights is not None else LossWeights()

    def forward(
        self,
        fixed: torch.Tensor,
        warped: torch.Tensor,
        displacement: torch.Tensor,
        spacing: Sequence[float],
        mask_fixed: torch.Tensor | None = None,
        mask_warped: torch.Tensor | None = None,
        ngf_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return registration_loss(
            fixed, warped, displacement, spacing, self.weights,
            mask_fixed=mask_fixed, mask_warped=mask_warped, ngf_mask=ngf_mask,
        )

    def extra_repr(self) -> str:
        w = self.weights
        return f"alpha={w.alpha}, beta={w.beta}, ngf_eps={w.ngf_eps}"
