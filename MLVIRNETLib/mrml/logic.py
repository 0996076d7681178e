"""MRML side of MLVIRNET: volume, transform, markups and table nodes <-> the library.

This module is the logic of the 3D Slicer module (``MLVIRNET/MLVIRNET.py`` builds on
:class:`RegistrationLogic`). It is usable without the Slicer application: it needs only MRML and VTK,
which the ``slicer-core`` wheel provides, and it imports them (and torch, through the library)
lazily inside functions, so ``import MLVIRNETLib.mrml`` works anywhere.

Coordinates
-----------
Slicer's world frame is RAS, the library's is LPS. Every crossing goes through
:mod:`MLVIRNETLib.core.geometry` (``ImageGrid.from_ijk_to_ras``, ``index_to_ras_matrix``,
``lps_to_ras``/``ras_to_lps``); nothing here flips an axis itself. Voxel arrays are ``(k, j, i)`` =
``(D, H, W)``, the layout of ``sitk.GetArrayFromImage``.

Each node is used in its own coordinates: the volumes' IJKToRAS and the markups' control-point
positions as stored. A node under a parent transform is refused (harden the transform first), with
one exception, the usual state after a previous run: a moving volume under the output transform or
under an earlier MLVIRNET result computed for it, and moving markups under the evaluated transform,
are read in their own coordinates.

Transform convention
--------------------
A registration of *moving* to *fixed* gives a displacement on the fixed grid with
``x_moving = x_fixed + u(x_fixed)``. In Slicer it becomes a grid transform node whose transform
*from parent* is that map (in RAS): ``node.GetTransformFromParent().TransformPoint(p_fixed_RAS)``
is the corresponding moving point. Placing the moving volume under the node aligns it with the
fixed volume, and saving the node (``.h5``) writes the same ITK displacement field the CLI writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..core.progress import Progress, ProgressFn
from .checks import checkRegistrationInputs, resolveModel
from .tre_table import fillTreTable, formatTreStats, treStats
from .outputs import RegistrationSummary, jacobianImage, setJacobianDisplay, warpedImage
from .nodes import (
    nodeName,
    removeNodeAndDisplay,
    requireNode,
    requireNoParentTransform,
    sceneOf,
    deformationToGridTransform,
    gridFromVolumeNode,
    gridTransformToDeformation,
    imageToNewVolumeNode,
    maskNodeToImage,
    pairedControlPoints,
    setMarkupsPoints,
    transformPointsRas,
    transformToDeformation,
    updateVolumeNodeFromImage,
    volumeNodeToImage,
)

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from ..core.deformation import Deformation
    from ..core.geometry import ImageGrid

ProgressCallback = ProgressFn
"""``progress(fraction in [0, 1], message)``."""

DEFAULT_TRANSFORM_NAME = "MLVIRNET transform"

from .worker import PROGRESS_INTERVAL_S, runInWorkerThread  # noqa: E402



# ----------------------------------------------------------------------------------------------
# Logic
# ----------------------------------------------------------------------------------------------
def _storeResult(transformNode, gridTransform, fixedVolumeNode, movingVolumeNode, folding: float | None) -> None:
    """Put a registration result into ``transformNode``, with Slicer's registration references."""
    wasModifying = transformNode.StartModify()
    transformNode.SetAndObserveTransformFromParent(gridTransform)
    # the roles Slicer's registration modules set ("spatialRegistrationFixed" / "...Moving")
    transformNode.SetNodeReferenceID(transformNode.GetFixedNodeReferenceRole(), fixedVolumeNode.GetID())
    transformNode.SetNodeReferenceID(transformNode.GetMovingNodeReferenceRole(), movingVolumeNode.GetID())
    if folding is not None:
        transformNode.SetAttribute("MLVIRNET.FoldingFraction", f"{float(folding):.6g}")
    transformNode.EndModify(wasModifying)


class RegistrationLogic:
    """Everything the MLVIRNET Slicer module does, usable from scripts without the GUI.

    Args:
        scene: the MRML scene for methods that create nodes without an input node to take the scene
            from (the DIR-LAB loader). Defaults to ``slicer.mrmlScene`` inside Slicer.
    """

    def __init__(self, scene=None) -> None:
        self._scene = scene
        self._cancelRequested = False
        self.cancelReason = ""
        """Why the last run was cancelled (the text given to :meth:`cancel`)."""
        self.lastResult: RegistrationSummary | None = None
        """What the panel shows of the last successful :meth:`register` (no field: the transform
        node holds it)."""

    # -- scene and cancellation -----------------------------------------------------------------
    def scene(self):
        """The scene given to the constructor, else ``slicer.mrmlScene``."""
        if self._scene is not None:
            return self._scene
        import slicer

        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise ValueError("no MRML scene: pass one to RegistrationLogic(scene=...) when running outside Slicer")
        return scene

    def cancel(self, reason: str = "") -> None:
        """Ask a running :meth:`register` to stop at its next progress check.

        ``reason`` is kept in :attr:`cancelReason`; the first reason of a run stays (closing the scene
        also removes its nodes, and the message should say the scene was closed).
        """
        if not self._cancelRequested:
            self.cancelReason = reason
        self._cancelRequested = True

    def isCancelRequested(self) -> bool:
        return self._cancelRequested

    # -- registration ---------------------------------------------------------------------------
    def register(
        self,
        fixedVolumeNode,
        movingVolumeNode,
        outputTransformNode=None,
        fixedMaskNode=None,
        movingMaskNode=None,
        model=None,
        device: str = "auto",
        refineIterations: int | Sequence[int] | None = None,
        affine: bool = True,
        progressCallback: ProgressCallback | None = None,
        options=None,
        preset: str = "standard",
        outputVolumeNode=None,
        jacobianVolumeNode=None,
    ):
        """Register the moving volume to the fixed volume with mlVIRNET.

        Every input is checked first (:func:`checkRegistrationInputs`); the registration, the
        warped volume and the Jacobian then run in a worker thread with progress and cancel, and
        the nodes are filled only when all of it succeeded.

        Args:
            fixedVolumeNode, movingVolumeNode: scalar volume nodes (CT in HU).
            outputTransformNode: transform node to fill; a new ``vtkMRMLGridTransformNode`` when None.
            fixedMaskNode, movingMaskNode: optional labelmap volume or segmentation nodes (lungs).
            model: ``None`` or ``"default"`` for the shipped weights, a path to a weights file, a
                ``MultilevelNet``, or :data:`NO_MODEL` for the variational refinement alone.
            device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
            refineIterations: refinement iterations per level after the network (an int for every
                level or one per level; 0 = network only; None keeps the library default).
            affine: run the affine pre-alignment.
            progressCallback: ``progress(fraction, message)``.
            options: a ``MLVIRNETLib.registration.options.RegistrationOptions`` for everything else (network
                grid size, crop, weights, ...); ``refineIterations`` and ``affine`` override it.
            preset: ``"fast"``, ``"standard"`` or ``"accurate"``
                (``MLVIRNETLib.registration.presets``): the settings when ``options`` is None.
            outputVolumeNode: optional scalar volume to receive the moving volume warped onto the
                fixed grid.
            jacobianVolumeNode: optional scalar volume to receive ``det J`` of the result on the fixed
                grid (local volume change: below 1 the lungs shrink from fixed to moving), shown with
                a diverging colour map centred on 1.

        Returns:
            The transform node. Its transform from parent maps fixed RAS points to moving RAS points
            (the moving volume placed under it is aligned with the fixed volume). It references the
            inputs with the roles of Slicer's registration modules, ``GetFixedNodeReferenceRole()``
            and ``GetMovingNodeReferenceRole()`` (``"spatialRegistrationFixed"`` / ``"...Moving"``).

        Raises:
            ValueError: unusable inputs (nothing is created or changed).
            MLVIRNETLib.core.progress.RegistrationCancelled: :meth:`cancel` was called, in any stage
                (nothing is created or changed).
        """
        self._cancelRequested = False
        self.cancelReason = ""
        checkRegistrationInputs(
            fixedVolumeNode, movingVolumeNode, outputTransformNode, fixedMaskNode, movingMaskNode,
            outputVolumeNode, jacobianVolumeNode,
        )
        scene = sceneOf(fixedVolumeNode, movingVolumeNode)

        # one progress/cancel channel for every stage; nothing touches the scene before the last check
        prog = Progress(progressCallback, self.isCancelRequested, min_interval_s=PROGRESS_INTERVAL_S)
        prog.stage(0.0, 0.05, "Reading volumes")
        fixedImage = volumeNodeToImage(fixedVolumeNode)
        movingImage = volumeNodeToImage(movingVolumeNode)
        fixedMask = maskNodeToImage(fixedMaskNode, fixedVolumeNode) if fixedMaskNode is not None else None
        movingMask = maskNodeToImage(movingMaskNode, movingVolumeNode) if movingMaskNode is not None else None
        isLabel = movingVolumeNode.IsA("vtkMRMLLabelMapVolumeNode")
        prog.check_cancel()

        from ..core.threads import passive_waiting_while_loading

        with passive_waiting_while_loading():
            from .. import registration
        resolvedOptions = self.registrationOptions(options, refineIterations, affine, preset)
        model = resolveModel(model)

        def work(progress: ProgressFn):
            # the worker touches no MRML node; a Progress with the cancel check stops every stage
            stages = Progress.of(progress, self.isCancelRequested)
            extraStages = [what for what, node in (("warp", outputVolumeNode), ("jacobian", jacobianVolumeNode)) if node]
            stages.stage(0.0, 1.0 - 0.05 * len(extraStages), "Registering")
            result = registration.register(
                fixedImage, movingImage, fixed_mask=fixedMask, moving_mask=movingMask, model=model, device=device,
                options=resolvedOptions, progress=Progress(stages, self.isCancelRequested), cancel=self.isCancelRequested,
            )
            outputs = {"result": result}
            start = 1.0 - 0.05 * len(extraStages)
            if outputVolumeNode is not None:
                stages.stage(start, 0.05, "Warping the moving volume")
                outputs["warped"] = warpedImage(movingImage, result.deformation, isLabel, stages)
                start += 0.05
            if jacobianVolumeNode is not None:
                stages.stage(start, 0.05, "Jacobian determinant")
                outputs["jacobian"] = jacobianImage(result.deformation, stages)
            return outputs

        # the library works in a thread of its own; this thread passes its reports on and keeps
        # calling progressCallback, so a GUI repaints and reads its Cancel button while it runs
        outputs = runInWorkerThread(
            work, lambda f, m: progressCallback(0.05 + 0.85 * f, m) if progressCallback else None, stop=self.cancel
        )
        result = outputs["result"]

        prog.stage(0.90, 0.08, "Creating the grid transform")
        gridTransform = deformationToGridTransform(result.deformation, progress=prog)
        summary = RegistrationSummary(
            timings=dict(result.timings), folding_fraction=float(result.folding_fraction), model=result.model_used,
            preset=preset if options is None else None, device=str(result.deformation.displacement.device),
            messages=tuple(str(m) for m in result.messages), quality=result.quality,
        )
        del result, outputs["result"]  # the field lives on in the grid transform only
        prog.check_cancel()  # the last point where a cancel leaves the scene as it was
        if outputTransformNode is None:
            outputTransformNode = scene.AddNewNodeByClass(
                "vtkMRMLGridTransformNode", scene.GenerateUniqueName(DEFAULT_TRANSFORM_NAME)
            )
        _storeResult(outputTransformNode, gridTransform, fixedVolumeNode, movingVolumeNode, summary.folding_fraction)
        if outputVolumeNode is not None:
            self._fillWarpedVolume(outputVolumeNode, outputs["warped"], movingVolumeNode, isLabel)
        if jacobianVolumeNode is not None:
            self._fillJacobianVolume(jacobianVolumeNode, outputs["jacobian"])
        self.lastResult = summary
        if progressCallback is not None:
            progressCallback(1.0, "Done")
        return outputTransformNode

    @staticmethod
    def _fillWarpedVolume(outputVolumeNode, image, movingVolumeNode, isLabel: bool) -> None:
        updateVolumeNodeFromImage(outputVolumeNode, image)
        if outputVolumeNode.GetDisplayNode() is None:
            outputVolumeNode.CreateDefaultDisplayNodes()
        movingDisplay = movingVolumeNode.GetDisplayNode()
        outputDisplay = outputVolumeNode.GetDisplayNode()
        if movingDisplay is not None and outputDisplay is not None and not isLabel:
            outputDisplay.SetAutoWindowLevel(movingDisplay.GetAutoWindowLevel())
            outputDisplay.SetWindowLevel(movingDisplay.GetWindow(), movingDisplay.GetLevel())

    @staticmethod
    def _fillJacobianVolume(jacobianVolumeNode, image) -> None:
        updateVolumeNodeFromImage(jacobianVolumeNode, image)
        setJacobianDisplay(jacobianVolumeNode)

    @staticmethod
    def registrationOptions(options=None, refineIterations=None, affine: bool = True, preset: str = "standard"):
        """The ``RegistrationOptions`` of a run: ``options`` (or those of ``preset`` when it is None)
        with the module's two settings on top, through the library's one translation
        (:func:`~MLVIRNETLib.registration.presets.options_for` /
        :func:`~MLVIRNETLib.registration.presets.with_overrides`).

        Args:
            options: a ``RegistrationOptions``, or None for ``preset``'s.
            refineIterations: refinement iterations (one per level, or one for every level); None
                keeps those of ``options``/``preset``.
            affine: False skips the affine pre-alignment; True keeps it (with the settings of
                ``options`` when it has them).
            preset: a preset name, used when ``options`` is None.

        Raises:
            ValueError: an unknown preset, iterations that are not integers >= 0, or a bad setting.
            TypeError: ``options`` is not a ``RegistrationOptions``.
        """
        from ..registration.options import RegistrationOptions
        from ..registration.presets import options_for, with_overrides

        if options is not None and not isinstance(options, RegistrationOptions):
            raise TypeError(f"options must be a RegistrationOptions, got {type(options).__name__}")
        overrides: dict[str, Any] = {}
        if refineIterations is not None:
            single = isinstance(refineIterations, (int, float))
            iterations = [refineIterations] if single else list(refineIterations)
            if any(int(i) != i or i < 0 for i in iterations):
                raise ValueError(f"refinement iterations must be integers >= 0, got {refineIterations}")
            overrides["refinement"] = {"iterations": int(refineIterations) if single else tuple(int(i) for i in iterations)}
        if not affine:
            overrides["affine"] = None
        elif options is not None and options.affine is None:
            overrides["affine"] = {}
        if options is None:
            return options_for(preset, **overrides)
        return with_overrides(options, **overrides)

    def registerSequence(
        self, phases, referenceIndex: int = 0, jacobian: bool = False, model=None, device: str = "auto",
        refineIterations: int | Sequence[int] | None = None, affine: bool = True,
        progressCallback: ProgressCallback | None = None, options=None, preset: str = "standard",
    ):
        """Register every phase of a 4D-CT (a volume sequence, or a list of volumes) to one phase.

        The arguments are those of :meth:`register`; what is checked, computed and created is
        described in :func:`MLVIRNETLib.mrml.series.registerSequence`. :meth:`cancel` stops it in any
        stage, and then nothing is created.
        """
        from .series import registerSequence

        self._cancelRequested = False
        self.cancelReason = ""
        return registerSequence(
            phases, referenceIndex, jacobian=jacobian, model=model, device=device, preset=preset if options is None else None,
            options=lambda: self.registrationOptions(options, refineIterations, affine, preset),
            progressCallback=progressCallback, cancel=self.isCancelRequested, stop=self.cancel,
        )

    # -- resampling -----------------------------------------------------------------------------
    def warpVolume(
        self, movingVolumeNode, transformNode, referenceVolumeNode, outputVolumeNode=None,
        progressCallback: ProgressCallback | None = None,
    ):
        """Resample the moving volume through a transform onto the reference (fixed) grid.

        ``warped(x) = moving(T(x))`` with ``T`` the transform node's transform from parent (fixed ->
        moving), as ``mlvirnet warp`` does it: trilinear with border values outside the moving
        image; labelmaps nearest neighbour with 0 outside. The output has the reference geometry
        and the moving pixel type (rounded and clipped for integer types). The field is read in
        float32 and the image resampled slab by slab in a worker thread, with progress and cancel.

        Returns:
            The output volume node (a new one named "<moving> warped" when None).

        Raises:
            ValueError: unusable nodes (nothing is changed).
            MLVIRNETLib.core.progress.RegistrationCancelled: :meth:`cancel` was called.
        """
        self._cancelRequested = False
        self.cancelReason = ""
        requireNode(movingVolumeNode, "vtkMRMLScalarVolumeNode", "moving volume")
        requireNode(referenceVolumeNode, "vtkMRMLVolumeNode", "reference volume")
        requireNode(transformNode, "vtkMRMLTransformNode", "transform")
        requireNoParentTransform(movingVolumeNode, "moving volume", transformNode, allowResults=True)
        requireNoParentTransform(referenceVolumeNode, "reference volume")
        if outputVolumeNode is not None:
            requireNode(outputVolumeNode, "vtkMRMLScalarVolumeNode", "output volume")
            for other, what in ((movingVolumeNode, "moving"), (referenceVolumeNode, "reference")):
                if outputVolumeNode.GetID() == other.GetID():
                    raise ValueError(f"the output volume must differ from the {what} volume (inputs are never overwritten)")

        prog = Progress(progressCallback, self.isCancelRequested, min_interval_s=PROGRESS_INTERVAL_S)
        prog.stage(0.0, 0.3, "Reading the transform")
        grid = gridFromVolumeNode(referenceVolumeNode)
        deformation = self.transformNodeToDeformation(transformNode, grid, progress=prog)
        movingImage = volumeNodeToImage(movingVolumeNode)
        isLabel = movingVolumeNode.IsA("vtkMRMLLabelMapVolumeNode")

        def work(progress: ProgressFn):
            return warpedImage(movingImage, deformation, isLabel, Progress.of(progress, self.isCancelRequested))

        image = runInWorkerThread(
            work, lambda f, m: progressCallback(0.3 + 0.65 * f, m) if progressCallback else None, stop=self.cancel
        )
        deformation = None  # the field is not needed for filling the node
        prog.check_cancel()
        scene = sceneOf(referenceVolumeNode, movingVolumeNode)
        if outputVolumeNode is None:
            className = "vtkMRMLLabelMapVolumeNode" if isLabel else "vtkMRMLScalarVolumeNode"
            outputVolumeNode = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(f"{nodeName(movingVolumeNode)} warped"))
        self._fillWarpedVolume(outputVolumeNode, image, movingVolumeNode, isLabel)
        if progressCallback is not None:
            progressCallback(1.0, "Done")
        return outputVolumeNode

    @staticmethod
    def transformNodeToDeformation(transformNode, grid: "ImageGrid", progress: ProgressFn | None = None) -> "Deformation":
        """The transform node's transform from parent as a :class:`Deformation` on ``grid``.

        A grid transform already on ``grid`` is converted directly; any other transform is evaluated
        at the voxel centres.
        """
        if transformNode.GetParentTransformNode() is not None:
            raise ValueError(f"transform '{nodeName(transformNode)}' is under another transform; harden it first")
        transform = transformNode.GetTransformFromParent()
        if transform is None:
            raise ValueError(f"transform node '{nodeName(transformNode)}' holds no transform")
        if transform.IsA("vtkGridTransform") and not transform.GetInverseFlag():
            deformation = gridTransformToDeformation(transform, progress=progress)
            if deformation.grid.is_close(grid, tol_mm=1e-4):
                return deformation.on_grid(grid)
        return transformToDeformation(transform, grid)

    # -- landmarks and target registration error ------------------------------------------------
    def computeTRE(
        self, fixedFiducialNode, movingFiducialNode, transformNode=None, tableNode=None, snapToVolumeNode=None
    ) -> dict:
        """Target registration error between corresponding landmarks.

        Each fixed landmark ``x`` is mapped through the transform node's transform from parent
        (fixed -> moving; identity when ``transformNode`` is None) and compared with its moving
        landmark: ``e = |T(x) - x_moving|`` in mm. Landmarks are paired by label when every label
        of both lists is set and unique, else by index. Control points whose position is "missing"
        (skipped while placing) are left out with their partners, and counted. Without
        ``snapToVolumeNode`` this needs numpy and VTK only (no PyTorch): distances are the same in
        RAS and LPS.

        Args:
            fixedFiducialNode, movingFiducialNode: markups nodes, read in their own coordinates.
            transformNode: the registration result, or None for the initial error.
            tableNode: optional ``vtkMRMLTableNode`` to fill with one row per landmark pair.
            snapToVolumeNode: optional moving volume; each mapped point is moved to its nearest voxel
                centre first (the DIR-LAB protocol, as ``mlvirnet evaluate-dirlab --snap``).

        Returns:
            ``{"mean", "std", "p95", "max", "n", "errors", "skipped", "summary"}`` (mm; ``std``
            the population standard deviation); with a transform also ``"initial"``, the same
            statistics without it.

        Raises:
            ValueError: wrong node types, no usable pair, lists that pair neither by label nor by index.
        """
        from ..evaluation.landmark_errors import TREResult

        requireNode(fixedFiducialNode, "vtkMRMLMarkupsNode", "fixed landmarks")
        requireNode(movingFiducialNode, "vtkMRMLMarkupsNode", "moving landmarks")
        if transformNode is not None:
            requireNode(transformNode, "vtkMRMLTransformNode", "transform")
            if transformNode.GetParentTransformNode() is not None:
                raise ValueError(f"transform '{nodeName(transformNode)}' is under another transform; harden it first")
        requireNoParentTransform(fixedFiducialNode, "fixed landmarks")
        requireNoParentTransform(movingFiducialNode, "moving landmarks", transformNode)
        if tableNode is not None:
            requireNode(tableNode, "vtkMRMLTableNode", "output table")
        labels, fixedRas, movingRas, skipped = pairedControlPoints(fixedFiducialNode, movingFiducialNode)

        initial = TREResult.from_errors(np.linalg.norm(fixedRas - movingRas, axis=1))
        mappedRas = fixedRas
        final = initial
        if transformNode is not None:
            transform = transformNode.GetTransformFromParent()
            if transform is None:
                raise ValueError(f"transform node '{nodeName(transformNode)}' holds no transform")
            mappedRas = transformPointsRas(transform, fixedRas)
            if snapToVolumeNode is not None:
                from ..core.geometry import lps_to_ras, ras_to_lps
                from ..evaluation import metrics

                snapGrid = gridFromVolumeNode(snapToVolumeNode)
                mappedRas = np.asarray(lps_to_ras(metrics.snap_to_voxel(np.asarray(ras_to_lps(mappedRas)), snapGrid)))
            final = TREResult.from_errors(np.linalg.norm(mappedRas - movingRas, axis=1), snapped=snapToVolumeNode is not None)

        stats = treStats(final)
        stats["skipped"] = skipped
        note = f"; {skipped} landmark pair(s) with a missing point left out" if skipped else ""
        if transformNode is not None:
            stats["initial"] = treStats(initial)
            stats["summary"] = (
                f"TRE {formatTreStats(stats)} after registration; {formatTreStats(stats['initial'])} before{note}"
            )
        else:
            stats["summary"] = f"TRE {formatTreStats(stats)} (no transform){note}"
        if tableNode is not None:
            fillTreTable(
                tableNode, labels, fixedRas, movingRas, mappedRas, initial, final if transformNode else None
            )
            tableNode.SetAttribute("MLVIRNET.TRESummary", stats["summary"])
        return stats

    def importLandmarks(self, path: str | Path, referenceVolumeNode=None, name: str | None = None):
        """Load a landmark file as a new fiducial node (labels 1..P, locked).

        Any format :func:`MLVIRNETLib.io.landmarks.read_landmarks` reads: DIR-LAB voxel lists
        (``.txt``/``.pts``, 1-based indices placed with the geometry of ``referenceVolumeNode``,
        which is then required), Slicer markups (``.mrk.json``, ``.fcsv``) and CSV (LPS mm).

        Raises:
            ValueError: missing file, unreadable file, or a voxel list without reference volume.
        """
        from ..io.landmarks import read_landmarks

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"landmark file not found: {path}")
        grid = None
        if referenceVolumeNode is not None:
            requireNode(referenceVolumeNode, "vtkMRMLVolumeNode", "reference volume")
            requireNoParentTransform(referenceVolumeNode, "reference volume")
            grid = gridFromVolumeNode(referenceVolumeNode)
        pointsLps = np.asarray(read_landmarks(path, grid=grid), dtype=float)
        scene = sceneOf(referenceVolumeNode) if referenceVolumeNode is not None else self.scene()
        baseName = name or path.name.split(".")[0]
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(baseName))
        setMarkupsPoints(node, pointsLps)
        node.SetLocked(True)
        node.CreateDefaultDisplayNodes()
        return node

    def loadDirLabLandmarks(self, path: str | Path, referenceVolumeNode, name: str | None = None):
        """Load a DIR-LAB landmark file (1-based voxel indices ``x y z``) as a fiducial node.

        The indices are placed with the geometry (IJKToRAS) of ``referenceVolumeNode``, which must
        be the image the landmarks were picked on (or a volume with its grid).

        Returns:
            A new ``vtkMRMLMarkupsFiducialNode`` (locked, labels 1..P) in the reference's scene.
        """
        if referenceVolumeNode is None:
            raise ValueError("DIR-LAB landmarks are voxel indices: a reference volume is needed to place them")
        return self.importLandmarks(path, referenceVolumeNode, name)

    def loadDirLabCase(self, root: str | Path, case: str, fixedPhase: str = "inhale") -> dict:
        """Load a DIR-LAB case (raw ``.img`` images and landmark files) into the scene.

        The files are searched anywhere below ``root`` (DIR-LAB's name variants are accepted). The
        images get the geometry of :func:`MLVIRNETLib.io.dirlab.dirlab_grid` and HU values.

        Args:
            root: folder holding the case's files.
            case: ``"4dct:N"`` or ``"copd:N"``.
            fixedPhase: ``"inhale"`` (T00 / iBH is fixed, T50 / eBH moving) or ``"exhale"``.

        Returns:
            ``{"fixedVolume", "movingVolume", "fixedLandmarks", "movingLandmarks"}`` nodes.

        Raises:
            ValueError: unknown case, missing or ambiguous files, wrong file sizes (nothing is added).
        """
        from ..io.dirlab import find_dirlab_case_files, parse_case, read_dirlab_image

        if fixedPhase not in ("inhale", "exhale"):
            raise ValueError(f"fixedPhase must be 'inhale' or 'exhale', got {fixedPhase!r}")
        movingPhase = "exhale" if fixedPhase == "inhale" else "inhale"
        parsed = parse_case(case)
        try:
            files = find_dirlab_case_files(Path(root), parsed, require_images=True)
        except FileNotFoundError as error:
            raise ValueError(str(error)) from None
        tags = {"inhale": parsed.inhale_tag, "exhale": parsed.exhale_tag}
        scene = self.scene()
        label = f"{parsed.dataset}{parsed.number}"
        out: dict[str, Any] = {}
        created = []
        try:
            for role, phase in (("fixed", fixedPhase), ("moving", movingPhase)):
                image = read_dirlab_image(getattr(files, f"{phase}_image"), parsed)
                volume = imageToNewVolumeNode(scene, image, f"{label} {tags[phase]}")
                created.append(volume)
                out[f"{role}Volume"] = volume
                landmarks = self.loadDirLabLandmarks(
                    getattr(files, f"{phase}_landmarks"), volume, name=f"{label} {tags[phase]} landmarks"
                )
                created.append(landmarks)
                out[f"{role}Landmarks"] = landmarks
        except Exception:
            for node in created:
                removeNodeAndDisplay(scene, node)
            raise
        return out


def __getattr__(name: str):
    """``MLVIRNETLogic``, the former name of :class:`RegistrationLogic`, with a deprecation warning
    (the Slicer module's own logic keeps that name)."""
    if name == "MLVIRNETLogic":
        import warnings

        warnings.warn("MLVIRNETLib.mrml.logic.MLVIRNETLogic is deprecated; use RegistrationLogic",
                      DeprecationWarning, stacklevel=2)
        return RegistrationLogic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
