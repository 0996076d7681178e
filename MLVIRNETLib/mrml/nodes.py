"""Conversions between MRML nodes (RAS) and library objects (LPS): volumes, grid transforms, markups.

Imports MRML, VTK and torch lazily inside functions, so ``import MLVIRNETLib.mrml`` works without
Slicer or torch. Every RAS/LPS crossing goes through :mod:`MLVIRNETLib.core.geometry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    import SimpleITK as sitk

    from ..core.deformation import Deformation
    from ..core.geometry import ImageGrid
    from ..core.progress import ProgressFn


SLAB_SLICES = 16
"""Slices converted at a time between a VTK displacement grid and a library field."""


# ----------------------------------------------------------------------------------------------
# Small VTK helpers
# ----------------------------------------------------------------------------------------------
def vtkMatrixToNumpy(matrix) -> np.ndarray:
    """A ``vtkMatrix4x4`` -> ``(4, 4)`` float64 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpyToVtkMatrix(array: np.ndarray):
    """A ``(4, 4)`` array -> new ``vtkMatrix4x4``."""
    import vtk

    a = np.asarray(array, dtype=float)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {a.shape}")
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def nodeName(node) -> str:
    return node.GetName() if node is not None and node.GetName() else "(unnamed)"


def requireNode(node, className: str, what: str) -> None:
    if node is None:
        raise ValueError(f"{what} is not set")
    if not hasattr(node, "IsA") or not node.IsA(className):
        got = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise ValueError(f"{what} must be a {className}, got a {got}")


def isResultFor(transformNode, movingNode) -> bool:
    """True when ``transformNode`` holds an MLVIRNET result computed for ``movingNode``."""
    return transformNode.GetNodeReferenceID(transformNode.GetMovingNodeReferenceRole()) == movingNode.GetID()


def requireNoParentTransform(node, what: str, allowedTransformNode=None, allowResults: bool = False) -> None:
    """Refuse nodes under a transform, except ``allowedTransformNode`` and (with ``allowResults``)
    an MLVIRNET result computed for this very node."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return
    if allowedTransformNode is not None and parent.GetID() == allowedTransformNode.GetID():
        return
    if allowResults and isResultFor(parent, node):
        return
    raise ValueError(
        f"{what} '{nodeName(node)}' is under the transform '{nodeName(parent)}': MLVIRNET uses each node "
        f"in its own coordinates, so harden that transform (Data module) or remove it first"
    )


def removeNodeAndDisplay(scene, node) -> None:
    """Remove a displayable node and the display nodes it created."""
    displayNodes = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    scene.RemoveNode(node)
    for displayNode in displayNodes:
        if displayNode is not None:
            scene.RemoveNode(displayNode)


def sceneOf(*nodes):
    for node in nodes:
        if node is not None and node.GetScene() is not None:
            return node.GetScene()
    raise ValueError("the input nodes are not in a MRML scene")


# ----------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------
def gridFromVolumeNode(volumeNode) -> "ImageGrid":
    """The :class:`ImageGrid` (LPS) of a volume node from its IJKToRAS matrix and image dimensions.

    Parent transforms are not applied (see the module docstring).
    """
    import vtk

    from ..core.geometry import ImageGrid

    requireNode(volumeNode, "vtkMRMLVolumeNode", "volume node")
    imageData = volumeNode.GetImageData()
    if imageData is None:
        raise ValueError(f"volume node '{nodeName(volumeNode)}' has no image data")
    extent = imageData.GetExtent()
    if extent[0] != 0 or extent[2] != 0 or extent[4] != 0:
        raise ValueError(f"volume node '{nodeName(volumeNode)}' has an image extent {extent} that does not start at 0")
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    try:
        return ImageGrid.from_ijk_to_ras(vtkMatrixToNumpy(ijkToRas), imageData.GetDimensions())
    except ValueError as error:
        raise ValueError(f"volume node '{nodeName(volumeNode)}' has an unusable geometry: {error}") from None


def arrayFromVolumeNode(volumeNode) -> np.ndarray:
    """A copy of the voxels of a scalar volume node as a ``(D, H, W)`` = ``(k, j, i)`` array."""
    from vtk.util import numpy_support

    grid = gridFromVolumeNode(volumeNode)
    scalars = volumeNode.GetImageData().GetPointData().GetScalars()
    if scalars is None:
        raise ValueError(f"volume node '{nodeName(volumeNode)}' has no voxel values")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(
            f"volume node '{nodeName(volumeNode)}' has {scalars.GetNumberOfComponents()} components per voxel; "
            "MLVIRNET needs a scalar (single-component) volume"
        )
    return numpy_support.vtk_to_numpy(scalars).reshape(grid.shape_zyx).copy()


def volumeNodeToImage(volumeNode) -> "sitk.Image":
    """A scalar volume (or labelmap) node -> ``SimpleITK.Image`` with the same geometry and pixel type."""
    import SimpleITK as sitk

    grid = gridFromVolumeNode(volumeNode)
    image = sitk.GetImageFromArray(arrayFromVolumeNode(volumeNode))
    grid.copy_to_sitk(image)
    return image


def updateVolumeNodeFromImage(volumeNode, image: "sitk.Image") -> None:
    """Put a 3-D scalar ``SimpleITK.Image`` (voxels and geometry) into an existing volume node."""
    import SimpleITK as sitk
    import vtk
    from vtk.util import numpy_support

    from ..core.geometry import ImageGrid

    requireNode(volumeNode, "vtkMRMLVolumeNode", "output volume node")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per pixel")
    grid = ImageGrid.from_sitk(image)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*grid.size)
    vtkArray = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    vtkArray.SetName("ImageScalars")
    imageData.GetPointData().SetScalars(vtkArray)
    wasModifying = volumeNode.StartModify()
    volumeNode.SetIJKToRASMatrix(numpyToVtkMatrix(grid.index_to_ras_matrix()))
    volumeNode.SetAndObserveImageData(imageData)
    volumeNode.EndModify(wasModifying)


def imageToNewVolumeNode(scene, image: "sitk.Image", name: str, className: str = "vtkMRMLScalarVolumeNode"):
    """Add a new volume node (with display nodes) holding ``image`` to ``scene``."""
    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    updateVolumeNodeFromImage(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def maskNodeToImage(maskNode, referenceVolumeNode) -> "sitk.Image":
    """A labelmap volume or segmentation node -> ``SimpleITK.Image`` label map.

    A segmentation is exported (visible segments) on the geometry of ``referenceVolumeNode``; a
    labelmap is used as it is.
    """
    if maskNode.IsA("vtkMRMLLabelMapVolumeNode") or maskNode.IsA("vtkMRMLScalarVolumeNode"):
        requireNoParentTransform(maskNode, "mask")
        return volumeNodeToImage(maskNode)
    if not maskNode.IsA("vtkMRMLSegmentationNode"):
        raise ValueError(f"a mask must be a labelmap volume or segmentation node, got a {maskNode.GetClassName()}")
    import slicer

    scene = sceneOf(maskNode, referenceVolumeNode)
    existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MLVIRNET temporary mask")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
            maskNode, labelmap, referenceVolumeNode
        )
        if not ok or labelmap.GetImageData() is None:
            raise ValueError(f"segmentation '{nodeName(maskNode)}' could not be exported to a labelmap")
        return volumeNodeToImage(labelmap)
    finally:
        # the export adds the labelmap, its display node and a color table: remove them all again
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in existing and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                scene.RemoveNode(node)


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------
def deformationToGridTransform(deformation: "Deformation", progress: "ProgressFn | None" = None):
    """A :class:`Deformation` (LPS) -> ``vtkOrientedGridTransform`` (RAS) of the same map.

    The displacement grid has the geometry of ``deformation.grid`` (origin and spacing on the
    ``vtkImageData``, the RAS direction as the grid direction matrix) and holds the displacement
    vectors converted to RAS. Used as a transform *from parent*, ``TransformPoint(x_RAS)`` returns
    ``y(x)`` in RAS, trilinear between voxels and continued by the border value outside, like the
    library. ``progress(fraction, message)`` is called after each slab of 16 slices.
    """
    import slicer
    import torch
    import vtk
    from vtk.util import numpy_support

    from ..core.geometry import lps_to_ras

    if deformation.batch_size != 1:
        raise ValueError(f"expected a single deformation (batch size 1), got batch size {deformation.batch_size}")
    grid = deformation.grid
    u = deformation.displacement.detach()[0].cpu().movedim(0, -1)  # (D, H, W, 3) LPS
    vtkType = vtk.VTK_DOUBLE if u.dtype == torch.float64 else vtk.VTK_FLOAT
    ijkToRas = grid.index_to_ras_matrix()
    spacing = np.asarray(grid.spacing)

    displacements = vtk.vtkImageData()
    displacements.SetDimensions(*grid.size)
    displacements.SetSpacing(*grid.spacing)
    displacements.SetOrigin(*ijkToRas[:3, 3])
    displacements.AllocateScalars(vtkType, 3)
    view = numpy_support.vtk_to_numpy(displacements.GetPointData().GetScalars())  # (P, 3), shares memory
    view = view.reshape(*grid.shape_zyx, 3)
    depth = grid.shape_zyx[0]
    for z0 in range(0, depth, SLAB_SLICES):  # slab by slab: no full-size temporary
        z1 = min(depth, z0 + SLAB_SLICES)
        view[z0:z1] = lps_to_ras(u[z0:z1]).numpy()
        if progress is not None:
            progress(z1 / depth, f"grid transform: slices {z1}/{depth}")

    direction = np.eye(4)
    direction[:3, :3] = ijkToRas[:3, :3] / spacing[None, :]
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(displacements)
    transform.SetGridDirectionMatrix(numpyToVtkMatrix(direction))
    transform.SetInterpolationModeToLinear()
    return transform


def gridTransformToDeformation(gridTransform, progress: "ProgressFn | None" = None) -> "Deformation":
    """A ``vtkOrientedGridTransform`` (or ``vtkGridTransform``) -> :class:`Deformation` (LPS, float32).

    Inverse of :func:`deformationToGridTransform`; the transform must be in its forward direction.
    The vectors are converted slab by slab into one float32 field: besides the grid's own array,
    only the result and a slab are held. ``progress(fraction, message)`` is called after each slab.
    """
    import torch
    from vtk.util import numpy_support

    from ..core.deformation import Deformation
    from ..core.geometry import ImageGrid, ras_to_lps

    if gridTransform is None or not gridTransform.IsA("vtkGridTransform"):
        got = gridTransform.GetClassName() if gridTransform is not None else "None"
        raise ValueError(f"expected a grid transform, got {got}")
    if gridTransform.GetInverseFlag():
        raise ValueError("the grid transform is inverted; evaluate it on a grid with transformToDeformation instead")
    displacements = gridTransform.GetDisplacementGrid()
    if displacements is None:
        raise ValueError("the grid transform has no displacement grid")
    extent = displacements.GetExtent()
    size = displacements.GetDimensions()
    matrix = np.eye(4)
    if gridTransform.IsA("vtkOrientedGridTransform") and gridTransform.GetGridDirectionMatrix() is not None:
        matrix = vtkMatrixToNumpy(gridTransform.GetGridDirectionMatrix())
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = matrix[:3, :3] * np.asarray(displacements.GetSpacing())[None, :]
    # the first stored voxel sits at index extent[0,2,4] of the grid's index frame
    ijkToRas[:3, 3] = np.asarray(displacements.GetOrigin()) + ijkToRas[:3, :3] @ np.asarray(extent[0::2], dtype=float)
    grid = ImageGrid.from_ijk_to_ras(ijkToRas, size)
    vectors = numpy_support.vtk_to_numpy(displacements.GetPointData().GetScalars())  # shares the grid's memory
    if vectors.ndim != 2 or vectors.shape[1] != 3:
        raise ValueError(f"the displacement grid must hold 3-vectors, got array shape {vectors.shape}")
    vectors = vectors.reshape(*grid.shape_zyx, 3)
    scale, shift = float(gridTransform.GetDisplacementScale()), float(gridTransform.GetDisplacementShift())
    u = torch.empty((1, 3, *grid.shape_zyx), dtype=torch.float32)
    depth = grid.shape_zyx[0]
    for z0 in range(0, depth, SLAB_SLICES):
        z1 = min(depth, z0 + SLAB_SLICES)
        slab = vectors[z0:z1].astype(np.float32) * np.float32(scale) + np.float32(shift)
        u[0, :, z0:z1] = torch.from_numpy(np.moveaxis(np.asarray(ras_to_lps(slab), dtype=np.float32), -1, 0))
        if progress is not None:
            progress(z1 / depth, f"reading the grid transform: slices {z1}/{depth}")
    return Deformation(grid, u)


def transformToDeformation(transform, grid: "ImageGrid") -> "Deformation":
    """Evaluate any VTK transform (RAS -> RAS points) at the voxel centres of ``grid``.

    Returns the :class:`Deformation` ``u(x) = T(x) - x`` on ``grid`` (LPS mm, float32). Exact at
    the voxel centres for any transform (linear, grid, composite, inverted).
    """
    import torch
    import vtk
    from vtk.util import numpy_support

    from ..core.deformation import Deformation
    from ..core.geometry import lps_to_ras, ras_to_lps

    x_lps = grid.world_points(dtype=torch.float64).reshape(-1, 3).numpy()
    x_ras = np.ascontiguousarray(lps_to_ras(x_lps))
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(x_ras, deep=True))
    mapped = vtk.vtkPoints()
    transform.TransformPoints(points, mapped)
    y_lps = ras_to_lps(numpy_support.vtk_to_numpy(mapped.GetData()).astype(np.float64))
    u = (y_lps - x_lps).reshape(*grid.shape_zyx, 3)
    return Deformation(grid, torch.as_tensor(np.moveaxis(u, -1, 0)[None].astype(np.float32)).contiguous())


def transformPointsRas(transform, pointsRas: np.ndarray) -> np.ndarray:
    """Map RAS points ``(P, 3)`` through a VTK transform -> ``(P, 3)`` RAS."""
    import vtk
    from vtk.util import numpy_support

    p = np.ascontiguousarray(np.asarray(pointsRas, dtype=np.float64).reshape(-1, 3))
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(p, deep=True))
    mapped = vtk.vtkPoints()
    transform.TransformPoints(points, mapped)
    return numpy_support.vtk_to_numpy(mapped.GetData()).astype(np.float64).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# Markups
# ----------------------------------------------------------------------------------------------
def markupsControlPoints(fiducialNode) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, RAS positions ``(P, 3)`` and "position defined" flags ``(P,)`` of a markups node.

    A control point skipped while placing (position status "missing") is flagged False; its
    stored position means nothing.
    """
    requireNode(fiducialNode, "vtkMRMLMarkupsNode", "landmark node")
    n = fiducialNode.GetNumberOfControlPoints()
    ras = np.zeros((n, 3))
    defined = np.ones(n, dtype=bool)
    position = [0.0, 0.0, 0.0]
    missing = fiducialNode.PositionMissing
    for i in range(n):
        fiducialNode.GetNthControlPointPosition(i, position)
        ras[i] = position
        defined[i] = fiducialNode.GetNthControlPointPositionStatus(i) != missing
    labels = [fiducialNode.GetNthControlPointLabel(i) for i in range(n)]
    return labels, ras, defined


def pairedControlPoints(fixedNode, movingNode) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Corresponding control points of two markups nodes, in RAS.

    Pairs by label when every label of both lists is set and unique, else by index (the lists
    must then have the same length). Pairs with a missing point on either side are dropped.

    Returns:
        ``(labels, fixedRas (P, 3), movingRas (P, 3), skipped)``, ``skipped`` the pairs dropped.

    Raises:
        ValueError: the lists pair neither by label nor by index, or no pair is left.
    """
    fixedLabels, fixedRas, fixedDefined = markupsControlPoints(fixedNode)
    movingLabels, movingRas, movingDefined = markupsControlPoints(movingNode)
    byLabel = all(fixedLabels) and all(movingLabels) and len(set(fixedLabels)) == len(fixedLabels) and (
        len(set(movingLabels)) == len(movingLabels)
    )
    if byLabel and set(fixedLabels) == set(movingLabels):
        where = {label: i for i, label in enumerate(movingLabels)}
        order = [where[label] for label in fixedLabels]
        movingRas, movingDefined, movingLabels = movingRas[order], movingDefined[order], fixedLabels
    elif len(fixedLabels) != len(movingLabels):
        raise ValueError(
            f"the landmark lists differ in length: {len(fixedLabels)} fixed ('{nodeName(fixedNode)}') and "
            f"{len(movingLabels)} moving ('{nodeName(movingNode)}'), and their labels do not pair them"
        )
    keep = fixedDefined & movingDefined
    if not keep.any():
        raise ValueError(f"fixed landmarks '{nodeName(fixedNode)}' and '{nodeName(movingNode)}' have no pair of placed points")
    labels = [label for label, k in zip(fixedLabels, keep) if k]
    return labels, fixedRas[keep], movingRas[keep], int((~keep).sum())


def markupsToPoints(fiducialNode) -> np.ndarray:
    """Control points of a markups node in its own coordinates -> ``(P, 3)`` LPS mm."""
    from ..core.geometry import ras_to_lps

    requireNode(fiducialNode, "vtkMRMLMarkupsNode", "landmark node")
    n = fiducialNode.GetNumberOfControlPoints()
    ras = np.zeros((n, 3))
    position = [0.0, 0.0, 0.0]
    for i in range(n):
        fiducialNode.GetNthControlPointPosition(i, position)
        ras[i] = position
    return np.asarray(ras_to_lps(ras)).reshape(n, 3)


def setMarkupsPoints(fiducialNode, pointsLps: np.ndarray, labels: Sequence[str] | None = None) -> None:
    """Replace the control points of a markups node by LPS points ``(P, 3)`` (labels default 1..P)."""
    from ..core.geometry import lps_to_ras

    p = np.asarray(pointsLps, dtype=float)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape (P, 3), got {p.shape}")
    if labels is not None and len(labels) != len(p):
        raise ValueError(f"got {len(labels)} labels for {len(p)} points")
    ras = lps_to_ras(p)
    wasModifying = fiducialNode.StartModify()
    fiducialNode.RemoveAllControlPoints()
    for i, position in enumerate(ras):
        fiducialNode.AddControlPoint([float(v) for v in position], labels[i] if labels is not None else str(i + 1))
    fiducialNode.EndModify(wasModifying)

