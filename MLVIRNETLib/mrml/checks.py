"""Checks of a registration's nodes before any work: one clear error, nothing changed."""

from __future__ import annotations

from .nodes import nodeName, requireNode, requireNoParentTransform

NO_MODEL = "none"
"""``model`` value for registering without a network (variational multilevel refinement alone)."""


def resolveModel(model):
    """The module's model choice as the library's ``model`` argument: ``None``, ``""`` or
    ``"default"`` -> ``"default"`` (the shipped model), :data:`NO_MODEL` -> ``None`` (no network),
    anything else (a path or a network) as it is."""
    if model is None or (isinstance(model, str) and model in ("", "default")):
        return "default"
    if isinstance(model, str) and model.lower() == NO_MODEL:
        return None
    return model


def checkRegistrationInputs(
    fixedVolumeNode,
    movingVolumeNode,
    outputTransformNode=None,
    fixedMaskNode=None,
    movingMaskNode=None,
    outputVolumeNode=None,
    jacobianVolumeNode=None,
) -> None:
    """Refuse unusable registration inputs and outputs with one clear ValueError, before any work.

    Checks the node types, that fixed and moving differ, that no output is an input (inputs are
    never overwritten) and that the two output volumes differ, that the volumes hold voxels, and
    the parent transforms (see the module docstring).

    Raises:
        ValueError: naming the problem; nothing is created or changed.
    """
    requireNode(fixedVolumeNode, "vtkMRMLScalarVolumeNode", "fixed volume")
    requireNode(movingVolumeNode, "vtkMRMLScalarVolumeNode", "moving volume")
    if fixedVolumeNode.GetID() == movingVolumeNode.GetID():
        raise ValueError(f"the fixed and the moving volume are the same node ('{nodeName(fixedVolumeNode)}'): choose two volumes")
    for node, what in ((fixedVolumeNode, "fixed volume"), (movingVolumeNode, "moving volume")):
        if node.GetImageData() is None:
            raise ValueError(f"{what} '{nodeName(node)}' has no voxels")
    if outputTransformNode is not None:
        requireNode(outputTransformNode, "vtkMRMLTransformNode", "output transform")
        if outputTransformNode.GetParentTransformNode() is not None:
            raise ValueError(
                f"output transform '{nodeName(outputTransformNode)}' is itself under a transform; "
                "choose a transform that is not nested"
            )
    inputs = {fixedVolumeNode.GetID(): "fixed volume", movingVolumeNode.GetID(): "moving volume"}
    for mask, what, reference in ((fixedMaskNode, "fixed mask", fixedVolumeNode), (movingMaskNode, "moving mask", movingVolumeNode)):
        if mask is None:
            continue
        if not (mask.IsA("vtkMRMLLabelMapVolumeNode") or mask.IsA("vtkMRMLSegmentationNode")):
            raise ValueError(f"the {what} must be a labelmap volume or a segmentation, got a {mask.GetClassName()}")
        if mask.GetID() in inputs:
            raise ValueError(f"the {what} is the {inputs[mask.GetID()]}")
        requireNoParentTransform(mask, what)
    outputs = {}
    for node, what in ((outputVolumeNode, "warped volume"), (jacobianVolumeNode, "Jacobian volume")):
        if node is None:
            continue
        requireNode(node, "vtkMRMLScalarVolumeNode", what)
        if node.GetID() in inputs:
            raise ValueError(
                f"the {what} '{nodeName(node)}' is the {inputs[node.GetID()]}: inputs are never overwritten, "
                "choose another volume or 'Create new volume'"
            )
        if node.GetID() in outputs:
            raise ValueError(f"the {what} and the {outputs[node.GetID()]} are the same node: choose two volumes")
        outputs[node.GetID()] = what
    requireNoParentTransform(fixedVolumeNode, "fixed volume")
    requireNoParentTransform(movingVolumeNode, "moving volume", outputTransformNode, allowResults=True)
