"""What a registration in Slicer produces besides the transform: the warped moving volume, the
Jacobian determinant volume and the summary the module panel shows.

The images are computed in the Logic's worker thread from the library's result (no MRML node is
touched there); the calling thread then puts them into volume nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    import SimpleITK as sitk

    from ..core.deformation import Deformation
    from ..core.progress import ProgressFn
    from ..registration.quality import QualityCheck

JACOBIAN_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
"""Slicer's diverging blue-white-red colour table: blue where the lungs shrink (det J < 1), white
where the volume is kept, red where they expand."""

WARP_SLAB_VOXELS = 1_000_000
"""Voxels per slab of the warped volume: the slab's sample points and weights stay small next to
the field, so the warp's peak memory is the field plus the moving volume in float32 and the
output."""

JACOBIAN_SLAB_VOXELS = 2_000_000
"""Voxels per slab of the Jacobian determinant (its gradients take about 20 floats a voxel)."""

JACOBIAN_WINDOW = (1.0, 1.0)
"""Window and level of the Jacobian volume: det J from 0.5 to 1.5, centred on 1 (no change)."""


@dataclass(frozen=True)
class RegistrationSummary:
    """What the module panel shows of a registration; holds no field (the transform node does).

    Attributes:
        timings: seconds per stage and ``total``.
        folding_fraction: fraction of the working-grid voxels with ``det J <= 0``.
        model: the model file used (``None`` without a network).
        preset: the preset the options came from (``None`` for options given by the caller).
        device: the device the network ran on.
        messages: notes and warnings for the user.
        quality: the result's quality check (lung NCC, and Dice with both masks; ``None`` when not
            known).
    """

    timings: dict[str, float] = field(default_factory=dict)
    folding_fraction: float = 0.0
    model: str | None = None
    preset: str | None = None
    device: str = "cpu"
    messages: tuple[str, ...] = ()
    quality: QualityCheck | None = None

    def details(self) -> str:
        """Lines for the panel's details view; a failed quality check's warning comes right after
        the quality line (and is not repeated among the notes)."""
        lines = []
        if self.preset is not None:
            lines.append(f"Preset: {self.preset}")
        lines.append(f"Model: {self.model if self.model is not None else 'none (refinement only)'}")
        lines.append(f"Device: {self.device}")
        stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.timings.items() if name != "total")
        if "total" in self.timings:
            lines.append(f"Time: {self.timings['total']:.1f} s ({stages})")
        lines.append(f"Folding (det J <= 0): {100 * self.folding_fraction:.3f} % of voxels")
        q, warning = self.quality, None
        if q is not None:
            measures = f"lung NCC {q.ncc:.2f} (flagged below {q.ncc_threshold:.2f})"
            if q.lung_dice is not None:
                measures += f", lung Dice {q.lung_dice:.2f} (flagged below {q.dice_threshold:.2f})"
            lines.append(f"Quality: {'good' if q.ok else 'POOR'}: {measures}")
            if q.message is not None:
                warning = q.message
                lines.append(f"Warning: {warning}")
        lines.extend(f"Note: {message}" for message in self.messages if message != warning)
        return "\n".join(lines)


def warpedImage(movingImage: "sitk.Image", deformation: "Deformation", isLabel: bool, progress: "ProgressFn") -> "sitk.Image":
    """The moving image resampled on the deformation's grid, ``M(y(x))``, slab by slab in float32.

    Labelmaps are sampled nearest with 0 outside, other images trilinearly with the border value
    outside (the rules of ``mlvirnet warp``).
    """
    from ..registration.warp import warp_image

    if isLabel:
        return warp_image(movingImage, deformation, slab_voxels=WARP_SLAB_VOXELS, padding_value=0.0, mode="nearest",
                          progress=progress)
    return warp_image(movingImage, deformation, slab_voxels=WARP_SLAB_VOXELS, progress=progress)


def jacobianImage(deformation: "Deformation", progress: "ProgressFn") -> "sitk.Image":
    """``det J`` of the map ``x -> x + u(x)`` at every voxel of its grid, float32 (1 = volume kept)."""
    import SimpleITK as sitk

    from ..io.images import tensor_to_image

    import torch

    from ..core.deformation import jacobian_determinant

    grid = deformation.grid
    nx, ny, nz = grid.size
    u = deformation.displacement
    out = torch.empty((1, 1, *grid.shape_zyx), dtype=torch.float32)
    slab = max(1, JACOBIAN_SLAB_VOXELS // max(nx * ny, 1))
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        # one slice of margin on each side: the central differences of the kept slices are those of
        # the whole field, and the one-sided ones stay at the field's own borders
        a, b = max(0, z0 - 1), min(nz, z1 + 1)
        block = grid.cropped((0, 0, a), (nx, ny, b))
        det = jacobian_determinant(u[:, :, a:b].float(), block)
        out[:, :, z0:z1] = det[:, :, z0 - a : z1 - a].cpu()
        progress(z1 / nz, f"Jacobian determinant: slices {z1}/{nz}")
    return tensor_to_image(out, grid, pixel_type=sitk.sitkFloat32)


def setJacobianDisplay(volumeNode) -> None:
    """Show a Jacobian determinant volume with the diverging colour map centred on 1
    (:data:`JACOBIAN_COLOR_NODE_ID`, :data:`JACOBIAN_WINDOW`); creates its display node if needed."""
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    display = volumeNode.GetDisplayNode()
    display.SetAndObserveColorNodeID(JACOBIAN_COLOR_NODE_ID)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(*JACOBIAN_WINDOW)
