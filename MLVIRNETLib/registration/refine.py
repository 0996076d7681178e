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
from ..core.filters import box_max
from ..core.geometry import ImageGrid
from ..core.memo import Memo, no_memo
from ..core.optimize import lbfgs
from ..core.progress import CancelFn, Progress, ProgressFn
from ..core.pyramid import build_pyramid
from ..core.sampling import check_volume, sample
from ..losses import LossWeights, registration_loss
from .fused_objective import FusedLevel, fused_level_loss

LBFGS_TOLERANCE_GRAD = 1e-5
"""L-BFGS stops when every entry of the gradient of the summed loss (per mm) is below this."""

LBFGS_TOLERANCE_CHANGE = 1e-6
"""L-BFGS stops when a step moves no voxel by more than this many mm (or the summed loss changes less)."""

LBFGS_HISTORY = 5
"""Pairs ``(s, y)`` that L-BFGS keeps (each pair is two copies of the level's displacement)."""

FIRST_STEP_VOXELS = 0.25
"""L-BFGS's first trial step moves the fastest voxel by this fraction of the level's voxel size."""

ADAM_EPS = 1e-4
"""Adam's ``eps`` for the summed loss (gradients of real misalignment are 1e-3..1 per mm)."""

_Objective = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``objective() -> (loss, terms)`` of one level: the mean loss (0-dim) and its terms, see
:func:`MLVIRNETLib.losses.registration_loss`."""

_Report = Callable[[int, torch.Tensor | None], None]
"""``report(iterations_done, loss or None)`` after each iteration of one level's optimiser."""


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
        identity_start: the first level starts from the identity instead of ``initial`` when the
            identity has the lower objective there (a network's small spurious motion on nearly
            identical scans is then not kept where the images give no gradient to undo it).
        smoothing_voxels: L-BFGS only. ``rho > 0`` preconditions every L-BFGS direction with
            ``P = (I + rho^4 L^2)^-1``, ``L`` the Laplacian in units of the level's smallest voxel
            (see :func:`smoothing_preconditioner`): a direction loses its detail finer than about
            ``rho`` voxels, so a step can move the smooth part of the displacement as far as the
            curvature term lets it instead of as far as its stiffest detail allows. The minimum
            sought is the same; ``0`` turns it off.
    """

    iterations: int | Sequence[int] = (40, 20)
    level_factors: tuple[int, ...] = (4, 2)
    alpha: float = 100.0
    beta: float = 0.0
    ngf_eps: float = 0.003
    optimizer: str = "lbfgs"
    learning_rate: float = 0.3
    identity_start: bool = True
    smoothing_voxels: float = 2.0

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
        if not (self.smoothing_voxels >= 0 and math.isfinite(self.smoothing_voxels)):
            raise ValueError(f"smoothing_voxels must be a finite number >= 0, got {self.smoothing_voxels}")

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
    progress: ProgressFn | Progress | None = None,
    cancel: CancelFn | None = None,
    ngf_mask: torch.Tensor | None = None,
    moving_valid: torch.Tensor | None = None,
    memo: Memo = no_memo,
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
        progress: called with ``(fraction in [0, 1], message)`` after every optimiser iteration (at
            most every ``Progress.min_interval_s``), or a :class:`~MLVIRNETLib.core.progress.Progress`
            (e.g. a caller's stage), which is then used as it is.
        cancel: polled before every evaluation of the objective; returning True raises
            :class:`~MLVIRNETLib.core.progress.RegistrationCancelled`.
        ngf_mask: optional ``(1, 1, D, H, W)`` voxel weights of the NGF term on ``grid`` (e.g. where
            the fixed image has data).
        moving_valid: optional ``(1, 1, D, H, W)`` in ``[0, 1]`` on ``grid``: where the (pre-aligned)
            moving image has data (``PreprocessedPair.moving_valid``). NGF then ignores every voxel
            whose *current* sample point ``y(x)`` falls within two voxels of the moving field of view's
            edge or outside it, so the artificial edge there pulls nothing.
        memo: where the pyramids of ``fixed`` (and ``fixed_mask``) are kept for the next moving
            image (:mod:`MLVIRNETLib.core.memo`; a cache keyed to this ``fixed`` and ``grid``);
            default: built each time.

    Returns:
        :class:`RefineResult` with the deformation on ``grid``.

    Raises:
        RegistrationCancelled: ``cancel()`` returned True.
    """
    prog = Progress.of(progress, cancel)
    opts = options if options is not None else RefineOptions()
    check_volume(fixed, grid, "fixed")
    check_volume(moving, grid, "moving")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed shape {tuple(fixed.shape)} and moving shape {tuple(moving.shape)} differ")
    iterations = opts.iterations_per_level()
    compare_with_identity = opts.identity_start and initial is not None
    if initial is None:
        initial = Deformation.identity(grid, device=fixed.device)
    if sum(iterations) == 0:
        return RefineResult(initial.on_grid(grid), [], [])

    use_masks = fixed_mask is not None and moving_mask is not None and opts.beta > 0
    pyramid = _build_levels(
        fixed, moving, grid, opts.level_factors, fixed_mask if use_masks else None,
        moving_mask if use_masks else None, ngf_mask, moving_valid, memo,
    )
    weights = LossWeights(opts.alpha, opts.beta if use_masks else 0.0, opts.ngf_eps)
    finest_spacing = min(grid.spacing) * min(opts.level_factors)
    total = sum(iterations)  # > 0 here
    done = 0
    current = initial
    levels: list[Deformation] = []
    losses: list[dict[str, float]] = []
    if compare_with_identity:
        current = _better_start(pyramid[0], initial, weights)
    for level, n_it in zip(pyramid, iterations):
        learning_rate = opts.learning_rate * min(level.grid.spacing) / finest_spacing
        report = _level_reporter(prog, level.factor, n_it, done, total, max(level.grid.spacing))
        displacement, terms = _refine_level(
            level, current, n_it, opts.optimizer, learning_rate, weights, prog.check_cancel, report,
            opts.smoothing_voxels,
        )
        losses.append({k: float(v) for k, v in terms.items()})
        current = Deformation(level.grid, displacement)
        levels.append(current)
        done += n_it
    prog(1.0, "refinement done")
    return RefineResult(current.on_grid(grid), levels, losses)


def identity_if_better(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grid: ImageGrid,
    deformation: Deformation,
    options: RefineOptions | None = None,
    moving_valid: torch.Tensor | None = None,
) -> tuple[Deformation, bool]:
    """``(deformation, False)``, or ``(identity, True)`` when the identity has the lower refinement
    objective on the coarsest level of ``options`` (without optimising anything): what a network
    alone should return for scans that did not move.

    Args:
        fixed, moving: ``(1, 1, D, H, W)`` normalised images on ``grid`` (divisible by the coarsest factor).
        grid: their grid.
        deformation: the candidate (any grid).
        options: the objective's weights and levels (default :class:`RefineOptions`).
        moving_valid: as in :func:`refine`.
    """
    opts = options if options is not None else RefineOptions()
    weights = LossWeights(opts.alpha, 0.0, opts.ngf_eps)
    level = _build_levels(fixed, moving, grid, (max(opts.level_factors),), None, None, None, moving_valid)[0]
    chosen = _better_start(level, deformation, weights)
    if chosen is deformation:
        return deformation, False
    return Deformation.identity(grid, device=fixed.device), True


def _better_start(level: "_LevelData", initial: Deformation, weights: LossWeights) -> Deformation:
    """``initial`` or the identity on ``level.grid``, whichever has the lower objective on ``level``."""
    identity = Deformation.identity(level.grid, device=level.fixed.device)
    values = []
    with torch.no_grad():
        for start in (initial, identity):
            u = start.on_grid(level.grid).displacement.to(device=level.fixed.device, dtype=torch.float32)
            loss, _ = _level_objective(level, u[:, :, 1:-1, 1:-1, 1:-1], weights, lambda: None)()
            values.append(float(loss))
    return identity if values[1] < values[0] else initial


def _level_reporter(prog: Progress, factor: int, iterations: int, done: int, total: int,
                    spacing_mm: float) -> _Report:
    """``report(k, loss)`` for one level: ``prog((done + k) / total, message)``; ``done`` and ``total``
    count iterations over all levels. The message names the level's resolution (the fraction of the
    working grid and its coarsest voxel spacing) and the loss only when it is given."""

    def report(k: int, loss: torch.Tensor | None) -> None:
        text = f"refine 1/{factor} resolution, {spacing_mm:.1f} mm: iteration {k}/{iterations}"
        prog((done + k) / total, text if loss is None else f"{text}, loss {float(loss.detach()):.4f}")

    return report


@dataclass
class _LevelData:
    """The inputs of one refinement level, all ``(1, 1, d, h, w)`` on ``grid`` (a pyramid level).

    Attributes:
        factor: downsampling factor of the level relative to the network grid.
        grid: the level grid (same box as the network grid, ``factor`` times coarser).
        fixed, moving: the normalised images.
        fixed_mask, moving_mask: masks in ``[0, 1]`` of the mask term, or None (term off).
        ngf_weight: voxel weights of the NGF term, or None.
        moving_valid: where the moving image has data, eroded by two voxels (``[0, 1]``), or None.
    """

    factor: int
    grid: ImageGrid
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor | None
    moving_mask: torch.Tensor | None
    ngf_weight: torch.Tensor | None
    moving_valid: torch.Tensor | None


def _build_levels(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grid: ImageGrid,
    factors: Sequence[int],
    fixed_mask: torch.Tensor | None,
    moving_mask: torch.Tensor | None,
    ngf_mask: torch.Tensor | None,
    moving_valid: torch.Tensor | None,
    memo: Memo = no_memo,
) -> list[_LevelData]:
    """The data of every level in ``factors`` order from ``(1, 1, D, H, W)`` volumes on ``grid``;
    the fixed image's and mask's pyramids come from ``memo`` (see :func:`refine`).

    Raises:
        ValueError: ``grid`` is not divisible by the largest factor, or a level has fewer than 3
            voxels along an axis.
    """
    max_factor = max(factors)
    if any(s % max_factor for s in grid.size):
        raise ValueError(f"grid size {grid.size} must be divisible by the largest level factor {max_factor}")
    n_pyramid = int(math.log2(max_factor)) + 1

    def pyramid(volume: torch.Tensor | None) -> list[tuple[torch.Tensor, ImageGrid]] | None:
        return build_pyramid(volume.float(), grid, n_pyramid) if volume is not None else None

    key = ("refinement fixed pyramids", n_pyramid, fixed_mask is not None)
    fixed_pyr, fixed_mask_pyr = memo(key, lambda: (pyramid(fixed), pyramid(fixed_mask)))
    moving_pyr, moving_mask_pyr = pyramid(moving), pyramid(moving_mask)
    ngf_pyr, valid_pyr = pyramid(ngf_mask), pyramid(moving_valid)
    levels = []
    for factor in factors:
        p = int(math.log2(factor))
        level_fixed, level_grid = fixed_pyr[p]
        if min(level_grid.size) < 3:
            raise ValueError(
                f"grid size {grid.size} is too small for refinement level factor {factor}: that level would have "
                f"{level_grid.size} voxels and needs at least 3 per axis (a grid of at least {3 * factor} per axis)"
            )
        levels.append(_LevelData(
            factor=factor,
            grid=level_grid,
            fixed=level_fixed,
            moving=moving_pyr[p][0],
            fixed_mask=fixed_mask_pyr[p][0] if fixed_mask_pyr is not None else None,
            moving_mask=moving_mask_pyr[p][0] if moving_mask_pyr is not None else None,
            ngf_weight=ngf_pyr[p][0] if ngf_pyr is not None else None,
            # a min filter of 5 voxels keeps the central differences of NGF off the edge
            moving_valid=-box_max(-valid_pyr[p][0], 2) if valid_pyr is not None else None,
        ))
    return levels


def _refine_level(
    level: _LevelData,
    start: Deformation,
    iterations: int,
    optimizer: str,
    learning_rate: float,
    weights: LossWeights,
    check_cancel: Callable[[], None],
    report: _Report,
    smoothing_voxels: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Optimise the displacement of one level, starting from ``start`` sampled on ``level.grid``.

    The unknowns are the interior voxels; the outermost layer copies its inner neighbour. The loss
    terms only see the interior, so a free outer layer would be unconstrained and fold.

    Args:
        level: the level's data.
        start: the starting deformation (any grid).
        iterations: optimiser iterations (``0``: none, only the final loss is evaluated).
        optimizer: ``"adam"`` or ``"lbfgs"``.
        learning_rate: Adam step on this level, mm per iteration.
        weights: the loss weights.
        check_cancel: called before every evaluation of the objective; raises to stop.
        report: called after every iteration.
        smoothing_voxels: the L-BFGS preconditioner's ``rho`` (:class:`RefineOptions`).

    Returns:
        ``(displacement, terms)``: the optimised ``(1, 3, d, h, w)`` displacement (mm, detached) and
        the loss terms (0-dim tensors) it has.
    """
    device = level.fixed.device
    u0 = start.on_grid(level.grid).displacement.detach().to(device=device, dtype=torch.float32)
    u_inner = u0[:, :, 1:-1, 1:-1, 1:-1].clone().requires_grad_(True)
    objective = _level_objective(level, u_inner, weights, check_cancel)
    n_voxels = float(math.prod(level.grid.size))
    if iterations > 0 and optimizer == "adam":
        _optimise_adam(objective, u_inner, iterations, learning_rate, n_voxels, report)
    elif iterations > 0:
        precondition = None
        if smoothing_voxels > 0:
            precondition = smoothing_preconditioner(tuple(u_inner.shape[2:]), level.grid.spacing, smoothing_voxels)
        _optimise_lbfgs(objective, u_inner, iterations, min(level.grid.spacing), n_voxels, report, precondition)
    with torch.no_grad():
        _, terms = objective()
        displacement = _with_outer_layer(u_inner).detach().contiguous()
    return displacement, terms


def _with_outer_layer(u_inner: torch.Tensor) -> torch.Tensor:
    """``(1, 3, d - 2, h - 2, w - 2)`` interior displacement -> ``(1, 3, d, h, w)``, the outer layer
    copying its inner neighbour."""
    return F.pad(u_inner, (1, 1, 1, 1, 1, 1), mode="replicate")


def _level_objective(
    level: _LevelData, u_inner: torch.Tensor, weights: LossWeights, check_cancel: Callable[[], None]
) -> _Objective:
    """The mlVIRNET loss of one level as a function of the interior displacement ``u_inner``.

    The returned ``objective()`` first calls ``check_cancel()`` (so a cancel takes effect before the
    next evaluation, whichever optimiser runs), then evaluates
    ``registration_loss(F, M∘y, u)`` with ``y(x) = x + u(x)``: the moving mask is warped with zero
    padding, and with ``level.moving_valid`` the NGF weights are zero where ``y(x)`` is near or
    outside the moving field of view (not differentiated).
    """
    if level.moving_mask is None:  # no mask term: the same objective with a hand-written gradient
        fused = FusedLevel(level.grid, level.fixed.float(), level.moving.float(), weights.alpha, weights.ngf_eps,
                           level.ngf_weight, level.moving_valid)

        def fused_objective() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            check_cancel()
            return fused_level_loss(fused, u_inner)

        return fused_objective
    return autograd_objective(level, u_inner, weights, check_cancel)


def autograd_objective(
    level: _LevelData, u_inner: torch.Tensor, weights: LossWeights, check_cancel: Callable[[], None]
) -> _Objective:
    """The objective of :func:`_level_objective` through autograd and
    :func:`MLVIRNETLib.losses.registration_loss` (any term, the mask term included); the reference
    of :mod:`MLVIRNETLib.registration.fused_objective`."""
    points_x = level.grid.world_points(device=u_inner.device, dtype=torch.float32)[None]  # (1, d, h, w, 3) mm

    def objective() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        check_cancel()
        u = _with_outer_layer(u_inner)
        points_y = points_x + u.movedim(1, -1)
        warped = sample(level.moving, level.grid, points_y)
        warped_mask = None
        if level.moving_mask is not None:
            warped_mask = sample(level.moving_mask, level.grid, points_y, padding_mode="zeros")
        ngf_weight = level.ngf_weight
        if level.moving_valid is not None:
            with torch.no_grad():
                inside = sample(level.moving_valid, level.grid, points_y.detach(), padding_mode="zeros")
            ngf_weight = inside if ngf_weight is None else ngf_weight * inside
        return registration_loss(
            level.fixed, warped, u, level.grid.spacing, weights, level.fixed_mask, warped_mask, ngf_mask=ngf_weight
        )

    return objective


def _optimise_adam(
    objective: _Objective,
    u_inner: torch.Tensor,
    iterations: int,
    learning_rate: float,
    n_voxels: float,
    report: _Report,
) -> None:
    """``iterations`` Adam steps on ``u_inner`` (in place) for the summed loss ``loss * n_voxels``.

    The summed loss and an ``eps`` well above float noise (:data:`ADAM_EPS`): Adam divides by the
    gradient's running RMS, so pure rounding noise would otherwise get full-size steps.
    ``learning_rate`` is in mm per iteration. ``report(k, None)`` follows iteration ``k`` (the loss
    is not read, so the device is not synchronised).
    """
    optimiser = torch.optim.Adam([u_inner], lr=learning_rate, eps=ADAM_EPS)
    for it in range(iterations):
        optimiser.zero_grad(set_to_none=True)
        loss, _ = objective()
        (loss * n_voxels).backward()
        optimiser.step()
        report(it + 1, None)


def _optimise_lbfgs(
    objective: _Objective, u_inner: torch.Tensor, iterations: int, voxel_mm: float, n_voxels: float, report: _Report,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """L-BFGS (strong-Wolfe line search, at most ``iterations`` iterations) on ``u_inner`` in place.

    The loss is a mean over voxels; L-BFGS sees it times the voxel count (a sum), so that the
    gradient has a scale: when no entry exceeds :data:`LBFGS_TOLERANCE_GRAD` the level is converged
    (identical images give pure rounding noise, which L-BFGS would otherwise amplify into large
    steps). The unknowns are rescaled, ``u = scale * v``, so that the first trial step
    (``1 / |g|_1``) moves the fastest voxel by :data:`FIRST_STEP_VOXELS` of the level's smallest
    voxel size ``voxel_mm``; unscaled, it is a tiny step into the kink that trilinear interpolation
    has at voxel centres, which the line search accepts and the optimisation stalls.
    ``report(k, loss)`` follows every evaluation, ``k`` = evaluations so far (at most ``iterations``).
    With ``precondition`` (``P``, see :func:`smoothing_preconditioner`) the directions are
    preconditioned and the first step is scaled by ``P g``.
    """
    loss0, _ = objective()
    (loss0 * n_voxels).backward()
    grad = u_inner.grad.detach()
    u_inner.grad = None
    if float(grad.abs().max()) <= LBFGS_TOLERANCE_GRAD:
        return  # converged at the start
    if precondition is not None:
        grad = precondition(grad)  # the first direction
    g_max, g_sum = float(grad.abs().max()), float(grad.abs().sum())
    step = FIRST_STEP_VOXELS * voxel_mm
    scale = step * g_sum / g_max  # the first step min(1, 1/|g_v|_1) * g_v then moves u by ``step``
    if scale * g_sum < 1.0:
        scale = math.sqrt(step / g_max)

    def f(v: torch.Tensor) -> tuple[float, torch.Tensor]:
        u_inner.data = v * scale
        u_inner.grad = None
        loss, _ = objective()
        (loss * n_voxels).backward()
        return float(loss.detach()) * n_voxels, u_inner.grad * scale

    result = lbfgs(
        f, u_inner.detach() / scale, max_iter=iterations, history=LBFGS_HISTORY,
        tolerance_grad=LBFGS_TOLERANCE_GRAD * scale, tolerance_change=LBFGS_TOLERANCE_CHANGE / scale,
        on_evaluation=lambda k, value: report(min(k, iterations), torch.tensor(value / n_voxels)),
        precondition=precondition,
    )
    with torch.no_grad():
        u_inner.data = result.x * scale
        u_inner.grad = None


def smoothing_preconditioner(
    shape: tuple[int, int, int], spacing: Sequence[float], rho: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> P v`` with ``P = E^T (I + rho^4 L^2)^-1 E`` on ``(N, C, D, H, W)`` tensors of spatial ``shape``.

    ``E`` pads each axis with zeros to a multiple of 8 (:func:`_fft_length`: fast FFT lengths) and
    ``E^T`` crops back. ``L`` is the 7-point Laplacian with periodic boundaries on the padded grid
    in units of the smallest voxel of ``spacing`` (``(sx, sy, sz)`` mm):
    ``sum_a (h / s_a)^2 (v[i + e_a] - 2 v[i] + v[i - e_a])``. The FFT diagonalises it: mode ``k``
    has the symbol ``l(k) = sum_a (h / s_a)^2 (2 cos(2 pi k_a / n_a) - 2)``, and
    ``(I + rho^4 L^2)^-1`` multiplies it by ``1 / (1 + rho^4 l(k)^2)``, which damps detail finer
    than about ``rho`` voxels. ``P`` is symmetric positive definite, which is all that a
    preconditioner needs (the minimiser does not change).
    """
    padded = tuple(_fft_length(n) for n in shape)
    h = min(float(v) for v in spacing)
    sx, sy, sz = (float(v) for v in spacing)

    def axis_symbol(n: int, s: float, half: bool) -> torch.Tensor:
        k = torch.arange(n // 2 + 1 if half else n, dtype=torch.float64)
        return (h / s) ** 2 * (2.0 * torch.cos(2.0 * math.pi * k / n) - 2.0)

    pd, ph, pw = padded
    lap = (axis_symbol(pd, sz, False)[:, None, None] + axis_symbol(ph, sy, False)[None, :, None]
           + axis_symbol(pw, sx, True)[None, None, :])
    symbol = (1.0 / (1.0 + float(rho) ** 4 * lap * lap)).to(torch.float32)
    dims = (-3, -2, -1)
    crop = (slice(None), slice(None), slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))

    on_device: dict[torch.device, torch.Tensor] = {}  # the symbol, copied once to each device used

    def apply(v: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfftn(v, s=padded, dim=dims)  # zero-pads to ``padded``
        if spectrum.device not in on_device:
            on_device[spectrum.device] = symbol.to(spectrum.device)
        spectrum *= on_device[spectrum.device]
        return torch.fft.irfftn(spectrum, s=padded, dim=dims)[crop]

    return apply


def _fft_length(n: int) -> int:
    """``n`` rounded up to a multiple of 8: an FFT length with small prime factors (a level's
    interior size may have a large one, e.g. 106 = 2 x 53, which makes its FFT slow)."""
    return n if n < 8 else -(-n // 8) * 8
