"""Named speed/accuracy settings of :func:`~MLVIRNETLib.registration.pipeline.register`.

``fast``
    the network alone after the affine pre-alignment (no refinement). Where its one-way result fits
    the pair worse than no motion, it runs again with the images swapped and the two directions
    are averaged (``network_both_ways_fallback``); where that fits worse too, no motion is kept.
``standard``
    the defaults of :class:`RegistrationOptions`: network, then refinement on 1/4 and 1/2 of the
    working grid.
``accurate``
    network, then refinement on a finer working grid (at most 224 voxels per axis instead of 160)
    with more iterations on its finer level: the accuracy follows the resolution of the working
    grid, and this bought more of it per second than a third refinement level at full resolution
    (docs/performance.md). The network runs one way: with models v4 to v6, running it both ways
    (``network_symmetric``) made this preset no more accurate on the held-out CTs (docs/performance.md).

Each preset is a set of :class:`RegistrationOptions` fields; anything passed beside it wins. The
measured time and accuracy of each are in ``docs/performance.md`` (``benchmarks/bench_register.py``).
"""

from __future__ import annotations

from typing import Any

from .options import RegistrationOptions

__all__ = ["DEFAULT_PRESET", "PRESETS", "preset_options"]

PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"refine_iterations": 0},
    "standard": {},
    "accurate": {"grid_max_voxels": 224, "refine_iterations": (150, 80)},
}
"""Preset name -> the :class:`RegistrationOptions` fields it sets (the rest keep their defaults)."""

DEFAULT_PRESET = "standard"
"""The preset of ``RegistrationOptions()``, the CLI and the Slicer module when none is chosen."""


def preset_options(name: str = DEFAULT_PRESET, **overrides: Any) -> RegistrationOptions:
    """The :class:`RegistrationOptions` of preset ``name`` with ``overrides`` applied on top.

    Raises:
        ValueError: an unknown preset (the message lists them), an unknown field or a bad value.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return RegistrationOptions.from_dict({**PRESETS[name], **overrides})
