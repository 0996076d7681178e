"""Named speed/accuracy settings of :func:`~MLVIRNETLib.registration.pipeline.register`, and the one
function that turns a preset plus a user's overrides into :class:`RegistrationOptions`.

``fast``
    the network alone after the affine pre-alignment (no refinement). Where its one-way result fits
    the pair worse than no motion, it runs again with the images swapped and the two directions
    are averaged (``network.both_ways_fallback``); where that fits worse too, no motion is kept.
``standard``
    the defaults of :class:`RegistrationOptions`: network, then refinement on 1/4 and 1/2 of the
    working grid.
``accurate``
    network, then refinement on a finer working grid with more iterations on its finer level: the
    accuracy follows the resolution of the working grid.

:data:`PRESETS` is data: ``{preset: {group: {field: value}}}``, the settings that differ from the
defaults (``docs/performance.md`` prints it with :func:`preset_table`, and gives the measured time
and accuracy of each).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from .options import DEPRECATED_NAMES, GROUPS, RegistrationOptions

__all__ = ["DEFAULT_PRESET", "PRESETS", "options_for", "preset_options", "preset_table", "with_overrides"]

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "fast": {"refinement": {"iterations": 0}},
    "standard": {},
    "accurate": {"grid": {"max_voxels": 288}, "refinement": {"iterations": (60, 30)}},
}
"""Preset name -> ``{group: {field: value}}`` of :class:`RegistrationOptions` (the rest keep
their defaults)."""

DEFAULT_PRESET = "standard"
"""The preset of ``RegistrationOptions()``, the CLI and the Slicer module when none is chosen."""


def options_for(preset: str = DEFAULT_PRESET, **overrides: Any) -> RegistrationOptions:
    """The :class:`RegistrationOptions` of ``preset`` with the user's ``overrides`` on top.

    Each override is a group of :class:`RegistrationOptions` (see ``GROUPS``): a ``dict`` of some of
    its fields (merged into the preset's, field by field), its object (replaces the group) or, for
    ``affine``, ``None`` (skip the stage). A value of ``None`` inside a ``dict`` means "what the
    preset says" (so that a caller can pass its unset settings as they are). Flat names of earlier
    releases (e.g. ``refine_iterations=0``) still work, with a ``DeprecationWarning``. All checks
    are those of :meth:`RegistrationOptions.validate`.

    Example: ``options_for("accurate", refinement={"iterations": 10}, affine=None)``.

    Raises:
        ValueError: an unknown preset (the message lists them), an unknown group or field, or a bad value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values: dict[str, Any] = {group: dict(settings) for group, settings in PRESETS[preset].items()}
    flat: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in GROUPS:
            if isinstance(value, Mapping):
                base = values.get(name)
                merged = dict(base) if isinstance(base, Mapping) else {}
                merged.update({k: v for k, v in value.items() if v is not None})
                values[name] = merged
            else:
                values[name] = value
        elif name in DEPRECATED_NAMES or name in ("use_bf16", "use_amp", "network_symmetric", "affine_options"):
            flat[name] = value
        else:
            raise ValueError(f"unknown options key {name!r}; valid keys are {list(GROUPS)}")
    if isinstance(flat.get("affine_options"), Mapping) or "affine_options" in flat:
        values.setdefault("affine", True)
    return RegistrationOptions(**values, **flat)


def with_overrides(options: RegistrationOptions, **overrides: Any) -> RegistrationOptions:
    """A validated copy of ``options`` with the user's ``overrides`` on top, read as in
    :func:`options_for` (a group's ``dict`` changes only the fields it names, ``None`` values inside
    it keep what ``options`` says; ``affine=None`` skips the stage; a ``dict`` for a skipped affine
    stage starts from the affine defaults). ``options`` itself is not changed.

    Raises:
        ValueError: an unknown group or field, or a bad value.
        TypeError: ``options`` is not a :class:`RegistrationOptions`.
    """
    if not isinstance(options, RegistrationOptions):
        raise TypeError(f"options must be a RegistrationOptions, got {type(options).__name__}")
    groups: dict[str, Any] = {name: getattr(options, name) for name in GROUPS}
    for name, value in overrides.items():
        if name not in GROUPS:
            raise ValueError(f"unknown options key {name!r}; valid keys are {list(GROUPS)}")
        if isinstance(value, Mapping):
            changes = {k: v for k, v in value.items() if v is not None}
            current = groups[name]
            if current is None:  # a skipped affine stage turned on with some settings
                groups[name] = changes
            else:
                known = {f for f in current.__dataclass_fields__}
                unknown = sorted(str(k) for k in changes if k not in known)
                if unknown:
                    raise ValueError(f"unknown {name} option key(s) {unknown}; valid keys are {sorted(known)}")
                groups[name] = replace(current, **changes)
        else:
            groups[name] = value
    return RegistrationOptions(**groups)  # copies each group and validates the whole


def preset_options(name: str = DEFAULT_PRESET, **overrides: Any) -> RegistrationOptions:
    """The :class:`RegistrationOptions` of preset ``name`` with ``overrides`` applied on top (the
    same as :func:`options_for`)."""
    return options_for(name, **overrides)


def preset_table() -> str:
    """The presets as a Markdown table: one row per setting a preset changes, the defaults beside."""
    defaults = RegistrationOptions()
    keys = sorted({(g, f) for settings in PRESETS.values() for g, fs in settings.items() for f in fs})
    lines = ["| setting | " + " | ".join(PRESETS) + " |", "|---|" + "---|" * len(PRESETS)]
    for group, field_name in keys:
        default = getattr(getattr(defaults, group), field_name)
        cells = [repr(PRESETS[p].get(group, {}).get(field_name, default)) for p in PRESETS]
        lines.append(f"| `{group}.{field_name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
