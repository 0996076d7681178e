"""Settings, result and input checks of :func:`MLVIRNETLib.registration.pipeline.register`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import SimpleITK as sitk

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid
from ..preprocessing.pair import HU_WINDOW, PreprocessOptions
from .affine import AffineOptions
from .refine import RefineOptions

if TYPE_CHECKING:
    pass

NETWORK_PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RegistrationOptions:
    """Settings of :func:`register` (defaults chosen by measurement, see ``docs/registration.md``).

    Attributes:
        network_size: grid ``(nx, ny, nz)`` of preprocessing and refinement over the crop box. A
            model runs at its own input size on the same box (resampled from this grid; with
            ``refine_iterations=0`` the images are preprocessed straight to the model's size).
        refine_iterations: L-BFGS iterations per refinement level (int, or one per level);
            ``0`` = network only.
        refine_levels: refinement levels as downsampling factors of the network grid, coarse to fine.
        refine_optimizer: ``"lbfgs"`` or ``"adam"``.
        affine: run the affine pre-alignment.
        crop_to_lungs: crop the fixed field of view to the lung box (+ ``crop_margin_mm``).
        crop_margin_mm: margin around the lung box, mm.
        alpha: curvature weight of the refinement, mm^2.
        beta: mask-alignment weight of the refinement (``> 0`` computes missing moving masks).
        ngf_eps: NGF edge parameter, normalised intensity per mm.
        use_bf16: bf16 autocast for the network on CPU (only where the CPU supports bf16 natively,
            see :func:`cpu_bf16_supported`; otherwise a message says it was ignored).
        use_amp: fp16 autocast for the network on CUDA.
        network_precision: ``"auto"`` (what ``use_bf16`` and ``use_amp`` say), or force the
            network's autocast dtype on any device: ``"float32"`` (none), ``"bfloat16"`` or
            ``"float16"``. A forced reduced precision runs even where it is emulated (far slower
            on CPUs without native support; used to measure its accuracy, e.g. CUDA's fp16 on a CPU).
        hu_window: intensity window mapped to ``[0, 1]``.
        lung_mask_spacing_mm: working voxel size of the automatic lung mask.
        affine_options: settings of the affine stage.
        slab_voxels: voxels per slab when evaluating the full-resolution field (the result does not
            depend on it; smaller slabs use less memory and report progress, and check a cancel, more often).
        num_threads: torch CPU threads during the call (restored afterwards); ``None`` leaves them.
    """

    network_size: tuple[int, int, int] = (160, 160, 160)
    refine_iterations: int | Sequence[int] = (150, 60)
    refine_levels: tuple[int, ...] = (4, 2)
    refine_optimizer: str = "lbfgs"
    affine: bool = True
    crop_to_lungs: bool = True
    crop_margin_mm: float = 10.0
    alpha: float = 100.0
    beta: float = 0.0
    ngf_eps: float = 0.003
    use_bf16: bool = False
    use_amp: bool = True
    network_precision: str = "auto"
    hu_window: tuple[float, float] = HU_WINDOW
    lung_mask_spacing_mm: float = 3.0
    affine_options: AffineOptions = field(default_factory=AffineOptions)
    slab_voxels: int = 1_000_000
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.preprocess_options()  # validates size, window, margin
        self.refine_options()  # validates iterations, levels, weights
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if self.network_precision not in NETWORK_PRECISIONS:
            raise ValueError(f"network_precision must be one of {NETWORK_PRECISIONS}, got {self.network_precision!r}")
        if int(self.slab_voxels) < 1:
            raise ValueError(f"slab_voxels must be >= 1, got {self.slab_voxels}")
        factor = max(self.refine_options().level_factors)
        if sum(self.refine_options().iterations_per_level()) > 0 and any(int(n) % factor for n in self.network_size):
            raise ValueError(
                f"network_size {tuple(self.network_size)} must be divisible by the largest refinement level "
                f"factor {factor} (refine_levels {tuple(self.refine_levels)})"
            )

    def preprocess_options(self, network_size: Sequence[int] | None = None) -> PreprocessOptions:
        return PreprocessOptions(
            network_size=tuple(network_size if network_size is not None else self.network_size),  # type: ignore[arg-type]
            hu_window=self.hu_window,
            crop_to_lungs=self.crop_to_lungs,
            crop_margin_mm=self.crop_margin_mm,
        )

    def refine_options(self) -> RefineOptions:
        return RefineOptions(
            iterations=self.refine_iterations,
            level_factors=self.refine_levels,
            alpha=self.alpha,
            beta=self.beta,
            ngf_eps=self.ngf_eps,
            optimizer=self.refine_optimizer,
        )


@dataclass
class RegistrationResult:
    """Output of :func:`register`.

    Attributes:
        deformation: fixed -> moving map on the full-resolution fixed grid (full field of view),
            displacement ``(1, 3, D, H, W)`` LPS mm, ``x_moving = x_fixed + u(x_fixed)``.
        level_deformations: the full map (affine included) after each network level and each
            refinement level, coarse to fine, each on its own grid inside the crop box.
        affine: the 4x4 LPS pre-alignment (``x_moving = A x_fixed``) or ``None``.
        timings: seconds per stage (``lung_mask``, ``affine``, ``preprocess``, ``network``,
            ``refine``, ``field``) and ``total``.
        folding_fraction: fraction of network-grid voxels with ``det J <= 0`` of the final map.
        model_used: path of the model file (or ``"<in-memory>"``), ``None`` without a network.
        messages: notes for the user (missing default model, fallbacks).
        network_grid: the grid the network and the refinement worked on.
    """

    deformation: Deformation
    level_deformations: list[Deformation] = field(default_factory=list)
    affine: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    folding_fraction: float = 0.0
    model_used: str | None = None
    messages: list[str] = field(default_factory=list)
    network_grid: ImageGrid | None = None


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _check_image(image: sitk.Image, name: str) -> None:
    if not isinstance(image, sitk.Image):
        raise ValueError(f"{name} image must be a SimpleITK.Image, got {type(image).__name__}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name} image must be scalar, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} image contains {bad} NaN or infinite voxels (size {image.GetSize()})")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise ValueError(f"{name} image is constant ({lo:g} everywhere, size {image.GetSize()}): nothing to register")
    if min(image.GetSize()) < 4:
        raise ValueError(f"{name} image is too small to register: size {image.GetSize()} (need >= 4 voxels per axis)")


def _check_mask(mask: sitk.Image | None, image: sitk.Image, name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, sitk.Image):
        raise ValueError(f"{name} must be a SimpleITK.Image, got {type(mask).__name__}")
    if mask.GetDimension() != 3:
        raise ValueError(f"{name} is {mask.GetDimension()}-D (size {mask.GetSize()}); a 3-D mask is required")
    g_mask = ImageGrid.from_sitk(mask)
    g_image = ImageGrid.from_sitk(image)
    if not g_mask.is_close(g_image, tol_mm=1e-3 * min(g_image.spacing)):
        raise ValueError(f"{name} is on a different grid than its image: mask {g_mask.describe()}, image {g_image.describe()}")
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError(f"{name} is empty (no nonzero voxel)")


def validate_pair(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
) -> None:
    """Raise one ``ValueError`` naming the problem unless the inputs can be registered.

    Checks: both are 3-D scalar images of at least 4 voxels per axis, neither is constant or
    contains NaN/inf, and each mask (if given) is a non-empty 3-D image on its image's grid.
    """
    for image, name in ((fixed, "fixed"), (moving, "moving")):
        if not isinstance(image, sitk.Image):
            raise ValueError(f"{name} image must be a SimpleITK.Image, got {type(image).__name__}")
    if fixed.GetDimension() != moving.GetDimension() or fixed.GetDimension() != 3:
        raise ValueError(
            f"fixed and moving images must both be 3-D, got {fixed.GetDimension()}-D (size {fixed.GetSize()}) and "
            f"{moving.GetDimension()}-D (size {moving.GetSize()})"
        )
    _check_image(fixed, "fixed")
    _check_image(moving, "moving")
    _check_mask(fixed_mask, fixed, "fixed mask")
    _check_mask(moving_mask, moving, "moving mask")

