"""Instance optimisation: variational multilevel refinement of a deformation.

Minimises the mlVIRNET objective (:func:`MLVIRNETLib.losses.registration_loss`)

    J(u) = NGF(F, M∘y) + alpha * curvature(u) + beta * mask_loss(b_F, b_M∘y),   y(x) = x + u(x)

directly over the displacement ``u`` of one image pair, coarse to fine: on each level the
displacement lives on a pyramid level of the network grid (:func:`MLVIRNETLib.core.pyramid.build_pyramid`;
``level_factors=(4, 2)`` means 1/4 then 1/2 of the network grid per axis), starts from the
previous level's result (or from ``initial``: a network output, an affine map, or identity)
prolongated trilinearly, and is optimised for a fixed number of iterations. The result is
returned on the network grid. With ``iterations=0`` the initial deformation is returned unchanged.

Without any network this is a complete multilevel variational registration on its own (the
classic scheme that mlVIRNET learns to imitate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid, check_volume, sample
from ..core.progress import RegistrationCancelled
from ..core.pyramid import build_pyramid
from ..losses import LossWeights, registration_loss

LBFGS_TOLERANCE_GRAD = 1e-5
"""L-BFGS stops when every entry of the gradient of the summed loss (per mm) is below this."""

LBFGS_TOLERANCE_CHANGE = 1e-6
"""L-BFGS stops when a step moves no voxel by more than this many mm (or the summed loss changes less)."""

FIRST_STEP_VOXELS = 0.5
"""L-BFGS's first trial step moves the fastest voxel by this fraction of the level's voxel size."""

ADAM_EPS = 1e-4
"""Adam's ``eps`` for the summed loss (gradients of real misalignment are 1e-3..1 per mm)."""


@dataclass
class RefineOptions:
    """Settings of :func:`refine`.

    Attributes:
        iterations: optimiser iterations per level (int: the same on every level; or one per
            level, coarse to fine). ``0`` skips refinement.
        level_factors: downsampling factors of the levels relative to the network grid, coarse
            to fine, powers of two (``1`` = the network grid itself).
        alpha: curvature weight, mm^2 (see :class:`MLVIRNETLib.losses.LossWeights`).
        beta: mask alignment weight (used only when both masks are given).
        ngf_eps: NGF edge parameter, normalised intensity per mm.
        optimizer: ``"adam"`` or ``"lbfgs"``.
        learning_rate: Adam step, mm per iteration (scaled by the level's voxel size / the
            finest level's voxel size); L-BFGS uses a strong-Wolfe line search and ignores it.
    """

    iterations: int | Sequence[int] = (150, 60)
    level_factors: tuple[int, ...] = (4, 2)
    alpha: float = 100.0
    beta: float = 0.0
    ngf_eps: float = 0.003
    optimizer: str = "lbfgs"
    learning_rate: float = 0.3

    def __post_init__(self) -> None:
        factors = tuple(int(f) for f in self.level_factors)
        if not factors or any(f < 1 or f & (f - 1) for f in factors):
            raise ValueError(f"level_factors must be powers of two >= 1, got {self.level_factors}")
        self.level_factors = factors
        if self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        its = self.iterations_per_level()
        if any(i < 0 for i in its):
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        LossWeights(self.alpha, self.beta, self.ngf_eps)  # validates

    def iterations_per_level(self) -> list[int]:
        """Iterations for each level in ``level_factors`` order."""
        if isinstance(self.iterations, (int, float)):
            return [int(self.iterations)] * len(self.level_factors)
        its = [int(i) for i in self.iterations]
        if len(its) != len(self.level_factors):
            raise ValueError(
                f"iterations {tuple(its)} must have one entry per level factor {tuple(self.level_factors)}"
            )
        return its


@dataclass
class RefineResult:
    """Output of :func:`refine`.

    Attributes:
        deformation: the refined deformation on the network grid (``(1, 3, D, H, W)`` LPS mm).
        levels: the optimised deformation of every level, on its level grid, coarse to fine.
        losses: final loss terms per level (floats), coarse to fine.
    """

    deformation: Deformation
    levels: list[Deformation] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)


def refine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grid: ImageGrid,
    initial: Deformation | None = None,
    options: RefineOptions | None = None,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    ngf_mask: torch.Tensor | None = None,
    moving_valid: torch.Tensor | None = None,
) -> RefineResult:
    """Refine ``initial`` by minimising NGF + alpha * curvature (+ beta * masks) coarse to fine.

    Args:
        fixed: ``(1, 1, D, H, W)`` normalised fixed image on ``grid`` (the network grid).
        moving: ``(1, 1, D, H, W)`` normalised moving image on the same grid (already affinely
            pre-aligned if there is an affine).
        grid: the common grid; every size must be divisible by the largest level factor.
        initial: starting deformation (any grid; evaluated on each level grid), ``None`` for identity.
        options: see :class:`RefineOptions`.
        fixed_mask, moving_mask: optional ``(1, 1, D, H, W)`` masks in ``[0, 1]`` on ``grid``; the
            mask term needs both and ``beta > 0``.
        progress: called with ``(fraction in [0, 1], message)``.
        cancel: polled every iteration; returning True raises :class:`RegistrationCancelled`.
        ngf_mask: optional ``(1, 1, D, H, W)`` voxel weights of the NGF term on ``grid`` (e.g. where
            the fixed image has data).
        moving_valid: optional ``(1, 1, D, H, W)`` in ``[0, 1]`` on ``grid``: where the (pre-aligned)
            moving image has data (``PreprocessedPair.moving_valid``). NGF then ignores every voxel
            whose *current* sample point ``y(x)`` falls within two voxels of the moving field of view's
            edge or outside it, so the artificial edge there pulls nothing.

    Returns:
        :class:`RefineResult` with the deformation on ``grid``.
    """
    opts = options if options is not None else RefineOptions()
    check_volume(fixed, grid, "fixed")
    check_volume(moving, grid, "moving")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed shape {tuple(fixed.shape)} and moving shape {tuple(moving.shape)} differ")
    its = opts.iterations_per_level()
    device = fixed.device
    if initial is None:
        initial = Deformation.identity(grid, device=device)
    if sum(its) == 0:
        return RefineResult(initial.on_grid(grid), [], [])

    max_factor = max(opts.level_factors)
    n_pyr = int(math.log2(max_factor)) + 1
    if any(s % max_factor for s in grid.size):
        raise ValueError(f"grid size {grid.size} must be divisible by the largest level factor {max_factor}")
    use_masks = fixed_mask is not None and moving_mask is not None and opts.beta > 0
    fixed_pyr = build_pyramid(fixed.float(), grid, n_pyr)
    moving_pyr = build_pyramid(moving.float(), grid, n_pyr)
    fmask_pyr = build_pyramid(fixed_mask.float(), grid, n_pyr) if use_masks else None
    mmask_pyr = build_pyramid(moving_mask.float(), grid, n_pyr) if use_masks else None
    ngf_pyr = build_pyramid(ngf_mask.float(), grid, n_pyr) if ngf_mask is not None else None
    valid_pyr = build_pyramid(moving_valid.float(), grid, n_pyr) if moving_valid is not None else None
    weights = LossWeights(opts.alpha, opts.beta if use_masks else 0.0, opts.ngf_eps)

    total = max(1, sum(its))
    done = 0
    current = initial
    levels: list[Deformation] = []
    losses: list[dict[str, float]] = []
    finest_spacing = min(grid.spacing) * min(opts.level_factors)
    for factor, n_it in zip(opts.level_factors, its):
        p = int(math.log2(factor))
        f_l, g_l = fixed_pyr[p]
        m_l = moving_pyr[p][0]
        fm_l = fmask_pyr[p][0] if fmask_pyr is not None else None
        mm_l = mmask_pyr[p][0] if mmask_pyr is not None else None
        nm_l = ngf_pyr[p][0] if ngf_pyr is not None else None
        # eroded validity: a min filter of 5 voxels keeps the central differences off the edge
        valid_l = -F.max_pool3d(-valid_pyr[p][0], 5, stride=1, padding=2) if valid_pyr is not None else None
        if min(g_l.size) < 3:
            raise ValueError(f"refinement level grid {g_l.size} needs at least 3 voxels per axis; use smaller level factors")
        u0 = current.on_grid(g_l).displacement.detach().to(device=device, dtype=torch.float32)
        # the unknowns are the interior voxels; the outermost layer copies its inner neighbour. The
        # loss terms only see the interior, so a free outer layer would be unconstrained and fold.
        u_inner = u0[:, :, 1:-1, 1:-1, 1:-1].clone().requires_grad_(True)
        x = g_l.world_points(device=device, dtype=torch.float32)[None]
        spacing = g_l.spacing

        def full() -> torch.Tensor:
            return F.pad(u_inner, (1, 1, 1, 1, 1, 1), mode="replicate")

        def objective() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            u = full()
            pts = x + u.movedim(1, -1)
            warped = sample(m_l, g_l, pts)
            mw = sample(mm_l, g_l, pts, padding_mode="zeros") if mm_l is not None else None
            weight = nm_l
            if valid_l is not None:
                with torch.no_grad():
                    inside = sample(valid_l, g_l, pts.detach(), padding_mode="zeros")
                weight = inside if weight is None else weight * inside
            return registration_loss(f_l, warped, u, spacing, weights, fm_l, mw, ngf_mask=weight)

        n_vox = float(math.prod(g_l.size))
        if n_it > 0:
            lr = opts.learning_rate * min(g_l.spacing) / finest_spacing
            if opts.optimizer == "adam":
                # summed loss (see below) and an ``eps`` well above float noise: Adam divides by the
                # gradient's running RMS, so pure rounding noise would otherwise get full-size steps
                optimiser = torch.optim.Adam([u_inner], lr=lr, eps=ADAM_EPS)
                for it in range(n_it):
                    _check_cancel(cancel)
                    optimiser.zero_grad(set_to_none=True)
                    loss, _ = objective()
                    (loss * n_vox).backward()
                    optimiser.step()
                    done += 1
                    _report(progress, done / total, factor, it, n_it, loss)
            else:
                # The loss is a mean over voxels; L-BFGS sees it times the voxel count (a sum), so
                # that the gradient has a scale: when no entry exceeds ``LBFGS_TOLERANCE_GRAD`` the
                # level is converged (identical images give pure rounding noise, which L-BFGS would
                # otherwise amplify into large steps). The unknowns are rescaled, ``u = scale * v``,
                # so that torch's first trial step (``1 / |g|_1``) moves the fastest voxel by
                # ``FIRST_STEP_VOXELS`` of the level's voxel size; unscaled, it is a tiny step into
                # the kink that trilinear interpolation has at voxel centres, which the line search
                # accepts and the optimisation stalls.
                loss0, _ = objective()
                (loss0 * n_vox).backward()
                g = u_inner.grad.detach()
                g_max, g_sum = float(g.abs().max()), float(g.abs().sum())
                u_inner.grad = None
                if g_max > LBFGS_TOLERANCE_GRAD:
                    step = FIRST_STEP_VOXELS * min(g_l.spacing)
                    scale = step * g_sum / g_max  # first step min(1, 1/|g_v|_1) * g_v moves u by ``step``
                    if scale * g_sum < 1.0:
                        scale = math.sqrt(step / g_max)
                    v = (u_inner.detach() / scale).requires_grad_(True)
                    optimiser = torch.optim.LBFGS(
                        [v], lr=1.0, max_iter=n_it, history_size=10, line_search_fn="strong_wolfe",
                        tolerance_grad=LBFGS_TOLERANCE_GRAD * scale, tolerance_change=LBFGS_TOLERANCE_CHANGE / scale,
                    )
                    counter = {"n": 0}

                    def closure() -> torch.Tensor:
                        _check_cancel(cancel)
                        optimiser.zero_grad(set_to_none=True)
                        u_inner.data = v.detach() * scale
                        u_inner.grad = None
                        loss, _ = objective()
                        (loss * n_vox).backward()
                        v.grad = u_inner.grad * scale
                        counter["n"] += 1
                        k = min(counter["n"], n_it)
                        _report(progress, (done + k) / total, factor, k - 1, n_it, loss)
                        return loss.detach() * n_vox

                    optimiser.step(closure)
                    with torch.no_grad():
                        u_inner.data = v.detach() * scale
                        u_inner.grad = None
                done += n_it
        with torch.no_grad():
            _, terms = objective()
        losses.append({k: float(v) for k, v in terms.items()})
        with torch.no_grad():
            current = Deformation(g_l, full().detach().contiguous())
        levels.append(current)
    if progress is not None:
        progress(1.0, "refinement done")
    return RefineResult(current.on_grid(grid), levels, losses)


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise RegistrationCancelled("registration cancelled")


def _report(
    progress: Callable[[float, str], None] | None, fraction: float, factor: int, it: int, n_it: int, loss: torch.Tensor
) -> None:
    if progress is not None and (it % 10 == 0 or it == n_it - 1):
        progress(min(1.0, fraction), f"refine 1/{factor}: iteration {it + 1}/{n_it}, loss {float(loss.detach()):.4f}")
