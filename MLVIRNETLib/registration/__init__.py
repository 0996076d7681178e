"""The registration pipeline: affine pre-alignment, network inference, variational refinement.

Holds:
    options   :class:`RegistrationOptions`, the input checks and :class:`RegistrationResult`.
    quality   the quality check of a result.
    presets   the named settings ``fast``, ``standard`` and ``accurate``.
    pipeline  :func:`register`, one function per stage.
    affine    the affine pre-alignment.
    refine    the variational multilevel refinement (instance optimisation).
    fused_objective  its objective with a hand-written gradient (no autograd graph).
    warp      the full-resolution field and warped images, in slabs.
    series    every phase of a 4D-CT registered to a reference phase, one phase at a time.
    fixed_cache  the fixed image's share of a registration, kept for the next moving image.

May import: :mod:`MLVIRNETLib.core`, :mod:`MLVIRNETLib.io`, :mod:`MLVIRNETLib.preprocessing`,
:mod:`MLVIRNETLib.networks`, :mod:`MLVIRNETLib.losses`, :mod:`MLVIRNETLib.paths`.
"""

from ..core.progress import RegistrationCancelled
from .affine import AffineOptions
from .fixed_cache import FixedImageCache
from .options import (
    NETWORK_PRECISIONS,
    NetworkOptions,
    RegistrationOptions,
    RegistrationResult,
    RuntimeOptions,
    WorkingGrid,
    validate_pair,
)
from .refine import RefineOptions
from .pipeline import cpu_bf16_supported, register
from .quality import QualityCheck
from .presets import DEFAULT_PRESET, PRESETS, options_for, preset_options, preset_table, with_overrides
from .warp import warp_image

__all__ = [
    "AffineOptions",
    "DEFAULT_PRESET",
    "FixedImageCache",
    "NETWORK_PRECISIONS",
    "NetworkOptions",
    "PRESETS",
    "QualityCheck",
    "RegistrationCancelled",
    "RegistrationOptions",
    "RefineOptions",
    "RegistrationResult",
    "RuntimeOptions",
    "WorkingGrid",
    "cpu_bf16_supported",
    "options_for",
    "preset_options",
    "with_overrides",
    "preset_table",
    "register",
    "validate_pair",
    "warp_image",
]
