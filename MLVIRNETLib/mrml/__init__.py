"""The 3D Slicer side: MRML nodes <-> library objects, and the module's Logic.

Holds:
    nodes  conversions between MRML nodes (RAS) and library objects (LPS).
    logic  :class:`RegistrationLogic`, everything the Slicer module does, usable without the GUI.
    series  a 4D-CT (volume sequence) registered to a reference phase: transform and Jacobian
        sequences in a sequence browser, the motion summary (``motion_nodes``: table and charts).

Importing this package needs neither Slicer nor torch (both are imported inside functions), so
``MLVIRNET/MLVIRNET.py`` can load it before PyTorch is installed.

May import: every subpackage except :mod:`MLVIRNETLib.cli` and :mod:`MLVIRNETLib.training`.
"""

from .checks import NO_MODEL
from .logic import RegistrationLogic
from .nodes import (
    arrayFromVolumeNode,
    deformationToGridTransform,
    gridFromVolumeNode,
    gridTransformToDeformation,
    imageToNewVolumeNode,
    markupsToPoints,
    maskNodeToImage,
    numpyToVtkMatrix,
    setMarkupsPoints,
    transformPointsRas,
    transformToDeformation,
    updateVolumeNodeFromImage,
    volumeNodeToImage,
    vtkMatrixToNumpy,
)

__all__ = [
    "RegistrationLogic",
    "NO_MODEL",
    "arrayFromVolumeNode",
    "deformationToGridTransform",
    "gridFromVolumeNode",
    "gridTransformToDeformation",
    "imageToNewVolumeNode",
    "markupsToPoints",
    "maskNodeToImage",
    "numpyToVtkMatrix",
    "setMarkupsPoints",
    "transformPointsRas",
    "transformToDeformation",
    "updateVolumeNodeFromImage",
    "volumeNodeToImage",
    "vtkMatrixToNumpy",
]


def __getattr__(name: str):
    """``MLVIRNETLogic``, the former name of :class:`RegistrationLogic` (deprecated)."""
    if name == "MLVIRNETLogic":
        from . import logic

        return logic.MLVIRNETLogic  # warns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
