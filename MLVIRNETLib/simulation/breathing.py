"""Synthetic breathing motion: known deformations, deformed CT pairs and evaluation landmarks.

The deformations here are ground truth for tests, benchmarks and training data. Every one is a
fixed->moving map (:class:`~MLVIRNETLib.core.deformation.Deformation`, ``x_moving = x + u(x)``, LPS mm)
built as the exponential of a smooth stationary velocity field (scaling and squaring), so it is
invertible by construction; :func:`breathing_deformation` still checks ``det J > 0``.

Breathing model (:func:`breathing_deformation`), all in world (LPS) coordinates from the lung
mask's extent, so any direction (oblique, flipped) works:

* superior-inferior: the lungs move inferiorly (``-z``), most at the base (diaphragm), decaying to
  zero at the apex with ``((z_apex - z) / (z_apex - z_base)) ** apex_exponent``;
* anterior-posterior: the anterior lung expands anteriorly (``-y``), growing towards the base;
* left-right: a small lateral expansion about the lung centre;
* a small random smooth component (``seed``);
* sliding-like chest wall: all of the above are weighted by the lung mask smoothed with
  ``sliding_mm`` and extended ``below_base_mm`` inferiorly (the abdomen under the diaphragm moves
  with it), blended to ``outside_fraction`` of the motion in the rib cage and elsewhere.

:func:`make_synthetic_pair` turns a CT and such a deformation into a moving image (by warping with
the numerical inverse) with an optional density change (lung HU follows mass conservation,
``HU + 1000`` scales with ``1 / det J``) and noise. :func:`sample_landmarks` picks distinctive
points inside the lungs for TRE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation, jacobian_determinant
from ..core.filters import box_downsample, gaussian_smooth
from ..core.geometry import ImageGrid
from ..core.sampling import sample
from ..preprocessing.pair import AIR_HU, image_to_hu_tensor, mask_to_tensor

__all__ = [
    "breathing_deformation",
    "random_smooth_deformation",
    "exponentiate",
    "invert_deformation",
    "make_synthetic_pair",
    "sample_landmarks",
    "rigid_matrix",
]


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def exponentiate(velocity: Deformation, steps: int | None = None) -> Deformation:
    """``exp(v)`` of a stationary velocity field (scaling and squaring) on the velocity's grid.

    Args:
        velocity: ``v`` as a :class:`Deformation` whose displacement holds the velocity, mm.
        steps: number of squarings; default: enough that ``max|v| / 2^steps`` is below a quarter
            of the smallest voxel size (at least 4).

    Returns:
        The deformation ``exp(v)`` (a diffeomorphism up to discretisation), same grid.
    """
    v = velocity.displacement
    if steps is None:
        vmax = float(v.abs().max())
        h = 0.25 * min(velocity.grid.spacing)
        steps = max(4, int(math.ceil(math.log2(max(vmax / h, 1.0)))) + 1)
    d = Deformation(velocity.grid, v / (2.0**steps))
    for _ in range(steps):
        d = d.compose(d)
    return d


def _coarse_grid(grid: ImageGrid, spacing_mm: float) -> ImageGrid:
    """Same field of view as ``grid`` with about ``spacing_mm`` voxels (never finer than ``grid``)."""
    size = np.maximum(np.ceil(grid.extent / float(spacing_mm)).astype(int), 4)
    size = np.minimum(size, np.maximum(np.asarray(grid.size), 4))
    return grid.resized(tuple(int(s) for s in size))


def _smooth_mm(volume: torch.Tensor, grid: ImageGrid, sigma_mm: float) -> torch.Tensor:
    return gaussian_smooth(volume, [sigma_mm / s for s in grid.spacing])


def _random_velocity(grid: ImageGrid, smoothness_mm: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian-smoothed white noise ``(1, 3, D, H, W)`` on ``grid``, scaled to max magnitude 1."""
    # noise on a grid padded by 3 sigma, smoothed, then cropped: every voxel sees a full kernel of
    # independent noise (replicated border noise would make the border much rougher than the inside)
    pad = [int(math.ceil(3.0 * smoothness_mm / s)) for s in grid.spacing_zyx]  # z, y, x
    shape = [n + 2 * p for n, p in zip(grid.shape_zyx, pad)]
    noise = torch.randn((1, 3, *shape), generator=generator, dtype=torch.float32)
    v = _smooth_mm(noise, grid, smoothness_mm)
    v = v[:, :, pad[0]:pad[0] + grid.shape_zyx[0], pad[1]:pad[1] + grid.shape_zyx[1], pad[2]:pad[2] + grid.shape_zyx[2]]
    v = v - v.mean(dim=(2, 3, 4), keepdim=True)
    return v / v.norm(dim=1).max().clamp_min(1e-12)


def _check_grid(grid: ImageGrid) -> None:
    if not isinstance(grid, ImageGrid):
        raise ValueError(f"grid must be an ImageGrid, got {type(grid).__name__}")


# ----------------------------------------------------------------------------------------------
# deformations
# ----------------------------------------------------------------------------------------------
def random_smooth_deformation(
    grid: ImageGrid,
    max_mm: float = 5.0,
    smoothness_mm: float = 30.0,
    seed: int = 0,
    velocity_spacing_mm: float = 4.0,
) -> Deformation:
    """A random smooth invertible deformation on ``grid`` with ``max |u| = max_mm``.

    Args:
        grid: output grid (any direction).
        max_mm: largest displacement magnitude, mm (``>= 0``).
        smoothness_mm: Gaussian sigma of the underlying noise, mm.
        seed: random seed (same seed, same field).
        velocity_spacing_mm: voxel size of the internal velocity grid.

    Returns:
        :class:`Deformation` on ``grid``, ``(1, 3, D, H, W)`` float32.
    """
    _check_grid(grid)
    if not (math.isfinite(max_mm) and max_mm >= 0):
        raise ValueError(f"max_mm must be a finite value >= 0, got {max_mm}")
    if not (math.isfinite(smoothness_mm) and smoothness_mm > 0):
        raise ValueError(f"smoothness_mm must be a positive value, got {smoothness_mm}")
    vgrid = _coarse_grid(grid, velocity_spacing_mm)
    gen = torch.Generator().manual_seed(int(seed))
    shape = _random_velocity(vgrid, smoothness_mm, gen)
    d = _scaled_exponential(vgrid, shape, max_mm, None)
    return d.on_grid(grid)


def _scaled_exponential(
    vgrid: ImageGrid, shape: torch.Tensor, peak_mm: float, region: torch.Tensor | None, rounds: int = 3
) -> Deformation:
    """``exp(c * shape)`` with ``c`` chosen so that ``max |u|`` over ``region`` (bool ``(D, H, W)``) is ``peak_mm``."""
    if peak_mm == 0:
        return Deformation.identity(vgrid)
    scale = float(peak_mm)
    d = Deformation.identity(vgrid)
    for _ in range(rounds):
        d = exponentiate(Deformation(vgrid, shape * scale))
        mag = d.displacement[0].norm(dim=0)
        peak = float(mag[region].max()) if region is not None and bool(region.any()) else float(mag.max())
        if peak <= 0:
            break
        if abs(peak - peak_mm) < 1e-3 * peak_mm:
            break
        scale *= peak_mm / peak
    return d


def _mask_on_coarse(lung_mask: sitk.Image | None, target_spacing_mm: float) -> tuple[torch.Tensor, ImageGrid] | None:
    """Lung mask as a float fraction on a grid of about ``target_spacing_mm`` (box-pooled)."""
    if lung_mask is None:
        return None
    if not isinstance(lung_mask, sitk.Image):
        raise ValueError(f"lung_mask must be a SimpleITK image or None, got {type(lung_mask).__name__}")
    mgrid = ImageGrid.from_sitk(lung_mask)
    m = mask_to_tensor(lung_mask, mgrid, "lung mask")
    if not bool(m.any()):
        raise ValueError(f"the lung mask is empty (grid {mgrid.describe()})")
    m, mgrid = box_downsample(m, mgrid, [target_spacing_mm] * 3)
    return m, mgrid


def breathing_deformation(
    grid: ImageGrid,
    lung_mask: sitk.Image | None = None,
    peak_mm: float = 15.0,
    seed: int = 0,
    *,
    ap_fraction: float = 0.3,
    lr_fraction: float = 0.12,
    apex_exponent: float = 1.5,
    outside_fraction: float = 0.2,
    sliding_mm: float = 6.0,
    below_base_mm: float = 40.0,
    random_fraction: float = 0.1,
    velocity_spacing_mm: float = 4.0,
) -> Deformation:
    """A realistic, invertible breathing deformation (exhale fixed -> inhale moving) on ``grid``.

    Args:
        grid: output grid, e.g. the fixed image's grid (or a coarser one with the same field of
            view: the returned field is trilinear anyway).
        lung_mask: lungs (any nonzero) on any grid; ``None`` treats the whole ``grid`` as lung
            (no sliding, extent = the grid's bounding box).
        peak_mm: the largest displacement magnitude inside the lungs, mm.
        seed: random seed for the random component and a +-20 % jitter of the AP/LR fractions.
        ap_fraction: anterior-posterior motion relative to ``peak_mm``.
        lr_fraction: left-right expansion relative to ``peak_mm``.
        apex_exponent: decay of the superior-inferior motion from base to apex.
        outside_fraction: motion outside the lungs (chest wall) relative to inside.
        sliding_mm: width (Gaussian sigma) of the lung/chest-wall transition, mm.
        below_base_mm: how far below the lungs the diaphragm motion extends, mm.
        random_fraction: random smooth component relative to ``peak_mm``.
        velocity_spacing_mm: voxel size of the internal velocity grid, mm.

    Returns:
        :class:`Deformation` on ``grid`` (``(1, 3, D, H, W)`` float32, LPS mm).

    Raises:
        ValueError: bad arguments, an empty mask, or a field that folds (``det J <= 0``; lower
            ``peak_mm`` or widen ``sliding_mm``).
    """
    _check_grid(grid)
    _check_breathing_arguments(peak_mm, sliding_mm, velocity_spacing_mm, outside_fraction)
    gen = torch.Generator().manual_seed(int(seed))
    jitter = 1.0 + 0.4 * (torch.rand(2, generator=gen, dtype=torch.float64) - 0.5)
    vgrid = _coarse_grid(grid, velocity_spacing_mm)
    x = vgrid.world_points(dtype=torch.float64)  # (D, H, W, 3)
    coarse = _mask_on_coarse(lung_mask, min(2.0, velocity_spacing_mm))
    if coarse is None:
        lungs = _whole_grid_as_lungs(grid, vgrid)
    else:
        lungs = _lungs_on_velocity_grid(*coarse, vgrid, x, sliding_mm, below_base_mm, outside_fraction)
    v = _breathing_velocity(x, lungs, jitter, ap_fraction, lr_fraction, apex_exponent)
    if random_fraction > 0:
        v = v + random_fraction * _random_velocity(vgrid, 40.0, gen).double()
    v = v * lungs.weight[None, None]
    v = _smooth_mm(v, vgrid, velocity_spacing_mm).float()
    d = _scaled_exponential(vgrid, v, float(peak_mm), lungs.region)
    _check_no_folding(d, vgrid, peak_mm, sliding_mm)
    return d.on_grid(grid)


@dataclass(frozen=True)
class _Lungs:
    """The lungs as the breathing model sees them, on the velocity grid ``(D, H, W)``.

    Attributes:
        lo, hi: LPS bounding box of the lungs, mm, ``(3,)`` float64 (x, y, z).
        centre: LPS centre of the lungs, mm, ``(3,)`` float64.
        weight: motion weight ``(D, H, W)`` float64, 1 in the lungs down to ``outside_fraction``.
        region: bool ``(D, H, W)``, voxels inside the lungs (where ``peak_mm`` is measured), or
            ``None`` for the whole grid.
    """

    lo: np.ndarray
    hi: np.ndarray
    centre: np.ndarray
    weight: torch.Tensor
    region: torch.Tensor | None


def _check_breathing_arguments(peak_mm: float, sliding_mm: float, velocity_spacing_mm: float,
                               outside_fraction: float) -> None:
    """Raise ``ValueError`` for a negative or non-finite length (mm) or an ``outside_fraction`` outside 0..1."""
    for name, value in (("peak_mm", peak_mm), ("sliding_mm", sliding_mm), ("velocity_spacing_mm", velocity_spacing_mm)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite value >= 0, got {value}")
    if not 0 <= outside_fraction <= 1:
        raise ValueError(f"outside_fraction must lie in [0, 1], got {outside_fraction}")


def _whole_grid_as_lungs(grid: ImageGrid, vgrid: ImageGrid) -> _Lungs:
    """No lung mask: the lungs are the box of ``grid``'s outer voxel faces, full weight everywhere on ``vgrid``."""
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in grid.size], indexing="ij")).reshape(3, -1).T
    pts = grid.index_to_world(corners)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return _Lungs(lo, hi, 0.5 * (lo + hi), torch.ones(vgrid.shape_zyx, dtype=torch.float64), None)


def _lungs_on_velocity_grid(m: torch.Tensor, mgrid: ImageGrid, vgrid: ImageGrid, x: torch.Tensor, sliding_mm: float,
                            below_base_mm: float, outside_fraction: float) -> _Lungs:
    """Extent and sliding weight of the lungs from the coarse lung fraction ``m`` ``(1, 1, d, h, w)`` on ``mgrid``.

    The extent is that of the voxels more than half lung (any lung fraction when there are none).
    The weight is ``m`` smoothed with ``sliding_mm`` and extended ``below_base_mm`` inferiorly,
    sampled at the velocity grid's points ``x`` (``(D, H, W, 3)`` LPS mm) and blended to
    ``outside_fraction`` outside; the region is where ``m`` itself exceeds one half.
    """
    lung_pts = mgrid.array_index_to_world(torch.nonzero(m[0, 0] > 0.5)).numpy()
    if lung_pts.shape[0] == 0:
        lung_pts = mgrid.array_index_to_world(torch.nonzero(m[0, 0] > 0)).numpy()
    lo, hi = lung_pts.min(axis=0), lung_pts.max(axis=0)
    centre = lung_pts.mean(axis=0)
    smooth = _smooth_mm(m, mgrid, sliding_mm) if sliding_mm > 0 else m
    # lungs extended inferiorly (S is +z in LPS): max over samples shifted superiorly
    steps = max(1, int(math.ceil(below_base_mm / 4.0))) if below_base_mm > 0 else 0
    ext = torch.zeros(vgrid.shape_zyx, dtype=torch.float64)
    inside = sample(m.double(), mgrid, x, padding_mode="zeros")[0, 0]
    for k in range(steps + 1):
        shift = torch.tensor([0.0, 0.0, below_base_mm * k / max(steps, 1)], dtype=torch.float64)
        val = sample(smooth.double(), mgrid, x + shift, padding_mode="zeros")[0, 0]
        ext = torch.maximum(ext, val)
    weight = outside_fraction + (1.0 - outside_fraction) * ext.clamp(0, 1)
    return _Lungs(lo, hi, centre, weight, inside > 0.5)


def _breathing_velocity(x: torch.Tensor, lungs: _Lungs, jitter: torch.Tensor, ap_fraction: float,
                        lr_fraction: float, apex_exponent: float) -> torch.Tensor:
    """The deterministic breathing velocity ``(1, 3, D, H, W)`` float64 (LPS, unit peak SI) at points ``x``.

    ``x`` is ``(D, H, W, 3)`` LPS mm; ``jitter`` ``(2,)`` scales the AP (``[0]``) and LR (``[1]``)
    fractions. Superior-inferior: ``-prof`` with ``prof`` 0 at the apex, 1 at the base;
    anterior-posterior and left-right grow with ``prof`` from 0.4 to 1.
    """
    lo, hi, centre = lungs.lo, lungs.hi, lungs.centre
    z_apex, z_base = hi[2], lo[2]
    y_ant, y_post = lo[1], hi[1]
    half_width = max(0.5 * (hi[0] - lo[0]), 1.0)
    prof = ((z_apex - x[..., 2]) / max(z_apex - z_base, 1.0)).clamp(0, 1) ** apex_exponent
    a = ((y_post - x[..., 1]) / max(y_post - y_ant, 1.0)).clamp(0, 1)
    lateral = ((x[..., 0] - centre[0]) / half_width).clamp(-1, 1)
    grow = 0.4 + 0.6 * prof
    return torch.stack(
        [
            lr_fraction * float(jitter[1]) * lateral * grow,
            -ap_fraction * float(jitter[0]) * a * grow,
            -prof,
        ],
        dim=0,
    )[None]


def _check_no_folding(d: Deformation, vgrid: ImageGrid, peak_mm: float, sliding_mm: float) -> None:
    """Raise ``ValueError`` when ``det J <= 0`` anywhere on ``vgrid`` (the field folds)."""
    det = jacobian_determinant(d.displacement, vgrid)
    if float(det.min()) <= 0:
        raise ValueError(
            f"the breathing deformation folds (min det J = {float(det.min()):.3f}) with peak_mm={peak_mm}, "
            f"sliding_mm={sliding_mm}: lower peak_mm or widen sliding_mm"
        )


def rigid_matrix(
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """4x4 LPS matrix ``x -> R (x - c) + c + t`` with ``R`` the rotations about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(rotation_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    r = rz @ ry @ rx
    c = np.asarray(center_mm, dtype=float)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=float)
    return m


# ----------------------------------------------------------------------------------------------
# inversion and synthetic pairs
# ----------------------------------------------------------------------------------------------
def invert_deformation(
    deformation: Deformation,
    grid: ImageGrid | None = None,
    iterations: int = 100,
    tol_mm: float = 1e-3,
) -> Deformation:
    """Numerical inverse ``y^-1`` on ``grid`` (default: the deformation's grid).

    Fixed-point iteration ``w(z) = -u(z + w(z))``, which converges where ``|grad u| < 1`` (true for
    the smooth fields of this module, including small rotations). Outside its grid ``u`` is
    continued by its border value, so the inverse is only meaningful where ``y^-1(z)`` lands in it.

    Returns:
        :class:`Deformation` with ``y(y^-1(z)) = z`` to within ``tol_mm`` (or after ``iterations``).
    """
    target = grid if grid is not None else deformation.grid
    z = target.world_points(dtype=deformation.displacement.dtype, device=deformation.displacement.device)[None]
    z = z.expand(deformation.batch_size, *z.shape[1:])
    w = -deformation.displacement_at(z)
    for _ in range(int(iterations)):
        w_new = -deformation.displacement_at(z + w)
        change = float((w_new - w).abs().max())
        w = w_new
        if change < tol_mm:
            break
    return Deformation(target, w.movedim(-1, 1).contiguous())


def make_synthetic_pair(
    image: sitk.Image,
    deformation: Deformation,
    lung_mask: sitk.Image | None = None,
    *,
    density_change: bool = True,
    noise_hu: float = 0.0,
    seed: int = 0,
    moving_grid: ImageGrid | None = None,
    inverse_spacing_mm: float = 2.0,
    slab_voxels: int = 2_000_000,
) -> tuple[sitk.Image, Deformation]:
    """Deform a CT so that registering ``(fixed=image, moving)`` has ground truth ``deformation``.

    The moving image is ``M(z) = F(y^-1(z))`` (so that ``F(x) = M(y(x))``), computed with
    :func:`invert_deformation` on a grid of ``inverse_spacing_mm`` over the moving field of view.

    Args:
        image: the fixed CT in HU (3-D, scalar).
        deformation: fixed->moving map ``y`` (e.g. from :func:`breathing_deformation`), any grid.
        lung_mask: optional lung mask on ``image``'s grid, limiting the density change.
        density_change: lung density follows mass conservation: ``HU_M + 1000 = (HU_F + 1000) / det J``
            for voxels with ``HU_F < -300`` (weight ramping to 0 at ``-300`` HU; inside
            ``lung_mask`` only when given).
        noise_hu: standard deviation of added Gaussian noise, HU.
        seed: noise seed.
        moving_grid: grid of the moving image (default ``image``'s grid); a different field of view
            or resolution is allowed. Outside the fixed field of view the moving image is air.
        inverse_spacing_mm: voxel size of the grid on which the inverse is computed.
        slab_voxels: voxels per slab when evaluating on the full grid (bounds memory).

    Returns:
        ``(moving, deformation)`` with ``moving`` a float32 ``sitk.Image`` on ``moving_grid``.
    """
    if not isinstance(image, sitk.Image):
        raise ValueError(f"image must be a SimpleITK image, got {type(image).__name__}")
    f_hu, f_grid = image_to_hu_tensor(image)
    if not torch.isfinite(f_hu).all():
        raise ValueError("image contains NaN or infinite values")
    mgrid = moving_grid if moving_grid is not None else f_grid
    lung = mask_to_tensor(lung_mask, f_grid, "lung mask") if lung_mask is not None else None
    if noise_hu < 0 or not math.isfinite(noise_hu):
        raise ValueError(f"noise_hu must be a finite value >= 0, got {noise_hu}")
    inv = invert_deformation(deformation, _coarse_grid(mgrid, inverse_spacing_mm))
    det = jacobian_determinant(deformation.displacement, deformation.grid) if density_change else None

    out = np.empty(mgrid.shape_zyx, dtype=np.float32)
    nx, ny, nz = mgrid.size
    slab = max(1, int(slab_voxels) // max(nx * ny, 1))
    gen = torch.Generator().manual_seed(int(seed))
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        sgrid = mgrid.cropped((0, 0, z0), (nx, ny, z1))
        zpts = sgrid.world_points(dtype=torch.float32)
        xpts = zpts[None] + inv.displacement_at(zpts[None])  # y^-1(z), (1, d, h, w, 3)
        hu = sample(f_hu - AIR_HU, f_grid, xpts, padding_mode="zeros") + AIR_HU
        if det is not None:
            jd = sample(det, deformation.grid, xpts.to(det.dtype)).to(hu.dtype)
            weight = ((-300.0 - hu) / 200.0).clamp(0, 1)
            if lung is not None:
                weight = weight * sample(lung, f_grid, xpts, padding_mode="zeros")
            scaled = (hu + 1000.0) / jd.clamp_min(0.05) - 1000.0
            hu = hu + weight * (scaled - hu)
        if noise_hu > 0:
            hu = hu + noise_hu * torch.randn(hu.shape, generator=gen, dtype=hu.dtype)
        out[z0:z1] = hu[0, 0].numpy()
    moving = sitk.GetImageFromArray(out)
    mgrid.copy_to_sitk(moving)
    return moving, deformation


# ----------------------------------------------------------------------------------------------
# landmarks
# ----------------------------------------------------------------------------------------------
def sample_landmarks(
    image: sitk.Image,
    lung_mask: sitk.Image,
    n: int = 100,
    seed: int = 0,
    *,
    erosion_mm: float = 4.0,
    border_mm: float = 10.0,
    min_distance_mm: float = 8.0,
    gradient_quantile: float = 0.85,
    sigma_mm: float = 1.0,
) -> np.ndarray:
    """Distinctive evaluation points inside the lungs, LPS mm ``(n', 3)`` with ``n' <= n``.

    Candidates are voxels of the lung mask eroded by ``erosion_mm``, at least ``border_mm`` from
    the outer faces of the image (where a point's partner may leave the other scan), whose Gaussian gradient
    magnitude (``sigma_mm``) is in the top ``1 - gradient_quantile`` inside it (vessel and airway
    walls, which registration can resolve); they are visited in a seeded random order and kept
    when at least ``min_distance_mm`` from every point kept so far.

    Raises:
        ValueError: mask on another grid, or no candidate left after erosion.
    """
    if not isinstance(image, sitk.Image) or not isinstance(lung_mask, sitk.Image):
        raise ValueError("image and lung_mask must be SimpleITK images")
    grid = ImageGrid.from_sitk(image)
    mask = mask_to_tensor(lung_mask, grid, "lung mask")[0, 0].numpy() > 0
    mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
    grid.copy_to_sitk(mask_img)
    radius = [int(math.floor(erosion_mm / s)) for s in grid.spacing]
    if max(radius) > 0:
        mask_img = sitk.BinaryErode(mask_img, radius, sitk.sitkBall)
    core = sitk.GetArrayFromImage(mask_img) > 0
    if border_mm > 0:
        for axis, (n_vox, sp) in enumerate(zip(grid.shape_zyx, grid.spacing_zyx)):
            b = min(int(math.ceil(border_mm / sp - 0.5)), n_vox)
            if b > 0:
                index = [slice(None)] * 3
                index[axis] = slice(0, b)
                core[tuple(index)] = False
                index[axis] = slice(n_vox - b, n_vox)
                core[tuple(index)] = False
    if not core.any():
        raise ValueError(
            f"no lung voxels left after eroding the mask by {erosion_mm} mm and removing {border_mm} mm at the "
            f"image border (grid {grid.describe()})"
        )
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma_mm))
    values = grad[core]
    threshold = np.quantile(values, gradient_quantile)
    kji = np.argwhere(core & (grad >= threshold))
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(kji.shape[0])[: max(20 * n, 2000)]
    pts = grid.array_index_to_world(kji[order])
    kept: list[np.ndarray] = []
    for p in pts:
        if len(kept) >= n:
            break
        if kept and np.min(np.linalg.norm(np.asarray(kept) - p, axis=1)) < min_distance_mm:
            continue
        kept.append(p)
    return np.asarray(kept, dtype=float).reshape(-1, 3)
