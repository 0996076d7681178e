"""MLVIRNET: multilevel variational image registration network for lung CT.

The distribution is called ``mlvirnet`` (``pip install mlvirnet``); the import name is
``MLVIRNETLib``, the library folder of the 3D Slicer extension.

Public API (imported on first use, so ``import MLVIRNETLib`` loads neither torch nor SimpleITK)::

    from MLVIRNETLib import register, RegistrationOptions, ImageGrid, Deformation

Subpackages by role (see docs/architecture.md for the allowed import directions):
``core`` (geometry, deformations, pyramids, filters, devices, progress), ``io``,
``preprocessing``, ``networks``, ``losses``, ``registration``, ``simulation``, ``evaluation``,
``training``, ``cli`` and ``mrml`` (the Slicer Logic).
"""

from __future__ import annotations

import importlib

from ._version import __version__

_PUBLIC = {
    "register": "MLVIRNETLib.registration",
    "RegistrationOptions": "MLVIRNETLib.registration",
    "RegistrationResult": "MLVIRNETLib.registration",
    "RegistrationCancelled": "MLVIRNETLib.core",
    "warp_image": "MLVIRNETLib.registration",
    "ImageGrid": "MLVIRNETLib.core",
    "Deformation": "MLVIRNETLib.core",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'MLVIRNETLib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
