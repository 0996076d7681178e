"""The geometric core: coordinate frames, deformations, pyramids, filters, devices, progress.

Holds:
    geometry     every coordinate frame and conversion (voxel index <-> LPS world, LPS <-> RAS,
                 array-index order ``(z, y, x)`` <-> ``(x, y, z)``); :class:`ImageGrid`.
    deformation  :class:`Deformation`: ``x_moving = x_fixed + u(x_fixed)`` on a grid, in mm.
    pyramid      image pyramids for the multilevel cascade.
    filters      Gaussian smoothing, box downsampling, anti-aliased resampling.
    devices      torch device choice and synchronisation.
    progress     the one progress/cancel protocol and :class:`RegistrationCancelled`.
    sampling     trilinear sampling on grids (the only ``grid_sample`` caller; threaded on the CPU).
    optimize     L-BFGS with a strong-Wolfe line search on one tensor of unknowns.
    threads      the OpenMP wait policy (passive) set before torch loads (no torch needed).

May import: torch, numpy and the standard library only; nothing else of MLVIRNETLib.

The names below are imported on first use: ``core.progress`` needs no torch, and the Slicer
Logic imports it before PyTorch may be installed.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "Deformation": ".deformation",
    "ImageGrid": ".geometry",
    "lps_to_ras": ".geometry",
    "ras_to_lps": ".geometry",
    "CancelFn": ".progress",
    "Progress": ".progress",
    "ProgressFn": ".progress",
    "RegistrationCancelled": ".progress",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
