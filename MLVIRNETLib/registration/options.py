"""Settings, result and input checks of :func:`MLVIRNETLib.registration.pipeline.register`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid
from ..preprocessing.morphology import not_hu_reason
from ..preprocessing.pair import HU_WINDOW, PreprocessOptions, mask_values_problem
from .affine import AffineOptions
from .refine import RefineOptions

NETWORK_PRECISIONS = ("auto", "float32", "bfloat16", "float16")

MAX_NETWORK_SIZE = 512
"""Largest ``network_size`` per axis."""

MAX_NETWORK_MEMORY_GB = 16.0
"""Largest estimated memory (GB) of preprocessing and refinement on the network grid
(:meth:`RegistrationOptions.estimated_memory_gb`); larger grids are refused before any allocation."""

_BYTES_PER_NETWORK_VOXEL = 4 * 8
"""float32 volumes held on the network grid: fixed, moving, masks, moving_valid, the refined
displacement (3 components)."""

_BYTES_PER_REFINE_VOXEL = 4 * 60
"""float32 values per voxel of a refinement level: displacement, its gradient, L-BFGS history
(10 pairs of 3 components), sample points, warped images and the autograd intermediates."""


@dataclass
class RegistrationOptions:
    """Settings of :func:`register` (defaults chosen by measurement, see ``docs/registration.md``).

    Attributes:
        network_size: grid ``(nx, ny, nz)`` of preprocessing and refinement over the crop box, or
            ``"auto"``: ``grid_max_voxels`` along each axis, but voxels no smaller than
            ``grid_min_spacing_fraction`` of the fixed image's voxel size along that axis
            (:func:`~MLVIRNETLib.preprocessing.pair.auto_grid_size`), so that a small, coarse or
            thick-slice scan gets a smaller grid. A model runs at its own input size on the same box
            (resampled from this grid; with ``refine_iterations=0`` the images are preprocessed
            straight to the model's size).
        grid_max_voxels: see ``network_size="auto"``.
        grid_min_spacing_fraction: see ``network_size="auto"``.
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
        network_symmetric: run the network both ways on every level (fixed/moving and
            moving/fixed, one batch) and average the forward estimate with the inverted backward
            one (:func:`~MLVIRNETLib.networks.cascade.symmetric_correction`, a fixed point): identical
            scans then give almost no displacement from the network itself, for about 1.8 times the
            network stage's time on a CPU. With models v5 and v6 the network alone is more
            accurate this way on both held-out CTs, but after the ``accurate`` refinement it is not
            (worse on one CT), so no preset uses it (docs/performance.md, "Symmetric network").
        network_both_ways_fallback: network alone (``refine_iterations=0``) run one way: when its
            deformation fits the pair worse than no motion, run the cascade once more with the
            images swapped and keep the average of the two directions where that fits better than
            no motion (else the identity). Small motions are then not lost to the one-way
            network's bias, for one more network pass on those pairs only.
        hu_window: intensity window mapped to ``[0, 1]``.
        lung_mask_spacing_mm: working voxel size of the automatic lung mask.
        affine_options: settings of the affine stage.
        slab_voxels: voxels per slab when evaluating the full-resolution field (the result does not
            depend on it; smaller slabs use less memory and report progress, and check a cancel, more often).
        num_threads: torch CPU threads during the call (restored afterwards); ``None`` leaves them.
    """

    network_size: tuple[int, int, int] | str = "auto"
    grid_max_voxels: int = 160
    grid_min_spacing_fraction: float = 0.5
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
    network_symmetric: bool = False
    network_both_ways_fallback: bool = True
    hu_window: tuple[float, float] = HU_WINDOW
    lung_mask_spacing_mm: float = 3.0
    affine_options: AffineOptions = field(default_factory=AffineOptions)
    slab_voxels: int = 1_000_000
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting (also after attributes were changed on an existing object;
        :func:`register` calls it). Sizes are checked before anything is allocated.

        Raises:
            ValueError: a setting out of range, a ``network_size`` that is not 3 integers, too
                small for ``refine_levels`` (the coarsest level needs 3 voxels per axis), above
                ``MAX_NETWORK_SIZE`` per axis or estimated to need more than
                ``MAX_NETWORK_MEMORY_GB``.
            TypeError: ``affine_options`` is not an :class:`AffineOptions`.
        """
        size = self.network_size
        auto = isinstance(size, str) and size == "auto"
        if not auto and not _is_integer_triple(size):
            raise ValueError(f"network_size must be 3 integers (nx, ny, nz) or 'auto', got {size!r}")
        if isinstance(self.grid_max_voxels, bool) or not isinstance(self.grid_max_voxels, (int, np.integer)) \
                or not 8 <= int(self.grid_max_voxels) <= MAX_NETWORK_SIZE:
            raise ValueError(f"grid_max_voxels must be an integer from 8 to {MAX_NETWORK_SIZE}, got {self.grid_max_voxels!r}")
        fraction = float(self.grid_min_spacing_fraction)
        if not (math.isfinite(fraction) and fraction >= 0):
            raise ValueError(f"grid_min_spacing_fraction must be a finite value >= 0, got {self.grid_min_spacing_fraction}")
        self.preprocess_options()  # validates size >= 4, window, margin
        refine = self.refine_options()  # validates iterations, levels, weights
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if self.network_precision not in NETWORK_PRECISIONS:
            raise ValueError(f"network_precision must be one of {NETWORK_PRECISIONS}, got {self.network_precision!r}")
        for name in ("network_symmetric", "network_both_ways_fallback"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if int(self.slab_voxels) < 1:
            raise ValueError(f"slab_voxels must be >= 1, got {self.slab_voxels}")
        if isinstance(self.affine_options, Mapping):
            self.affine_options = _build(AffineOptions, self.affine_options, "affine_options")
        if not isinstance(self.affine_options, AffineOptions):
            raise TypeError(
                "affine_options must be an AffineOptions (or a dict of its fields), "
                f"got {type(self.affine_options).__name__}"
            )
        if not (math.isfinite(float(self.lung_mask_spacing_mm)) and float(self.lung_mask_spacing_mm) > 0):
            raise ValueError(f"lung_mask_spacing_mm must be a finite value > 0, got {self.lung_mask_spacing_mm}")
        size = (int(self.grid_max_voxels),) * 3 if auto else tuple(int(n) for n in size)
        if max(size) > MAX_NETWORK_SIZE:
            raise ValueError(
                f"network_size {size} is too large: at most {MAX_NETWORK_SIZE} voxels per axis "
                "(the default is 160 per axis)"
            )
        if sum(refine.iterations_per_level()) > 0 and not auto:
            factor = max(refine.level_factors)
            if any(n % factor for n in size):
                raise ValueError(
                    f"network_size {size} must be divisible by the largest refinement level "
                    f"factor {factor} (refine_levels {tuple(refine.level_factors)})"
                )
            if min(size) // factor < 3:
                raise ValueError(
                    f"network_size {size} is too small for refinement: its coarsest level (1/{factor} of "
                    f"network_size) would have {tuple(n // factor for n in size)} voxels, and it needs at least 3 "
                    f"per axis; use a network_size of at least {3 * factor} per axis, a multiple of {factor} "
                    f"(refine_levels {tuple(refine.level_factors)})"
                )
        gb = self.estimated_memory_gb()
        if gb > MAX_NETWORK_MEMORY_GB:
            raise ValueError(
                f"network_size {size} ({math.prod(size) / 1e6:.0f} million voxels) would need about {gb:.0f} GB for "
                f"preprocessing and refinement (limit {MAX_NETWORK_MEMORY_GB:g} GB); use a smaller network_size "
                "(the default is 160 per axis)"
            )

    def estimated_memory_gb(self) -> float:
        """A rough estimate (GB) of the memory preprocessing and refinement need on the network
        grid (the network itself and the full-resolution field come on top)."""
        size = (self.grid_max_voxels,) * 3 if isinstance(self.network_size, str) else self.network_size
        voxels = math.prod(int(n) for n in size)
        refine = self.refine_options()
        total = voxels * _BYTES_PER_NETWORK_VOXEL
        if sum(refine.iterations_per_level()) > 0:
            total += voxels * _BYTES_PER_REFINE_VOXEL / min(refine.level_factors) ** 3
        return total / 1e9

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RegistrationOptions":
        """Options from a ``dict`` of field names (``affine_options`` may itself be a dict).

        Raises:
            ValueError: an unknown key (the message lists the valid ones) or an invalid value.
        """
        return _build(cls, values, "options")

    def preprocess_options(
        self, network_size: Sequence[int] | str | None = None, fixed_spacing_mm: Sequence[float] | None = None
    ) -> PreprocessOptions:
        """The preprocessing settings; ``fixed_spacing_mm`` (the fixed image's voxel size) sets the
        finest spacing of an ``"auto"`` grid."""
        size = network_size if network_size is not None else self.network_size
        refine = self.refine_options()
        multiple = max(refine.level_factors) if sum(refine.iterations_per_level()) > 0 else 4
        min_spacing: float | tuple[float, ...] = 0.0
        if fixed_spacing_mm is not None:
            min_spacing = tuple(self.grid_min_spacing_fraction * float(v) for v in fixed_spacing_mm)
        return PreprocessOptions(
            network_size=size if isinstance(size, str) else tuple(size),  # type: ignore[arg-type]
            hu_window=self.hu_window,
            crop_to_lungs=self.crop_to_lungs,
            crop_margin_mm=self.crop_margin_mm,
            auto_max_voxels=int(self.grid_max_voxels),
            auto_min_spacing_mm=min_spacing,
            size_multiple=int(multiple),
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
            refinement level, coarse to fine, each on its own grid inside the crop box. The
            network levels are those of its one-way pass, also where the network alone gave way
            to no motion or to its both-ways second pass (the result is then not the last entry).
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


def _is_integer_triple(values: Any) -> bool:
    """True for a list, tuple or 1-D array of 3 integral numbers (not bools)."""
    if isinstance(values, (str, bytes)) or np.ndim(values) != 1 or len(values) != 3:
        return False
    return all(
        not isinstance(v, (bool, np.bool_))
        and (isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()))
        for v in values
    )


def _build(cls: type, values: Mapping[str, Any], what: str):
    """``cls(**values)`` with one ``ValueError`` for unknown keys or a bad value."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; valid keys are {names}")
    try:
        return cls(**dict(values))
    except TypeError as exc:
        raise ValueError(f"invalid {what} {dict(values)!r}: {exc}") from exc


def as_options(options: "RegistrationOptions | Mapping[str, Any] | None") -> RegistrationOptions:
    """The ``options`` argument of :func:`register` as checked :class:`RegistrationOptions`.

    ``None`` gives the defaults; a ``dict`` is read with :meth:`RegistrationOptions.from_dict`; an
    existing object is validated again (its attributes may have been changed since it was made).

    Raises:
        TypeError: ``options`` is neither a ``RegistrationOptions``, a ``dict`` nor ``None``.
        ValueError: an unknown key or an invalid setting.
    """
    if options is None:
        return RegistrationOptions()
    if isinstance(options, RegistrationOptions):
        options.validate()
        return options
    if isinstance(options, Mapping):
        return RegistrationOptions.from_dict(options)
    raise TypeError(
        f"options must be a RegistrationOptions (or a dict of its fields, or None), got {type(options).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def field_of_view_lps(grid: ImageGrid, matrix: np.ndarray | None = None) -> str:
    """The LPS box (mm) around the outer voxel faces of ``grid`` (mapped by the 4x4 ``matrix``
    if given), as text: ``"x -200.0..150.0, y ..., z ... mm (LPS)"``."""
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    index = corners * np.asarray(grid.size, dtype=float) - 0.5
    world = np.asarray(grid.index_to_world(index), dtype=float)
    if matrix is not None:
        world = world @ np.asarray(matrix, dtype=float)[:3, :3].T + np.asarray(matrix, dtype=float)[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    return ", ".join(f"{a} {lo[i]:.1f}..{hi[i]:.1f}" for i, a in enumerate("xyz")) + " mm (LPS)"


def hu_messages(fixed: sitk.Image, moving: sitk.Image) -> list[str]:
    """Warnings for images whose values do not look like CT in Hounsfield units (see
    :func:`MLVIRNETLib.preprocessing.morphology.not_hu_reason`), one per image; empty when both do.

    The registration maps ``hu_window`` to ``[0, 1]``; other scales give poor results.
    """
    out = []
    for image, name in ((fixed, "fixed image"), (moving, "moving image")):
        reason = not_hu_reason(image, name)
        if reason is not None:
            out.append(f"{reason}; the registration windows HU values and may fail on other scales")
    return out


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
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name} must be scalar, got {mask.GetNumberOfComponentsPerPixel()} components per voxel")
    arr = sitk.GetArrayViewFromImage(mask)
    problem = mask_values_problem(arr, name)
    if problem is not None:
        raise ValueError(problem)
    if not arr.any():
        raise ValueError(f"{name} is empty (every voxel is 0; size {mask.GetSize()})")


def validate_pair(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
) -> None:
    """Raise one ``ValueError`` naming the problem unless the inputs can be registered.

    Checks: both are 3-D scalar images of at least 4 voxels per axis, neither is constant or
    contains NaN/inf, and each mask (if given) is a non-empty 3-D scalar image on its image's grid
    without negative or NaN values. Values that do not look like HU are no error here: see
    :func:`hu_messages` (warnings that :func:`register` reports).

    Raises:
        ValueError: the first problem found, naming the image and what was seen.
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

