"""Turning CT scans into network inputs: HU window, lung crop, anti-aliased resampling.

Everything the network and the refinement see goes through :func:`preprocess_pair` (or the pure
functions it is made of), both at inference and in training:

1. **Intensity**: HU values are clipped to the window ``[-1000, 300]`` HU and mapped linearly to
   ``[0, 1]`` (:func:`normalize_ct`): air ``-1000 HU -> 0``, water ``0 HU -> 0.769``, soft tissue and
   contrast above ``300 HU -> 1``. The window keeps the whole lung parenchyma range (``-1000`` to
   ``-500`` HU) and the vessel/wall contrast, and clips bone, which carries no lung motion.
2. **Field of view**: optionally the fixed image's lung bounding box plus a margin
   (:func:`lung_bounding_box`), in whole voxels of the fixed grid (so crop is geometry-exact).
3. **Network grid**: that box resampled to ``network_size`` voxels (default ``160^3``) with the
   fixed image's direction (:func:`network_grid`): ``ImageGrid.cropped`` then ``ImageGrid.resized``
   keep the outer voxel faces of the box.
4. **Resampling**: each image is low-passed with a Gaussian whose width follows the ratio of the
   target to the source spacing (:func:`antialias_sigma`), then sampled trilinearly at the network
   grid points (mapped by an optional affine pre-alignment for the moving image).

All tensors are ``(N, C, D, H, W)``; grids are :class:`~MLVIRNETLib.core.geometry.ImageGrid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..core.filters import resample_antialiased
from ..core.geometry import ImageGrid, zyx_to_xyz
from ..core.memo import Memo, no_memo
from ..core.progress import ProgressFn
from ..core.sampling import check_volume

HU_WINDOW: tuple[float, float] = (-1000.0, 300.0)
"""Default intensity window in HU, mapped to ``[0, 1]``."""

AIR_HU = -1024.0
"""Value used outside a scan's field of view (before normalisation)."""


# ----------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------
@dataclass
class PreprocessOptions:
    """How scans become network inputs.

    Attributes:
        network_size: voxels of the network grid, ``(nx, ny, nz)``, or ``"auto"``: a grid that
            follows the crop box and the image (:func:`auto_grid_size` with ``auto_max_voxels``,
            ``auto_min_spacing_mm`` and ``size_multiple``).
        hu_window: ``(low, high)`` HU mapped to ``0`` and ``1``; values outside are clipped.
        crop_to_lungs: crop the fixed field of view to the lung bounding box (needs a fixed mask).
        crop_margin_mm: margin added on every side of the lung bounding box, mm.
        antialias: Gaussian low-pass before downsampling (recommended; off only for tests).
        auto_max_voxels: with ``network_size="auto"``, the most voxels along each axis.
        auto_min_spacing_mm: with ``network_size="auto"``, the smallest voxel size of the grid, mm
            (one value, or one per axis ``(x, y, z)`` of the fixed image).
        size_multiple: with ``network_size="auto"``, every size is a multiple of this (the
            refinement's coarsest level divides it).
    """

    network_size: tuple[int, int, int] | str = (160, 160, 160)
    hu_window: tuple[float, float] = HU_WINDOW
    crop_to_lungs: bool = True
    crop_margin_mm: float = 10.0
    antialias: bool = True
    auto_max_voxels: int = 224
    auto_min_spacing_mm: float | tuple[float, float, float] = 0.0
    size_multiple: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.network_size, str):
            if self.network_size != "auto":
                raise ValueError(f"network_size must be 3 integers >= 4 (nx, ny, nz) or 'auto', got {self.network_size!r}")
        else:
            size = tuple(int(s) for s in self.network_size)
            if len(size) != 3 or min(size) < 4:
                raise ValueError(f"network_size must be 3 integers >= 4 (nx, ny, nz), got {self.network_size}")
            self.network_size = size  # type: ignore[assignment]
        if int(self.auto_max_voxels) < 4 or int(self.size_multiple) < 1:
            raise ValueError(
                f"auto_max_voxels must be >= 4 and size_multiple >= 1, got {self.auto_max_voxels}, {self.size_multiple}"
            )
        floor = np.asarray(self.auto_min_spacing_mm, dtype=float)
        if floor.shape not in ((), (3,)) or not (np.all(np.isfinite(floor)) and np.all(floor >= 0)):
            raise ValueError(
                f"auto_min_spacing_mm must be one or three finite values >= 0, got {self.auto_min_spacing_mm}"
            )
        lo, hi = (float(v) for v in self.hu_window)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"hu_window must be (low, high) with high > low, got {self.hu_window}")
        self.hu_window = (lo, hi)
        if not math.isfinite(self.crop_margin_mm) or self.crop_margin_mm < 0:
            raise ValueError(f"crop_margin_mm must be a finite value >= 0, got {self.crop_margin_mm}")


@dataclass
class PreprocessedPair:
    """Network inputs on one grid.

    Attributes:
        grid: the network grid (direction of the fixed image, covering the crop box).
        fixed: ``(1, 1, D, H, W)`` normalised fixed image in ``[0, 1]``.
        moving: ``(1, 1, D, H, W)`` normalised moving image sampled at ``affine @ x`` (``x`` the grid
            points; identity when no affine), in ``[0, 1]``.
        fixed_mask, moving_mask: ``(1, 1, D, H, W)`` float masks in ``[0, 1]`` (linear
            interpolation of the binary masks) or ``None``; ``moving_mask`` is sampled like ``moving``.
        crop_index: ``(index_lo, index_hi)`` of the crop box on the fixed grid (x, y, z).
        moving_valid: ``(1, 1, D, H, W)`` fraction in ``[0, 1]`` of each voxel whose moving sample
            point lies inside the moving field of view (1 inside, 0 outside, linear at the border).
    """

    grid: ImageGrid
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_mask: torch.Tensor | None = None
    moving_mask: torch.Tensor | None = None
    crop_index: tuple[tuple[int, int, int], tuple[int, int, int]] = field(default=((0, 0, 0), (1, 1, 1)))
    moving_valid: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# intensity
# ----------------------------------------------------------------------------------------------
def normalize_ct(hu: torch.Tensor, window: Sequence[float] = HU_WINDOW) -> torch.Tensor:
    """Clip HU to ``window = (low, high)`` and map linearly to ``[0, 1]``; same shape, float."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"HU window must have high > low, got {tuple(window)}")
    x = hu if hu.is_floating_point() else hu.float()
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# crop box and network grid
# ----------------------------------------------------------------------------------------------
def mask_values_problem(values: np.ndarray | torch.Tensor, name: str = "mask") -> str | None:
    """Why ``values`` are not a mask (negative or NaN values), naming the values seen; None if they are one.

    A mask is 0 (background) and positive (lung; label maps such as 1 = right, 2 = left lung
    count as lung everywhere they are nonzero).
    """
    if isinstance(values, torch.Tensor):
        if values.numel() == 0 or values.dtype == torch.bool:
            return None
        n_nan = int(torch.isnan(values).sum()) if values.is_floating_point() else 0
        lo = float(values.min()) if n_nan == 0 else 0.0
        if n_nan == 0 and lo >= 0:
            return None
        arr = values.detach().cpu().double().numpy()
    else:
        arr = np.asarray(values)
        if arr.size == 0 or arr.dtype == bool or np.issubdtype(arr.dtype, np.unsignedinteger):
            return None
        n_nan = int(np.isnan(arr).sum()) if np.issubdtype(arr.dtype, np.floating) else 0
        lo = float(arr.min()) if n_nan == 0 else 0.0
        if n_nan == 0 and lo >= 0:
            return None
    if n_nan:
        return f"{name} contains {n_nan} NaN values; a mask is 0 (background) and positive (lung)"
    unique = np.unique(arr)
    seen = ", ".join(f"{float(v):g}" for v in unique[:6]) + (f" and {unique.size - 6} more" if unique.size > 6 else "")
    return (
        f"{name} has negative values (range {float(unique[0]):g}..{float(unique[-1]):g}; values seen: {seen}); "
        "a mask is 0 (background) and positive (lung)"
    )


def mask_to_tensor(mask: sitk.Image | torch.Tensor | np.ndarray, grid: ImageGrid, name: str = "mask") -> torch.Tensor:
    """A mask as a float ``(1, 1, D, H, W)`` tensor of ``{0, 1}`` on ``grid`` (checks size, geometry and values).

    Raises:
        ValueError: the mask's grid or shape does not match ``grid``, or it has negative or NaN
            values (see :func:`mask_values_problem`; images, arrays and CPU tensors are checked).
    """
    if isinstance(mask, sitk.Image):
        if mask.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"{name} must be scalar, got {mask.GetNumberOfComponentsPerPixel()} components per voxel")
        mgrid = ImageGrid.from_sitk(mask)
        if not mgrid.is_close(grid, tol_mm=1e-3 * min(grid.spacing)):
            raise ValueError(f"{name} grid ({mgrid.describe()}) differs from its image grid ({grid.describe()})")
        arr = np.ascontiguousarray(sitk.GetArrayViewFromImage(mask))
        problem = mask_values_problem(arr, name)
        if problem is not None:
            raise ValueError(problem)
        return torch.as_tensor(arr > 0, dtype=torch.float32)[None, None]
    t = torch.as_tensor(np.asarray(mask)) if isinstance(mask, np.ndarray) else mask
    if t.ndim == 3:
        t = t[None, None]
    check_volume(t, grid, name)
    # values are checked where they are at hand: a tensor on an accelerator is taken as it is
    # (reading it would wait for the device); register() checks the masks it gets as images
    problem = mask_values_problem(t, name) if t.device.type == "cpu" else None
    if problem is not None:
        raise ValueError(problem)
    return (t > 0).to(torch.float32)


def lung_bounding_box(
    mask: sitk.Image | torch.Tensor | np.ndarray,
    grid: ImageGrid,
    margin_mm: float = 10.0,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Voxel box ``(index_lo, index_hi)`` (x, y, z, half-open) around the mask plus ``margin_mm``.

    The margin is converted per axis with the grid spacing and the box is clipped to the grid.

    Raises:
        ValueError: the mask is empty (all zero), has negative values, or does not match ``grid``.
    """
    t = mask_to_tensor(mask, grid)
    nz = torch.nonzero(t[0, 0] > 0)
    if nz.numel() == 0:
        raise ValueError(f"the lung mask is empty (every voxel is 0; grid {grid.describe()}): cannot crop to the lungs")
    lo_zyx = nz.min(dim=0).values.tolist()
    hi_zyx = nz.max(dim=0).values.tolist()
    box = (tuple(int(v) for v in zyx_to_xyz(lo_zyx)), tuple(int(v) + 1 for v in zyx_to_xyz(hi_zyx)))
    return expand_box(box, grid, margin_mm)  # type: ignore[arg-type]


def expand_box(
    box: tuple[Sequence[int], Sequence[int]], grid: ImageGrid, margin_mm: float
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A voxel box ``(index_lo, index_hi)`` (x, y, z, half-open) grown by ``margin_mm`` per side
    (whole voxels, ``ceil(margin / spacing)`` per axis) and clipped to ``grid``."""
    m = np.ceil(float(margin_mm) / np.asarray(grid.spacing))
    lo = np.maximum(np.asarray(box[0], dtype=float) - m, 0).astype(int)
    hi = np.minimum(np.asarray(box[1], dtype=float) + m, np.asarray(grid.size)).astype(int)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)  # type: ignore[return-value]


def network_grid(
    fixed_grid: ImageGrid,
    fixed_mask: sitk.Image | torch.Tensor | np.ndarray | None = None,
    options: PreprocessOptions | None = None,
) -> tuple[ImageGrid, tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The network grid for a fixed image and its crop box on the fixed grid.

    With ``options.crop_to_lungs`` and a mask, the box is :func:`lung_bounding_box`; otherwise the
    whole fixed grid. The box (whole voxels of the fixed grid) is resized to ``network_size``
    voxels keeping its outer faces and the fixed direction.
    """
    opts = options if options is not None else PreprocessOptions()
    if opts.crop_to_lungs and fixed_mask is not None:
        lo, hi = lung_bounding_box(fixed_mask, fixed_grid, opts.crop_margin_mm)
    else:
        lo, hi = (0, 0, 0), fixed_grid.size
    box = fixed_grid.cropped(lo, hi)
    size = opts.network_size
    if size == "auto":
        size = auto_grid_size(box, opts.auto_max_voxels, opts.auto_min_spacing_mm, opts.size_multiple)
    return box.resized(size), (tuple(lo), tuple(hi))  # type: ignore[return-value]


def auto_grid_size(box: ImageGrid, max_voxels: int = 160, min_spacing_mm: float | Sequence[float] = 0.0,
                   multiple: int = 4) -> tuple[int, int, int]:
    """Voxels ``(nx, ny, nz)`` of a grid over ``box``: along each axis ``max_voxels``, but no more
    than the box's extent divided by ``min_spacing_mm`` (one value, or one per axis ``(x, y, z)``),
    each size rounded to the nearest multiple of ``multiple`` (at least ``multiple``, and at least 4).

    With ``min_spacing_mm`` a fraction of the image's own voxel size, a scan with fine voxels gets
    ``max_voxels`` per axis and a small or coarse scan (or a thick-slice axis) a smaller grid: the
    work follows the image.
    """
    extent = np.asarray(box.extent, dtype=float)
    floor = np.broadcast_to(np.asarray(min_spacing_mm, dtype=float), (3,))
    step = int(multiple)
    lowest = max(step, -(-4 // step) * step)
    size = []
    for e, s in zip(extent, floor):
        n = float(max_voxels) if s <= 0 else min(float(max_voxels), e / s)
        size.append(max(lowest, int(round(n / step)) * step))
    return tuple(size)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------------------------
def image_to_hu_tensor(image: sitk.Image, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ImageGrid]:
    """A 3-D scalar ``sitk.Image`` as a float32 ``(1, 1, D, H, W)`` tensor of its values plus its grid."""
    grid = ImageGrid.from_sitk(image)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per pixel")
    arr = sitk.GetArrayViewFromImage(image)
    t = torch.as_tensor(np.array(arr, dtype=np.float32), device=device)[None, None]
    return t, grid


def preprocess_pair(
    fixed: sitk.Image | tuple[torch.Tensor, ImageGrid],
    moving: sitk.Image | tuple[torch.Tensor, ImageGrid],
    fixed_mask: sitk.Image | torch.Tensor | None = None,
    moving_mask: sitk.Image | torch.Tensor | None = None,
    options: PreprocessOptions | None = None,
    affine: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    memo: Memo = no_memo,
) -> PreprocessedPair:
    """Fixed and moving CT (HU) -> normalised network inputs on the network grid.

    Args:
        fixed, moving: ``sitk.Image`` in HU, or ``(tensor (1, 1, D, H, W) in HU, grid)``.
        fixed_mask, moving_mask: optional lung masks on the grid of their image (any nonzero =
            lung). The fixed mask defines the crop box when ``options.crop_to_lungs``.
        options: window, crop and network size.
        affine: optional 4x4 LPS matrix with ``x_moving = affine @ x_fixed`` (pre-alignment); the
            moving image and mask are sampled at those points.
        device: where the outputs live.
        progress: ``progress(fraction, message)`` after each resampled volume (it may raise to stop).
        memo: where the fixed half (network grid, crop box, fixed image and mask on that grid) is
            kept for the next moving image (:mod:`MLVIRNETLib.core.memo`); default: computed each time.

    Returns:
        :class:`PreprocessedPair`. Outside the moving field of view the moving image is air
        (``-1024 HU -> 0``) and the moving mask 0.
    """
    opts = options if options is not None else PreprocessOptions()
    report = progress if progress is not None else (lambda fraction, message: None)
    key = ("network inputs", repr(opts), str(device), fixed_mask is not None)
    grid, box, f_net, fm = memo(key, lambda: _fixed_inputs(fixed, fixed_mask, opts, device, report))
    m_hu, m_grid = _as_tensor_and_grid(moving, device)
    m_mask = mask_to_tensor(moving_mask, m_grid, "moving mask").to(device) if moving_mask is not None else None
    report(0.3, "preprocessing: moving image")
    m_net = normalize_ct(
        resample_antialiased(m_hu, m_grid, grid, affine=affine, antialias=opts.antialias, padding_value=AIR_HU),
        opts.hu_window,
    )
    report(0.5, "preprocessing: masks")
    mm = (
        resample_antialiased(m_mask, m_grid, grid, affine=affine, antialias=False, padding_value=0.0)
        if m_mask is not None
        else None
    )
    report(0.8, "preprocessing: moving field of view")
    valid = resample_antialiased(
        torch.ones_like(m_hu[:1, :1]), m_grid, grid, affine=affine, antialias=False, padding_value=0.0
    )
    return PreprocessedPair(grid, f_net, m_net, fm, mm, box, valid)


def _fixed_inputs(
    fixed: sitk.Image | tuple[torch.Tensor, ImageGrid],
    fixed_mask: sitk.Image | torch.Tensor | None,
    opts: PreprocessOptions,
    device: torch.device | str,
    report: ProgressFn,
) -> tuple[ImageGrid, tuple[tuple[int, int, int], tuple[int, int, int]], torch.Tensor, torch.Tensor | None]:
    """The fixed half of :func:`preprocess_pair`: ``(network grid, crop box, fixed input, fixed mask or None)``."""
    f_hu, f_grid = _as_tensor_and_grid(fixed, device)
    f_mask = mask_to_tensor(fixed_mask, f_grid, "fixed mask").to(device) if fixed_mask is not None else None
    grid, box = network_grid(f_grid, f_mask, opts)
    report(0.1, "preprocessing: fixed image")
    # both images are air outside their field of view and go through the same resampling, so that
    # identical scans give identical inputs (voxel for voxel) whatever the grids
    f_net = normalize_ct(
        resample_antialiased(f_hu, f_grid, grid, antialias=opts.antialias, padding_value=AIR_HU), opts.hu_window
    )
    del f_hu  # a converted image is not kept
    fm = resample_antialiased(f_mask, f_grid, grid, antialias=False) if f_mask is not None else None
    return grid, box, f_net, fm


def _as_tensor_and_grid(
    image: sitk.Image | tuple[torch.Tensor, ImageGrid], device: torch.device | str
) -> tuple[torch.Tensor, ImageGrid]:
    if isinstance(image, sitk.Image):
        return image_to_hu_tensor(image, device)
    if isinstance(image, tuple) and len(image) == 2 and isinstance(image[1], ImageGrid):
        t, g = image
        check_volume(t, g, "image")
        return t.to(device=device, dtype=torch.float32), g
    raise ValueError(f"expected a sitk.Image or a (tensor, ImageGrid) pair, got {type(image).__name__}")
