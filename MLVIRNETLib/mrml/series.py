"""A 4D-CT in Slicer: every phase of a volume sequence registered to one reference phase.

:func:`registerSequence` (``RegistrationLogic.registerSequence``) takes the phases as a
``vtkMRMLSequenceNode`` of scalar volumes (how Slicer loads a 4D-CT) or as a list of scalar volume
nodes, registers each phase to the reference phase with
:func:`MLVIRNETLib.registration.series.register_series` in the Logic's worker thread, and then
creates, in the calling thread:

* a sequence of grid transforms, one per phase (the reference's is the identity), with the index
  name, unit, type and values of the volume sequence. Each transform maps reference RAS points to
  the phase's points (the resampling direction, as :meth:`RegistrationLogic.register` gives
  it): a phase volume placed under its transform is shown aligned with the reference phase;
* the transform sequence goes into the sequence browser of the volume sequence (a new browser
  when it has none, or when the phases came as a list of volumes: they are then copied into a new
  volume sequence), synchronised with it. The browser's proxy volume is placed under its proxy
  transform, so that stepping through the phases shows each phase aligned with the reference;
* optionally a sequence of Jacobian determinant volumes in the same browser (its proxy shown as
  the single-pair Jacobian volume is);
* the motion summary (:mod:`MLVIRNETLib.evaluation.motion`) as a table node and two plot charts
  (:mod:`.motion_nodes`), when the reference phase has an automatic lung mask.

Threads: the phases' voxels are read in the worker from the volumes' VTK image data, which the
calling thread collects before the run (holding them keeps them alive if a node is deleted
meanwhile); no MRML node is touched there. Everything is created after the last phase: a cancel,
in any stage, leaves the scene as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..core.progress import CancelFn, Progress, ProgressFn
from .checks import resolveModel
from .motion_nodes import addMotionCharts, fillMotionTable
from .nodes import gridFromVolumeNode, nodeName, removeNodeAndDisplay, requireNode, requireNoParentTransform
from .outputs import jacobianImage, setJacobianDisplay
from .worker import PROGRESS_INTERVAL_S, runInWorkerThread

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    import SimpleITK as sitk

    from ..core.geometry import ImageGrid
    from ..evaluation.motion import SeriesSummary

SERIES_TRANSFORM_ATTRIBUTE = "MLVIRNET.SeriesTransform"
"""Attribute set on the proxy transform node of an MLVIRNET transform sequence."""

BROWSER_CLASS = "vtkMRMLSequenceBrowserNode"


@dataclass
class SeriesNodes:
    """What :func:`registerSequence` created.

    Attributes:
        transformSequence: the ``vtkMRMLSequenceNode`` of grid transforms (reference -> phase).
        browser: the ``vtkMRMLSequenceBrowserNode`` holding the volume and transform sequences.
        proxyTransform: the browser's proxy node of the transform sequence.
        volumeSequence: the volume sequence browsed (the input, or a new one for a list of volumes).
        jacobianSequence: the Jacobian determinant volumes, or None.
        table: the motion summary ``vtkMRMLTableNode``, or None (no lung mask of the reference).
        charts: ``{"breathing", "excursion"}`` plot chart nodes (empty without a table).
        summary: the motion summary, or None.
        messages: notes for the user.
    """

    transformSequence: Any
    browser: Any
    proxyTransform: Any
    volumeSequence: Any
    jacobianSequence: Any = None
    table: Any = None
    charts: dict = field(default_factory=dict)
    summary: "SeriesSummary | None" = None
    messages: tuple[str, ...] = ()

    def describe(self) -> str:
        """What the module panel's status line shows of the run."""
        n = self.transformSequence.GetNumberOfDataNodes()
        lines = [f"Series registered: {n} phases; step through them with the sequence browser "
                 f"'{nodeName(self.browser)}' (each phase is shown aligned with the reference)."]
        if self.summary is not None:
            lines.append(f"End-inhale {self.summary.end_inhale}, end-exhale {self.summary.end_exhale}.")
            flagged = "; ".join(f"{phase}: {why}" for phase, why in self.summary.flagged.items())
            lines.append(f"Flagged phases: {flagged}." if flagged else "No phase flagged.")
        lines.extend(self.messages)
        return " ".join(lines)


@dataclass
class _Phase:
    """A phase as the worker reads it: its grid and its voxels (a VTK array), no MRML node."""

    grid: "ImageGrid"
    scalars: Any

    def load(self) -> "sitk.Image":
        import SimpleITK as sitk
        from vtk.util import numpy_support

        array = numpy_support.vtk_to_numpy(self.scalars).reshape(self.grid.shape_zyx)
        image = sitk.GetImageFromArray(array)  # a copy: the node's voxels are never changed
        self.grid.copy_to_sitk(image)
        return image


@dataclass
class _Input:
    scene: Any
    sequence: Any  # the input volume sequence, or None for a list of volumes
    volumes: list
    names: list[str]
    indexValues: list[str]
    baseName: str


def _isNode(value) -> bool:
    return hasattr(value, "IsA") and hasattr(value, "GetID")


def checkSeriesInputs(phases, referenceIndex: int) -> _Input:
    """Refuse an unusable series with one clear ValueError, before any work (nothing is changed).

    Raises:
        ValueError: ``phases`` is neither a volume sequence nor a list of scalar volume nodes, a
            phase is not a scalar volume (labelmaps included) or holds no usable voxels, fewer
            than 2 phases, the same volume twice in a list, a volume under a transform,
            ``referenceIndex`` out of range, or a scene without the Sequences module's nodes.
    """
    if _isNode(phases):
        requireNode(phases, "vtkMRMLSequenceNode", "phases")
        scene = phases.GetScene()
        if scene is None:
            raise ValueError(f"the volume sequence '{nodeName(phases)}' is not in a MRML scene")
        n = phases.GetNumberOfDataNodes()
        volumes = [phases.GetNthDataNode(i) for i in range(n)]
        indexValues = [phases.GetNthIndexValue(i) for i in range(n)]
        label = phases.GetIndexName() or "phase"
        names = [f"{label} {v}" for v in indexValues]
        sequence, baseName = phases, nodeName(phases)
    elif isinstance(phases, (list, tuple)):
        volumes, sequence = list(phases), None
        for k, node in enumerate(volumes):
            requireNode(node, "vtkMRMLScalarVolumeNode", f"phase {k}")
            requireNoParentTransform(node, f"phase {k}")
        ids = [v.GetID() for v in volumes]
        if len(set(ids)) != len(ids):
            raise ValueError("the same volume is given twice as a phase: choose one volume per phase")
        scene = volumes[0].GetScene() if volumes else None
        if volumes and (scene is None or any(v.GetScene() is not scene for v in volumes)):
            raise ValueError("the phase volumes must all be in one MRML scene")
        indexValues = [str(k) for k in range(len(volumes))]
        names = [nodeName(v) for v in volumes]
        if len(set(names)) != len(names):
            names = [f"{k} {name}" for k, name in enumerate(names)]
        baseName = "4D-CT"
    else:
        raise ValueError(f"phases must be a volume sequence node or a list of volume nodes, got a {type(phases).__name__}")
    if len(volumes) < 2:
        raise ValueError(f"a series needs at least 2 phases, got {len(volumes)}")
    if isinstance(referenceIndex, bool) or not isinstance(referenceIndex, (int, np.integer)) or not (
        0 <= int(referenceIndex) < len(volumes)
    ):
        raise ValueError(
            f"reference phase {referenceIndex!r} is out of range: the series has {len(volumes)} phases (0..{len(volumes) - 1})"
        )
    for name, node in zip(names, volumes):
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            got = node.GetClassName() if node is not None else "nothing"
            raise ValueError(f"every phase must be a scalar volume (CT), but {name} is a {got}")
        if node.GetImageData() is None:
            raise ValueError(f"{name} ('{nodeName(node)}') has no voxels")
        gridFromVolumeNode(node)  # a usable 3-D geometry (ValueError otherwise)
        scalars = node.GetImageData().GetPointData().GetScalars()
        if scalars is None or scalars.GetNumberOfComponents() != 1:
            raise ValueError(f"{name} ('{nodeName(node)}') is not a single-component scalar volume")
    if not scene.IsNodeClassRegistered(BROWSER_CLASS):
        raise ValueError(
            "this scene has no sequence browser nodes: the Sequences module (vtkSlicerSequencesLogic) must be "
            "set up on the scene"
        )
    return _Input(scene, sequence, volumes, names, indexValues, baseName)


@dataclass
class _PhaseOutput:
    index: int
    name: str
    gridTransform: Any
    jacobian: Any
    motion: Any
    folding: float | None
    messages: list[str]


def _browserOf(scene, sequence):
    """The first sequence browser that has ``sequence``, or None."""
    for i in range(scene.GetNumberOfNodesByClass(BROWSER_CLASS)):
        browser = scene.GetNthNodeByClass(i, BROWSER_CLASS)
        if browser.IsSynchronizedSequenceNode(sequence, True):
            return browser
    return None


def registerSequence(
    phases,
    referenceIndex: int = 0,
    *,
    jacobian: bool = False,
    model=None,
    device: str = "auto",
    options: Callable[[], Any] | None = None,
    preset: str | None = None,
    progressCallback: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    stop: Callable[[], None] | None = None,
) -> SeriesNodes:
    """Register every phase to ``phases[referenceIndex]`` and create the nodes of the module docstring.

    Args:
        phases: a ``vtkMRMLSequenceNode`` of scalar volumes, or a list of scalar volume nodes.
        referenceIndex: the position of the reference phase in the series (0-based).
        jacobian: also create the sequence of Jacobian determinant volumes.
        model, device: as for ``RegistrationLogic.register``.
        options: a callable returning the ``RegistrationOptions`` (called after the checks, when
            the library is imported); None for the ``standard`` preset.
        preset: the preset name, noted in the table's attributes.
        progressCallback: ``progress(fraction, message)``, called in this thread.
        cancel: polled often; True stops the run (``RegistrationCancelled``) and nothing is created.
        stop: called when ``progressCallback`` raises, to stop the worker.

    Returns:
        The :class:`SeriesNodes` created.

    Raises:
        ValueError: unusable inputs (:func:`checkSeriesInputs`; nothing is created), or the input
            sequence left the scene during the run.
        MLVIRNETLib.core.progress.RegistrationCancelled: ``cancel()`` returned True, in any stage.
    """
    inputs = checkSeriesInputs(phases, int(referenceIndex) if isinstance(referenceIndex, np.integer) else referenceIndex)
    referenceIndex = int(referenceIndex)
    prog = Progress(progressCallback, cancel, min_interval_s=PROGRESS_INTERVAL_S)
    prog.stage(0.0, 0.02, "Reading the phases")
    sources = [_Phase(gridFromVolumeNode(v), v.GetImageData().GetPointData().GetScalars()) for v in inputs.volumes]
    prog.check_cancel()

    from ..core.threads import passive_waiting_while_loading

    with passive_waiting_while_loading():
        from ..evaluation.motion import phase_motion, summarize_series
        from ..registration.series import register_series
        from .nodes import deformationToGridTransform
    resolvedOptions = options() if options is not None else None
    resolvedModel = resolveModel(model)
    names = inputs.names

    def work(progress: ProgressFn) -> list[_PhaseOutput]:
        # the worker touches no MRML node: it reads the VTK voxel arrays collected above
        stages = Progress.of(progress, cancel)
        stages.stage(0.0, 1.0, "Registering the phases")
        series = register_series(
            [p.load for p in sources], referenceIndex, names=names, model=resolvedModel, device=device,
            options=resolvedOptions, progress=Progress(stages, cancel), cancel=cancel,
        )
        outputs = []
        for item in series:
            quiet = Progress(None, cancel)  # checks cancel at every report of the per-phase extras
            result = item.result
            motion = None
            if item.reference_mask is not None:
                motion = phase_motion(item.deformation, item.reference_mask, item.phase_mask, index=item.index,
                                      phase=item.name, reference=item.is_reference,
                                      quality=result.quality if result is not None else None, seconds=item.seconds)
            quiet.check_cancel()
            image = jacobianImage(item.deformation, quiet) if jacobian else None
            grid = deformationToGridTransform(item.deformation, progress=quiet)
            folding = float(result.folding_fraction) if result is not None else None
            outputs.append(_PhaseOutput(item.index, item.name, grid, image, motion, folding, list(item.messages)))
            del item, result  # one field at a time: the grid transform keeps the displacements
        return outputs

    outputs = runInWorkerThread(
        work, lambda f, m: progressCallback(0.02 * (1.0 - f) + 0.95 * f, m) if progressCallback else None, stop=stop
    )
    prog.stage(0.95, 0.05, "Creating the sequences")
    rows = [o.motion for o in outputs]
    summary = summarize_series(rows) if all(r is not None for r in rows) else None
    prog.check_cancel()  # the last point where a cancel leaves the scene as it was
    scene = inputs.scene
    if inputs.sequence is not None and not scene.IsNodePresent(inputs.sequence):
        raise ValueError(f"the volume sequence '{inputs.baseName}' was removed from the scene during the run")
    created: list = []
    try:
        nodes = _createNodes(inputs, outputs, summary, jacobian, created)
    except Exception:
        _removeCreated(scene, created)
        raise
    notes = [f"{o.name}: {m}" for o in outputs for m in o.messages]
    if summary is None:
        notes.append("no lung mask of the reference phase: no motion summary")
    if preset is not None and nodes.table is not None:
        nodes.table.SetAttribute("MLVIRNET.Preset", preset)
    nodes.messages = tuple(dict.fromkeys(notes + list(nodes.messages)))
    if progressCallback is not None:
        progressCallback(1.0, "Done")
    return nodes


def _removeCreated(scene, created: list) -> None:
    """Remove the nodes of a failed :func:`_createNodes`, with the proxies the browsers made for them."""
    sequences = [n for n in created if n.IsA("vtkMRMLSequenceNode")]
    for i in range(scene.GetNumberOfNodesByClass(BROWSER_CLASS)):
        browser = scene.GetNthNodeByClass(i, BROWSER_CLASS)
        for sequence in sequences:
            if browser.IsSynchronizedSequenceNode(sequence, True):
                proxy = browser.GetProxyNode(sequence)
                if proxy is not None and proxy not in created:
                    created.append(proxy)
                browser.RemoveSynchronizedSequenceNode(sequence.GetID())
    for node in reversed(created):
        if scene.IsNodePresent(node):
            if node.IsA("vtkMRMLDisplayableNode"):
                removeNodeAndDisplay(scene, node)
            else:
                scene.RemoveNode(node)


def _newSequence(scene, name: str, like, created: list):
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    created.append(sequence)
    if like is not None:
        sequence.SetIndexName(like.GetIndexName())
        sequence.SetIndexUnit(like.GetIndexUnit())
        sequence.SetIndexType(like.GetIndexType())
    else:
        sequence.SetIndexName("phase")
        sequence.SetIndexUnit("")
        sequence.SetIndexType(sequence.NumericIndex)
    return sequence


def _createNodes(inputs: _Input, outputs: list[_PhaseOutput], summary, jacobian: bool, created: list) -> SeriesNodes:
    """The nodes of the module docstring, in this (the calling) thread; each new node goes to ``created``."""
    import slicer

    from .nodes import updateVolumeNodeFromImage

    scene, base, values = inputs.scene, inputs.baseName, inputs.indexValues
    messages: list[str] = []
    volumeSequence = inputs.sequence
    if volumeSequence is None:  # a list of volumes: browsed as a new volume sequence (copies)
        volumeSequence = _newSequence(scene, f"{base} phases", None, created)
        for value, volume in zip(values, inputs.volumes):
            volumeSequence.SetDataNodeAtValue(volume, value)
    transforms = _newSequence(scene, f"{base} MLVIRNET transforms", volumeSequence, created)
    for out in outputs:
        node = slicer.vtkMRMLGridTransformNode()
        node.SetName(f"{out.name} MLVIRNET transform")
        node.SetAndObserveTransformFromParent(out.gridTransform)
        if out.folding is not None:
            node.SetAttribute("MLVIRNET.FoldingFraction", f"{out.folding:.6g}")
        transforms.SetDataNodeAtValue(node, values[out.index])
        out.gridTransform = None  # the sequence holds its own copy
    jacobians = None
    if jacobian:
        jacobians = _newSequence(scene, f"{base} MLVIRNET Jacobians", volumeSequence, created)
        for out in outputs:
            node = slicer.vtkMRMLScalarVolumeNode()
            node.SetName(f"{out.name} MLVIRNET Jacobian")
            updateVolumeNodeFromImage(node, out.jacobian)
            jacobians.SetDataNodeAtValue(node, values[out.index])
            out.jacobian = None

    browser = _browserOf(scene, volumeSequence)
    if browser is None:
        browser = scene.AddNewNodeByClass(BROWSER_CLASS, scene.GenerateUniqueName(f"{base} browser"))
        created.append(browser)
        browser.SetAndObserveMasterSequenceNodeID(volumeSequence.GetID())
    for sequence in (transforms, jacobians):
        if sequence is not None:
            browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    browser.SetSelectedItemNumber(browser.GetSelectedItemNumber())
    proxyTransform = browser.GetProxyNode(transforms)
    proxyVolume = browser.GetProxyNode(volumeSequence)
    if proxyTransform is None or proxyVolume is None:
        raise ValueError("the sequence browser made no proxy nodes: the Sequences module logic does not observe this scene")
    created.append(proxyTransform)
    proxyTransform.SetName(scene.GenerateUniqueName(f"{base} MLVIRNET transform"))
    proxyTransform.SetAttribute(SERIES_TRANSFORM_ATTRIBUTE, transforms.GetID())
    parent = proxyVolume.GetParentTransformNode()
    if parent is None or parent.GetAttribute(SERIES_TRANSFORM_ATTRIBUTE) is not None:
        proxyVolume.SetAndObserveTransformNodeID(proxyTransform.GetID())
    else:
        messages.append(f"the phase volume '{nodeName(proxyVolume)}' is under the transform '{nodeName(parent)}'; it was left there")
    if jacobians is not None:
        proxyJacobian = browser.GetProxyNode(jacobians)
        created.append(proxyJacobian)
        proxyJacobian.SetName(scene.GenerateUniqueName(f"{base} MLVIRNET Jacobian"))
        setJacobianDisplay(proxyJacobian)

    table, charts = None, {}
    if summary is not None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} MLVIRNET motion"))
        created.append(table)
        fillMotionTable(table, summary)
        charts = addMotionCharts(scene, table, base, created)
    return SeriesNodes(transforms, browser, proxyTransform, volumeSequence, jacobians, table, charts, summary, tuple(messages))
