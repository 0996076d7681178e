"""Settings, result and input checks of :func:`MLVIRNETLib.registration.pipeline.register`."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid
from ..preprocessing.lungmask import LungMaskOptions
from ..preprocessing.morphology import not_hu_reason
from ..preprocessing.pair import HU_WINDOW, PreprocessOptions, mask_values_problem
from .affine import AffineOptions
from .quality import QualityCheck
from .refine import RefineOptions

NETWORK_PRECISIONS = ("auto", "auto-bfloat16", "float32", "bfloat16", "float16")
"""Values of :attr:`NetworkOptions.precision`."""

MAX_GRID_SIZE = 512
"""Largest working-grid size per axis."""

MAX_NETWORK_SIZE = MAX_GRID_SIZE
"""Former name of :data:`MAX_GRID_SIZE`."""

MAX_NETWORK_MEMORY_GB = 16.0
"""Largest estimated memory (GB) of preprocessing and refinement on the working grid
(:meth:`RegistrationOptions.estimated_memory_gb`); larger grids are refused before any allocation."""

_BYTES_PER_NETWORK_VOXEL = 4 * 8
"""float32 volumes held on the working grid: fixed, moving, masks, moving_valid, the refined
displacement (3 components)."""

_BYTES_PER_REFINE_VOXEL = 4 * 60
"""float32 values per voxel of a refinement level: displacement, its gradient, L-BFGS history
(10 pairs of 3 components), sample points, warped images and the autograd intermediates."""


@dataclass
class WorkingGrid:
    """The grid that preprocessing and refinement work on, over the crop box (the network runs at
    the model's own input size on the same box, resampled from this grid).

    Attributes:
        size: ``(nx, ny, nz)``, or ``"auto"``: ``max_voxels`` along each axis, but voxels no smaller
            than ``min_spacing_fraction`` of the fixed image's voxel size along that axis
            (:func:`~MLVIRNETLib.preprocessing.pair.auto_grid_size`), so that a small, coarse or
            thick-slice scan gets a smaller grid. A fixed size needs at least 4 voxels per axis and,
            when refining, a multiple of the largest refinement level factor with at least 3
            voxels per axis on the coarsest level (the one rule, checked by
            :meth:`RegistrationOptions.validate`).
        max_voxels: see ``size="auto"``.
        min_spacing_fraction: see ``size="auto"``.
        crop_to_lungs: crop the fixed field of view to the lung box (+ ``crop_margin_mm``).
        crop_margin_mm: margin around the lung box, mm.
        hu_window: intensity window mapped to ``[0, 1]``.
    """

    size: tuple[int, int, int] | str = "auto"
    max_voxels: int = PreprocessOptions.auto_max_voxels
    min_spacing_fraction: float = 0.5
    crop_to_lungs: bool = PreprocessOptions.crop_to_lungs
    crop_margin_mm: float = PreprocessOptions.crop_margin_mm
    hu_window: tuple[float, float] = HU_WINDOW


@dataclass
class NetworkOptions:
    """How the network runs (the model and the device are arguments of :func:`register`).

    Attributes:
        precision: the network's autocast dtype. ``"auto"``: float16 on CUDA, float32 on a CPU;
            ``"auto-bfloat16"``: float16 on CUDA, bfloat16 on a CPU with native bf16 support
            (:func:`~MLVIRNETLib.registration.pipeline.cpu_bf16_supported`; elsewhere float32 and a
            message says so); ``"float32"``, ``"bfloat16"``, ``"float16"``: that dtype on any device,
            even where it is emulated (far slower; used to measure its accuracy).
        both_ways_fallback: network alone (no refinement), run one way: when its deformation fits
            the pair worse than no motion, run the cascade once more with the images swapped and
            keep the average of the two directions where that fits better than no motion (else
            the identity). Small motions are then not lost to the one-way network's bias, for one
            more network pass on those pairs only.
    """

    precision: str = "auto"
    both_ways_fallback: bool = True


@dataclass
class RuntimeOptions:
    """How the work is run (the result does not depend on these).

    Attributes:
        slab_voxels: voxels per slab when evaluating the full-resolution field (smaller slabs use
            less memory and report progress, and check a cancel, more often).
        num_threads: torch CPU threads during the call (restored afterwards); ``None`` leaves them.
    """

    slab_voxels: int = 1_000_000
    num_threads: int | None = None


GROUPS = ("grid", "affine", "network", "refinement", "lung_mask", "runtime")
"""The stage groups of :class:`RegistrationOptions`, in the order the stages run."""

_GROUP_TYPES: dict[str, type] = {
    "grid": WorkingGrid,
    "affine": AffineOptions,
    "network": NetworkOptions,
    "refinement": RefineOptions,
    "lung_mask": LungMaskOptions,
    "runtime": RuntimeOptions,
}

DEPRECATED_NAMES: dict[str, tuple[str, str]] = {
    "network_size": ("grid", "size"),
    "grid_max_voxels": ("grid", "max_voxels"),
    "grid_min_spacing_fraction": ("grid", "min_spacing_fraction"),
    "crop_to_lungs": ("grid", "crop_to_lungs"),
    "crop_margin_mm": ("grid", "crop_margin_mm"),
    "hu_window": ("grid", "hu_window"),
    "refine_iterations": ("refinement", "iterations"),
    "refine_levels": ("refinement", "level_factors"),
    "refine_optimizer": ("refinement", "optimizer"),
    "alpha": ("refinement", "alpha"),
    "beta": ("refinement", "beta"),
    "ngf_eps": ("refinement", "ngf_eps"),
    "network_precision": ("network", "precision"),
    "network_both_ways_fallback": ("network", "both_ways_fallback"),
    "lung_mask_spacing_mm": ("lung_mask", "working_spacing_mm"),
    "slab_voxels": ("runtime", "slab_voxels"),
    "num_threads": ("runtime", "num_threads"),
}
"""Flat keyword names of earlier releases -> ``(group, field)``. They still work, with a
``DeprecationWarning``, as keywords of :class:`RegistrationOptions` and :func:`options_for` and as
attributes; ``affine`` (a bool), ``affine_options``, ``use_bf16``, ``use_amp`` and
``network_symmetric`` are translated too (see :meth:`RegistrationOptions.__init__`)."""

_SPECIAL_DEPRECATED = ("affine_options", "use_bf16", "use_amp", "network_symmetric")

REGISTRATION_LUNG_MASK_SPACING_MM = 3.0
"""Working voxel size (mm) of the automatic lung mask inside :func:`register`: coarser than
:func:`~MLVIRNETLib.preprocessing.lungmask.segment_lungs` alone, since it only sets the crop box."""


def _default_group(name: str) -> Any:
    if name == "lung_mask":
        return LungMaskOptions(working_spacing_mm=REGISTRATION_LUNG_MASK_SPACING_MM)
    return _GROUP_TYPES[name]()


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"RegistrationOptions: {old!r} is deprecated; use {new} instead", DeprecationWarning, stacklevel=4)


@dataclass(init=False)
class RegistrationOptions:
    """Settings of :func:`register`, one group per stage; each group's class holds its defaults.

    Attributes:
        grid: :class:`WorkingGrid`, the grid of preprocessing and refinement.
        affine: :class:`~MLVIRNETLib.registration.affine.AffineOptions` of the affine
            pre-alignment, or ``None`` to skip it.
        network: :class:`NetworkOptions`.
        refinement: :class:`~MLVIRNETLib.registration.refine.RefineOptions` of the variational
            refinement (``iterations=0``: network only; ``level_factors`` relative to the working
            grid, coarse to fine).
        lung_mask: :class:`~MLVIRNETLib.preprocessing.lungmask.LungMaskOptions` of the automatic
            lung mask.
        runtime: :class:`RuntimeOptions`.

    A group may be given as its object or as a ``dict`` of its fields. The flat names of earlier
    releases (:data:`DEPRECATED_NAMES`) still work, with a ``DeprecationWarning``.
    """

    grid: WorkingGrid
    affine: AffineOptions | None
    network: NetworkOptions
    refinement: RefineOptions
    lung_mask: LungMaskOptions
    runtime: RuntimeOptions

    def __init__(
        self,
        grid: WorkingGrid | Mapping[str, Any] | None = None,
        affine: AffineOptions | Mapping[str, Any] | bool | None = True,
        network: NetworkOptions | Mapping[str, Any] | None = None,
        refinement: RefineOptions | Mapping[str, Any] | None = None,
        lung_mask: LungMaskOptions | Mapping[str, Any] | None = None,
        runtime: RuntimeOptions | Mapping[str, Any] | None = None,
        **deprecated: Any,
    ) -> None:
        """Raises:
            ValueError: an unknown keyword (the message lists the valid ones) or a bad setting.
            TypeError: a group that is neither its class, a ``dict`` nor ``None``.
        """
        unknown = sorted(k for k in deprecated if k not in DEPRECATED_NAMES and k not in _SPECIAL_DEPRECATED)
        if unknown:
            raise ValueError(f"unknown options key(s) {unknown}; valid keys are {list(GROUPS)}")
        given = {"grid": grid, "network": network, "refinement": refinement, "lung_mask": lung_mask,
                 "runtime": runtime}
        for name, value in given.items():
            object.__setattr__(self, name, _group(name, value))
        object.__setattr__(self, "_network_symmetric", False)
        if isinstance(affine, bool):
            if "affine_options" in deprecated:
                _deprecated("affine_options", "affine=AffineOptions(...)")
            if affine is not True or "affine" in deprecated:
                _deprecated("affine=True/False", "affine=AffineOptions() or None")
            affine = _group("affine", deprecated.get("affine_options")) if affine else None
        elif "affine_options" in deprecated:
            raise ValueError("give the affine settings once: affine=AffineOptions(...) (affine_options is deprecated)")
        self.affine = None if affine is None else _group("affine", affine)
        for name, value in deprecated.items():
            if name in DEPRECATED_NAMES:
                setattr(self, name, value)  # warns
        use_bf16, use_amp = deprecated.get("use_bf16"), deprecated.get("use_amp")
        if use_bf16 is not None or use_amp is not None:
            _deprecated("use_bf16/use_amp", "network=NetworkOptions(precision=...)")
            bf16, amp = bool(use_bf16) if use_bf16 is not None else False, bool(use_amp) if use_amp is not None else True
            if self.network.precision == "auto":
                if bf16 and not amp:
                    raise ValueError("use_bf16=True with use_amp=False has no precision setting: "
                                     "use network=NetworkOptions(precision='bfloat16') on a CPU")
                self.network.precision = "auto-bfloat16" if bf16 else ("auto" if amp else "float32")
        if "network_symmetric" in deprecated:
            _deprecated("network_symmetric", "nothing: no preset runs the network both ways on every level")
            object.__setattr__(self, "_network_symmetric", deprecated["network_symmetric"])
        self.validate()

    def __getattr__(self, name: str) -> Any:
        if name in DEPRECATED_NAMES:
            group, key = DEPRECATED_NAMES[name]
            _deprecated(name, f"options.{group}.{key}")
            return getattr(object.__getattribute__(self, group), key)
        if name == "network_symmetric":
            _deprecated(name, "nothing: no preset runs the network both ways on every level")
            return object.__getattribute__(self, "_network_symmetric")
        if name == "affine_options":
            _deprecated(name, "options.affine")
            return object.__getattribute__(self, "affine")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in DEPRECATED_NAMES:
            group, key = DEPRECATED_NAMES[name]
            _deprecated(name, f"options.{group}.{key}")
            current = getattr(self, group)
            if current.__dataclass_params__.frozen:  # e.g. LungMaskOptions: a changed copy
                object.__setattr__(self, group, replace(current, **{key: value}))
            else:
                setattr(current, key, value)
            return
        if name not in GROUPS:
            raise AttributeError(f"RegistrationOptions has no setting {name!r}; the groups are {list(GROUPS)}")
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistrationOptions):
            return NotImplemented
        return all(getattr(self, g) == getattr(other, g) for g in GROUPS) and \
            self._network_symmetric == other._network_symmetric

    def validate(self) -> None:
        """Check every setting (also after attributes were changed on an existing object;
        :func:`register` calls it). Sizes are checked before anything is allocated. This is the
        only place the settings are checked.

        Raises:
            ValueError: a setting out of range, a working-grid ``size`` that is not 3 integers,
                smaller than 4 per axis, too small for the refinement levels (the coarsest level
                needs 3 voxels per axis) or not a multiple of the largest level factor while
                refining, above ``MAX_GRID_SIZE`` per axis or estimated to need more than
                ``MAX_NETWORK_MEMORY_GB``.
            TypeError: a group of the wrong type.
        """
        for name in GROUPS:
            value = getattr(self, name)
            if name == "affine" and value is None:
                continue
            if isinstance(value, Mapping):
                value = _group(name, value)
                object.__setattr__(self, name, value)
            if not isinstance(value, _GROUP_TYPES[name]):
                raise TypeError(f"options.{name} must be a {_GROUP_TYPES[name].__name__} (or a dict of its fields"
                                f"{', or None' if name == 'affine' else ''}), got {type(value).__name__}")
        grid = self.grid
        size = grid.size
        auto = isinstance(size, str) and size == "auto"
        if not auto and not _is_integer_triple(size):
            raise ValueError(f"grid.size must be 3 integers (nx, ny, nz) or 'auto', got {size!r}")
        if not auto and min(int(n) for n in size) < 4:
            raise ValueError(f"grid.size {tuple(int(n) for n in size)} is too small: at least 4 voxels per axis")
        if isinstance(grid.max_voxels, bool) or not isinstance(grid.max_voxels, (int, np.integer)) \
                or not 8 <= int(grid.max_voxels) <= MAX_GRID_SIZE:
            raise ValueError(f"grid.max_voxels must be an integer from 8 to {MAX_GRID_SIZE}, got {grid.max_voxels!r}")
        fraction = float(grid.min_spacing_fraction)
        if not (math.isfinite(fraction) and fraction >= 0):
            raise ValueError(f"grid.min_spacing_fraction must be a finite value >= 0, got {grid.min_spacing_fraction}")
        refine = self.refinement
        refine.__post_init__()  # validates iterations, levels, weights (also after changes)
        self.preprocess_options()  # validates the window and the margin
        runtime = self.runtime
        if runtime.num_threads is not None and int(runtime.num_threads) < 1:
            raise ValueError(f"runtime.num_threads must be >= 1 or None, got {runtime.num_threads}")
        if int(runtime.slab_voxels) < 1:
            raise ValueError(f"runtime.slab_voxels must be >= 1, got {runtime.slab_voxels}")
        if self.network.precision not in NETWORK_PRECISIONS:
            raise ValueError(f"network.precision must be one of {NETWORK_PRECISIONS}, got {self.network.precision!r}")
        if not isinstance(self.network.both_ways_fallback, bool):
            raise ValueError(f"network.both_ways_fallback must be true or false, got {self.network.both_ways_fallback!r}")
        if not isinstance(self._network_symmetric, bool):
            raise ValueError(f"network_symmetric must be true or false, got {self._network_symmetric!r}")
        spacing = float(self.lung_mask.working_spacing_mm)
        if not (math.isfinite(spacing) and spacing > 0):
            raise ValueError(f"lung_mask.working_spacing_mm must be a finite value > 0, got {spacing}")
        size = (int(grid.max_voxels),) * 3 if auto else tuple(int(n) for n in size)
        if max(size) > MAX_GRID_SIZE:
            raise ValueError(
                f"grid.size {size} is too large: at most {MAX_GRID_SIZE} voxels per axis "
                f"(the default is {WorkingGrid.max_voxels} per axis)"
            )
        if sum(refine.iterations_per_level()) > 0 and not auto:
            factor = max(refine.level_factors)
            if any(n % factor for n in size):
                raise ValueError(
                    f"grid.size {size} must be divisible by the largest refinement level "
                    f"factor {factor} (refinement.level_factors {tuple(refine.level_factors)})"
                )
            if min(size) // factor < 3:
                raise ValueError(
                    f"grid.size {size} is too small for refinement: its coarsest level (1/{factor} of "
                    f"the grid) would have {tuple(n // factor for n in size)} voxels, and it needs at least 3 "
                    f"per axis; use a grid.size of at least {3 * factor} per axis, a multiple of {factor} "
                    f"(refinement.level_factors {tuple(refine.level_factors)})"
                )
        gb = self.estimated_memory_gb()
        if gb > MAX_NETWORK_MEMORY_GB:
            raise ValueError(
                f"grid.size {size} ({math.prod(size) / 1e6:.0f} million voxels) would need about {gb:.0f} GB for "
                f"preprocessing and refinement (limit {MAX_NETWORK_MEMORY_GB:g} GB); use a smaller grid.size "
                f"(the default is {WorkingGrid.max_voxels} per axis)"
            )

    def estimated_memory_gb(self) -> float:
        """A rough estimate (GB) of the memory preprocessing and refinement need on the working
        grid (the network itself and the full-resolution field come on top)."""
        size = (self.grid.max_voxels,) * 3 if isinstance(self.grid.size, str) else self.grid.size
        voxels = math.prod(int(n) for n in size)
        refine = self.refinement
        total = voxels * _BYTES_PER_NETWORK_VOXEL
        if sum(refine.iterations_per_level()) > 0:
            total += voxels * _BYTES_PER_REFINE_VOXEL / min(refine.level_factors) ** 3
        return total / 1e9

    def as_dict(self) -> dict[str, Any]:
        """The settings as a ``dict`` of groups (``affine`` may be ``None``), readable by
        :meth:`from_dict`."""
        return {g: (None if getattr(self, g) is None else asdict(getattr(self, g))) for g in GROUPS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RegistrationOptions":
        """Options from a ``dict`` of groups (each a dict of its fields, or its object).

        Raises:
            ValueError: an unknown key (the message lists the valid ones) or an invalid value.
        """
        try:
            return cls(**dict(values))
        except TypeError as exc:
            raise ValueError(f"invalid options {dict(values)!r}: {exc}") from exc

    def preprocess_options(
        self, network_size: Sequence[int] | str | None = None, fixed_spacing_mm: Sequence[float] | None = None
    ) -> PreprocessOptions:
        """The preprocessing settings for a working grid of ``network_size`` (default
        ``grid.size``); ``fixed_spacing_mm`` (the fixed image's voxel size) sets the finest spacing
        of an ``"auto"`` grid."""
        grid = self.grid
        size = network_size if network_size is not None else grid.size
        refine = self.refinement
        multiple = max(refine.level_factors) if sum(refine.iterations_per_level()) > 0 else 4
        min_spacing: float | tuple[float, ...] = 0.0
        if fixed_spacing_mm is not None:
            min_spacing = tuple(grid.min_spacing_fraction * float(v) for v in fixed_spacing_mm)
        return PreprocessOptions(
            network_size=size if isinstance(size, str) else tuple(size),  # type: ignore[arg-type]
            hu_window=tuple(grid.hu_window),  # type: ignore[arg-type]
            crop_to_lungs=grid.crop_to_lungs,
            crop_margin_mm=grid.crop_margin_mm,
            auto_max_voxels=int(grid.max_voxels),
            auto_min_spacing_mm=min_spacing,
            size_multiple=int(multiple),
        )

    def refine_options(self) -> RefineOptions:
        """The refinement settings (the ``refinement`` group itself)."""
        return self.refinement


def _group(name: str, value: Any) -> Any:
    """The group ``name`` from its object (copied), a ``dict`` of its fields, or ``None`` (defaults).

    Raises:
        ValueError: an unknown field of the group, or a bad value.
        TypeError: a value of another type.
    """
    cls = _GROUP_TYPES[name]
    if value is None:
        return _default_group(name)
    if isinstance(value, cls):
        return replace(value)
    if isinstance(value, Mapping):
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in value if k not in names)
        if unknown:
            raise ValueError(f"unknown {name} option key(s) {unknown}; valid keys are {names}")
        return _build(cls, {**asdict(_default_group(name)), **value}, f"{name} option")
    raise TypeError(f"options.{name} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}")


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
        quality: the :class:`~MLVIRNETLib.registration.quality.QualityCheck` of the result (``None``
            only for a result built without the check).
    """

    deformation: Deformation
    level_deformations: list[Deformation] = field(default_factory=list)
    affine: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    folding_fraction: float = 0.0
    model_used: str | None = None
    messages: list[str] = field(default_factory=list)
    network_grid: ImageGrid | None = None
    quality: QualityCheck | None = None


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

