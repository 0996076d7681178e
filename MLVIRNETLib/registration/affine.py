"""Affine pre-alignment of two CT scans (rigid, then affine, coarse to fine).

The result is a 4x4 LPS matrix ``A`` with ``x_moving = A @ x_fixed`` (homogeneous, mm). It is
found by maximising the normalised cross-correlation (NCC) of the windowed intensities over the
fixed voxels whose image lies inside the moving field of view, on downsampled copies of both
scans (``AffineOptions.levels_mm``). Starting points: the identity (scans of one patient usually
share the scanner frame) and the shift between the centres of mass of the lung masks (or of the
body when there are no masks); the better one after a short rigid fit wins. Then a rigid fit
(rotation about the fixed centre + translation) and an affine fit (rigid times a symmetric
stretch/shear) refine it with L-BFGS (or Adam) on every level.

:func:`affine_to_deformation` and :func:`compose_affine` turn ``A`` into deformations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.deformation import Deformation
from ..core.filters import gaussian_smooth, lowpass
from ..core.geometry import ImageGrid, apply_affine
from ..core.memo import Memo, no_memo
from ..core.optimize import lbfgs
from ..core.progress import CancelFn, Progress, ProgressFn
from ..core.sampling import check_volume, grid_sample, inside_weight, sample
from ..preprocessing.pair import HU_WINDOW, normalize_ct


@dataclass
class AffineOptions:
    """Settings of :func:`affine_register`.

    Attributes:
        levels_mm: voxel sizes of the working copies, coarse to fine, mm. One 8 mm level by
            default: a finer level after it costs far more time than it changes the final result,
            since the network and the refinement follow (docs/performance.md).
        rigid_iterations: optimiser iterations of the rigid stage per level (half of them for
            each starting point on the coarsest level).
        affine_iterations: iterations of the affine stage per level (0: rigid only).
        learning_rate: Adam step in the scaled parameters (about ``lr * 20`` mm of translation
            and ``lr * 0.2`` rad of rotation per step at most); unused by L-BFGS.
        optimizer: ``"lbfgs"`` (strong-Wolfe line search) or ``"adam"``.
        max_stretch: bound on the symmetric stretch/shear (``|S_ij|``), unit-less.
        hu_window: intensity window for the NCC.
    """

    levels_mm: tuple[float, ...] = (8.0,)
    rigid_iterations: int = 30
    affine_iterations: int = 20
    learning_rate: float = 0.05
    max_stretch: float = 0.25
    optimizer: str = "lbfgs"
    hu_window: tuple[float, float] = HU_WINDOW

    def __post_init__(self) -> None:
        levels = tuple(float(v) for v in self.levels_mm)
        if not levels or not all(math.isfinite(v) and v > 0 for v in levels):
            raise ValueError(f"levels_mm must be positive voxel sizes, got {self.levels_mm}")
        self.levels_mm = levels
        if self.rigid_iterations < 0 or self.affine_iterations < 0:
            raise ValueError(
                f"iterations must be >= 0, got rigid {self.rigid_iterations}, affine {self.affine_iterations}"
            )
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")


# ----------------------------------------------------------------------------------------------
# matrices and deformations
# ----------------------------------------------------------------------------------------------
def affine_to_deformation(matrix: np.ndarray, grid: ImageGrid, dtype=torch.float32, device=None) -> Deformation:
    """The map ``x -> A x`` as a :class:`Deformation` on ``grid`` (``u(x) = A x - x``, LPS mm).

    Note that outside ``grid`` a Deformation continues its border value, which is not the affine
    map any more; use :func:`compose_affine` to apply ``A`` after another deformation exactly.
    """
    a = _check_matrix(matrix)
    x = grid.world_points(dtype=torch.float64, device=device)
    u = apply_affine(a, x) - x
    return Deformation(grid, u.movedim(-1, 0)[None].to(dtype).contiguous())


def compose_affine(matrix: np.ndarray, deformation: Deformation) -> Deformation:
    """``A ∘ y`` (``x -> A y(x)``) on ``deformation``'s grid, exact at every voxel centre."""
    a = _check_matrix(matrix)
    y = deformation.points()  # (N, D, H, W, 3)
    x = deformation.grid.world_points(dtype=y.dtype, device=y.device)
    u = apply_affine(a, y.double()).to(y.dtype) - x[None]
    return Deformation(deformation.grid, u.movedim(-1, 1).contiguous())


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    a = np.asarray(matrix, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or not np.allclose(a[3], [0, 0, 0, 1]):
        raise ValueError(f"expected a finite 4x4 affine matrix with last row (0, 0, 0, 1), got {a.tolist()}")
    return a


def _rotation(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``exp([r]_x)`` of a rotation vector ``(3,)`` (radians)."""
    zero = rotvec.new_zeros(())
    k = torch.stack(
        [
            torch.stack([zero, -rotvec[2], rotvec[1]]),
            torch.stack([rotvec[2], zero, -rotvec[0]]),
            torch.stack([-rotvec[1], rotvec[0], zero]),
        ]
    )
    return torch.linalg.matrix_exp(k)


class _AffineModel(torch.nn.Module):
    """``x -> L (x - c) + c + t`` with ``L = R(r) (I + S)``, ``S`` symmetric; parameters scaled to O(1)."""

    ROT_SCALE = 0.2  # rad per unit
    TRANS_SCALE = 20.0  # mm per unit
    STRETCH_SCALE = 0.1  # per unit

    def __init__(self, centre: np.ndarray, translation: np.ndarray, max_stretch: float) -> None:
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float64))
        self.rot = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.trans = torch.nn.Parameter(torch.as_tensor(translation, dtype=torch.float64) / self.TRANS_SCALE)
        self.stretch = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
        self.max_stretch = float(max_stretch)

    def matrix(self) -> torch.Tensor:
        r = _rotation(self.rot * self.ROT_SCALE)
        s = self.stretch * self.STRETCH_SCALE
        s = self.max_stretch * torch.tanh(s / self.max_stretch) if self.max_stretch > 0 else s * 0
        sym = torch.stack(
            [torch.stack([s[0], s[3], s[4]]), torch.stack([s[3], s[1], s[5]]), torch.stack([s[4], s[5], s[2]])]
        )
        lin = r @ (torch.eye(3, dtype=sym.dtype, device=sym.device) + sym)
        t = self.trans * self.TRANS_SCALE
        off = self.centre + t - lin @ self.centre
        top = torch.cat([lin, off[:, None]], dim=1)
        return torch.cat([top, top.new_tensor([[0.0, 0.0, 0.0, 1.0]])], dim=0)


# ----------------------------------------------------------------------------------------------
# working copies
# ----------------------------------------------------------------------------------------------
@dataclass
class _Level:
    spacing: float
    fixed: torch.Tensor  # (1, 1, D, H, W) normalised, on fixed_grid
    fixed_grid: ImageGrid
    fixed_points: torch.Tensor  # (D, H, W, 3) float32 LPS
    fixed_weight: torch.Tensor  # (1, 1, D, H, W)
    moving: torch.Tensor  # (1, 1, d, h, w) normalised, on moving_grid
    moving_grid: ImageGrid


def _downsample(hu: torch.Tensor, grid: ImageGrid, spacing: float) -> tuple[torch.Tensor, ImageGrid]:
    """Low-pass and resample to about ``spacing`` mm (same field of view and direction)."""
    size = np.maximum(np.round(grid.extent / spacing).astype(int), 4)
    size = np.minimum(size, np.asarray(grid.size))
    target = grid.resized(tuple(int(s) for s in size))
    data, src = lowpass(hu, grid, target.spacing)
    pts = target.world_points(device=hu.device, dtype=torch.float32)
    return sample(data, src, pts), target


def _centre_of_mass(weight: torch.Tensor, grid: ImageGrid) -> np.ndarray | None:
    w = weight[0, 0].double()
    total = float(w.sum())
    if total <= 0:
        return None
    idx = grid.index_points(dtype=torch.float64, device=w.device)
    mean_idx = (idx * w[..., None]).sum(dim=(0, 1, 2)) / total
    return np.asarray(grid.index_to_world(mean_idx.cpu().numpy()))


def _weighted_ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    ws = w.sum().clamp_min(1e-6)
    ma = (w * a).sum() / ws
    mb = (w * b).sum() / ws
    da, db = a - ma, b - mb
    cov = (w * da * db).sum() / ws
    va = (w * da * da).sum() / ws
    vb = (w * db * db).sum() / ws
    return cov / torch.sqrt(va * vb + 1e-12)


# ----------------------------------------------------------------------------------------------
# the registration
# ----------------------------------------------------------------------------------------------
def affine_register(
    fixed: torch.Tensor,
    fixed_grid: ImageGrid,
    moving: torch.Tensor,
    moving_grid: ImageGrid,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
    options: AffineOptions | None = None,
    progress: ProgressFn | Progress | None = None,
    cancel: CancelFn | None = None,
    memo: Memo = no_memo,
) -> np.ndarray:
    """Affine matrix ``A`` (4x4, LPS, float64) with ``x_moving = A @ x_fixed``.

    Args:
        fixed: ``(1, 1, D, H, W)`` fixed CT in HU on ``fixed_grid``.
        fixed_grid: its grid.
        moving: ``(1, 1, D', H', W')`` moving CT in HU on ``moving_grid``.
        moving_grid: its grid (any field of view, resolution and direction).
        fixed_mask, moving_mask: optional lung masks ``(1, 1, ...)`` on the grids of their images;
            with both, the start uses their centres of mass and the NCC is weighted to the lungs
            dilated by their smoothing (plus the rest at a lower weight).
        options: see :class:`AffineOptions`.
        progress: called with ``(fraction in [0, 1], message)`` after every optimiser iteration (at
            most every ``Progress.min_interval_s``), or a :class:`~MLVIRNETLib.core.progress.Progress`
            (e.g. a caller's stage), which is then used as it is.
        cancel: polled before every evaluation of the objective; returning True raises
            :class:`~MLVIRNETLib.core.progress.RegistrationCancelled`.
        memo: where the fixed image's downsampled copies are kept for the next moving image (a
            :class:`~MLVIRNETLib.registration.fixed_cache.FixedImageCache` of ``fixed`` and
            ``fixed_mask``); default: computed each time.

    Returns:
        ``A`` as a numpy ``(4, 4)`` array.

    Raises:
        RegistrationCancelled: ``cancel()`` returned True.
    """
    prog = Progress.of(progress, cancel)
    opts = options if options is not None else AffineOptions()
    check_volume(fixed, fixed_grid, "fixed")
    check_volume(moving, moving_grid, "moving")
    levels, start_weights = _working_copies(fixed, fixed_grid, moving, moving_grid, fixed_mask, moving_mask, opts, prog,
                                           memo)
    coarse = levels[0]
    centre, starts = _starting_points(start_weights, coarse)
    n_start = max(1, opts.rigid_iterations // 2)
    total_steps = max(1, len(starts) * n_start + len(levels) * (opts.rigid_iterations + opts.affine_iterations))
    fitter = _Fitter(opts, prog, total_steps)

    # choose the start on the coarsest level with a short rigid fit
    best: tuple[float, _AffineModel] | None = None
    start_steps = n_start if opts.rigid_iterations > 0 else 0
    for translation in starts:
        model = _AffineModel(centre, translation, opts.max_stretch).to(fixed.device)
        value = fitter.fit(model, coarse, start_steps, [model.rot, model.trans], "start")
        if best is None or value < best[0]:
            best = (value, model)
    assert best is not None
    model = best[1]
    for level in levels:
        fitter.fit(model, level, opts.rigid_iterations, [model.rot, model.trans], "rigid")
        fitter.fit(model, level, opts.affine_iterations, [model.rot, model.trans, model.stretch], "affine")
    prog(1.0, "affine pre-alignment done")
    with torch.no_grad():
        return model.matrix().cpu().numpy()


def _working_copies(
    fixed: torch.Tensor,
    fixed_grid: ImageGrid,
    moving: torch.Tensor,
    moving_grid: ImageGrid,
    fixed_mask: torch.Tensor | None,
    moving_mask: torch.Tensor | None,
    options: AffineOptions,
    prog: Progress,
    memo: Memo = no_memo,
) -> tuple[list[_Level], tuple[torch.Tensor, torch.Tensor]]:
    """The downsampled, normalised copies of every level (``options.levels_mm``, coarse to fine).

    Returns:
        ``(levels, (fixed_start, moving_start))``: the levels, and on the coarsest level's grids the
        ``(1, 1, ...)`` weights whose centres of mass give the starting shift (the lung masks when
        both are given, else the body ``HU > -500``).
    """
    device = fixed.device
    levels: list[_Level] = []
    start_weights: tuple[torch.Tensor, torch.Tensor] | None = None
    for spacing in options.levels_mm:
        key = ("affine fixed level", float(spacing), tuple(options.hu_window), fixed_mask is not None, str(device))
        fixed_level = memo(key, lambda s=spacing: _fixed_level(fixed, fixed_grid, fixed_mask, s, options.hu_window))
        moving_hu, moving_level_grid = _downsample(moving.float().to(device), moving_grid, spacing)
        if start_weights is None:
            if fixed_level.lungs is not None and moving_mask is not None:
                start_weights = (fixed_level.lungs, _downsample(moving_mask.float().to(device), moving_grid, spacing)[0])
            else:
                start_weights = (fixed_level.body, (moving_hu > -500).float())
        levels.append(_Level(
            spacing=spacing,
            fixed=fixed_level.image,
            fixed_grid=fixed_level.grid,
            fixed_points=fixed_level.points,
            fixed_weight=fixed_level.weight,
            moving=normalize_ct(moving_hu, options.hu_window),
            moving_grid=moving_level_grid,
        ))
        prog(0.0, f"affine: working copies at {spacing:g} mm")
    assert start_weights is not None
    return levels, start_weights


@dataclass(frozen=True)
class _FixedLevel:
    """The fixed image's half of one affine level (it does not depend on the moving image).

    Attributes:
        image: the normalised downsampled fixed image; ``grid`` its grid, ``points`` its world points.
        weight: the NCC weight (lungs dilated by their smoothing plus 0.25 elsewhere; 1 without a mask).
        lungs: the downsampled fixed mask, or None; ``body``: ``HU > -500`` (the start without masks).
    """

    image: torch.Tensor
    grid: ImageGrid
    points: torch.Tensor
    weight: torch.Tensor
    lungs: torch.Tensor | None
    body: torch.Tensor


def _fixed_level(fixed: torch.Tensor, fixed_grid: ImageGrid, fixed_mask: torch.Tensor | None, spacing: float,
                 hu_window: tuple[float, float]) -> _FixedLevel:
    device = fixed.device
    fixed_hu, level_grid = _downsample(fixed.float(), fixed_grid, spacing)
    weight = torch.ones_like(fixed_hu)
    lungs = None
    if fixed_mask is not None:
        lungs = _downsample(fixed_mask.float().to(device), fixed_grid, spacing)[0]
        weight = 0.25 + gaussian_smooth(lungs, [10.0 / sp for sp in level_grid.spacing]).clamp(0, 1)
    return _FixedLevel(
        image=normalize_ct(fixed_hu, hu_window),
        grid=level_grid,
        points=level_grid.world_points(device=device, dtype=torch.float32),
        weight=weight,
        lungs=lungs,
        body=(fixed_hu > -500).float(),
    )


def _starting_points(
    start_weights: tuple[torch.Tensor, torch.Tensor], coarse: _Level
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The centre of rotation and the starting translations, LPS mm.

    The centre is the fixed centre of mass of ``start_weights[0]`` (or the centre of the fixed grid);
    the starts are the identity and, when it is over 1 mm, the shift between the centres of mass.
    """
    com_f = _centre_of_mass(start_weights[0], coarse.fixed_grid)
    com_m = _centre_of_mass(start_weights[1], coarse.moving_grid)
    if com_f is None:
        com_f = coarse.fixed_grid.index_to_world((np.asarray(coarse.fixed_grid.size) - 1) / 2.0)
    starts = [np.zeros(3)]
    if com_m is not None and np.linalg.norm(com_m - com_f) > 1.0:
        starts.append(com_m - com_f)
    return com_f, starts


@dataclass
class _Fitter:
    """Runs the fits of :func:`affine_register` and counts their optimiser steps for the progress.

    Attributes:
        options: the optimiser and its settings.
        prog: progress and cancel; ``cancel`` is checked before every evaluation of the objective.
        total_steps: optimiser steps of all fits (``> 0``).
        done: steps of the fits finished so far.
    """

    options: AffineOptions
    prog: Progress
    total_steps: int
    done: int = 0

    def fit(
        self, model: _AffineModel, level: _Level, steps: int, params: list[torch.nn.Parameter], stage: str
    ) -> float:
        """Optimise ``params`` of ``model`` for ``steps`` iterations on ``level`` (``stage`` names the
        fit in the progress message).

        Returns:
            the final loss ``1 - NCC`` (unit-less).
        """
        message = f"affine {stage} at {level.spacing:g} mm"

        def objective() -> torch.Tensor:
            self.prog.check_cancel()
            return _loss(model, level)

        def report(k: int) -> None:
            self.prog((self.done + k) / self.total_steps, message)

        if steps > 0 and self.options.optimizer == "lbfgs":
            _optimise_lbfgs(params, objective, steps, report)
        elif steps > 0:
            _optimise_adam(params, objective, steps, self.options.learning_rate, report)
        self.done += steps
        with torch.no_grad():
            return float(objective())


def _optimise_lbfgs(
    params: list[torch.nn.Parameter], objective: Callable[[], torch.Tensor], steps: int, report: Callable[[int], None]
) -> None:
    """At most ``steps`` L-BFGS iterations (strong-Wolfe line search, :func:`MLVIRNETLib.core.optimize.lbfgs`)
    of ``objective()`` (0-dim) over ``params``; ``report(k)`` follows every evaluation, ``k`` =
    evaluations so far (at most ``steps``)."""
    sizes = [p.numel() for p in params]

    def assign(x: torch.Tensor) -> None:
        for p, piece in zip(params, torch.split(x, sizes)):
            p.data.copy_(piece.view_as(p))

    def f(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        assign(x)
        for p in params:
            p.grad = None
        loss = objective()
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in params])

    x0 = torch.cat([p.detach().flatten() for p in params])
    result = lbfgs(f, x0, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-10,
                   on_evaluation=lambda k, value: report(min(k, steps)))
    assign(result.x)
    for p in params:
        p.grad = None


def _optimise_adam(
    params: list[torch.nn.Parameter],
    objective: Callable[[], torch.Tensor],
    steps: int,
    learning_rate: float,
    report: Callable[[int], None],
) -> None:
    """``steps`` Adam iterations of ``objective()`` (0-dim) over ``params``, the step size annealed
    (cosine) from ``learning_rate`` to 5 % of it; ``report(k)`` follows iteration ``k``."""
    optimiser = torch.optim.Adam(params, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=learning_rate * 0.05)
    for it in range(steps):
        optimiser.zero_grad()
        loss = objective()
        loss.backward()
        optimiser.step()
        schedule.step()
        report(it + 1)


def _loss(model: _AffineModel, level: _Level) -> torch.Tensor:
    """``1 - NCC`` of the fixed level image and the moving one sampled at ``A x``, weighted by the
    fixed weights where ``A x`` lies inside the moving field of view."""
    # fixed world point -> normalised moving coordinate in one product: (W A) x
    to_normalized = torch.as_tensor(level.moving_grid.world_to_normalized_matrix(), dtype=torch.float64,
                                    device=level.fixed.device)
    m = (to_normalized @ model.matrix()).to(torch.float32)
    coords = (level.fixed_points @ m[:3, :3].T + m[:3, 3])[None]
    warped = grid_sample(level.moving, coords, padding_mode="zeros")
    with torch.no_grad():
        inside = inside_weight(coords.detach(), tuple(level.moving.shape[2:]))
    w = level.fixed_weight * inside
    return 1.0 - _weighted_ncc(level.fixed, warped, w)
