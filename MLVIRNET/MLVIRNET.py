"""3D Slicer module for mlVIRNET deformable lung CT registration.

The module is a thin GUI over :class:`MLVIRNETLib.mrml.logic.RegistrationLogic`; every computation happens in
the library. PyTorch is not imported when Slicer loads the module: it is checked (and installed
after the user agrees) on the first Apply.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import unittest
from typing import Annotated, Optional, Union

import ctk  # noqa: F401  (the .ui uses ctk widgets)
import qt
import slicer
import vtk
from slicer import (  # since Slicer 5.10 the markups and segmentation nodes are in MRML Core too
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLLayoutNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Maximum, Minimum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _moduleRoot() -> pathlib.Path:
    """Folder holding ``MLVIRNETLib/`` and ``Resources/``.

    In a built extension both are installed beside this file; in the source tree this file lives
    in ``MLVIRNET/`` and they are one folder up.
    """
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here, here.parent):
        if (candidate / "MLVIRNETLib").is_dir():
            return candidate
    return here


MODULE_ROOT = _moduleRoot()
if str(MODULE_ROOT) not in sys.path:
    sys.path.insert(0, str(MODULE_ROOT))

from MLVIRNETLib.mrml.logic import RegistrationLogic  # noqa: E402

DEFAULT_ITERATIONS = -1
"""``refineIterations`` value meaning "what the preset says" (shown as "default" in the spin box)."""

PRESETS = {
    "Fast (network only)": "fast",
    "Standard": "standard",
    "Accurate": "accurate",
}
"""Preset name shown -> the library preset (``MLVIRNETLib.registration.presets``). Choosing one
resets the advanced refinement iterations to the preset's and turns the affine stage on."""

MODEL_SOURCES = ("Shipped default", "Model file")
DEVICES = ("auto", "cpu", "cuda")
DIRLAB_CASES = tuple(f"4dct:{n}" for n in range(1, 11)) + tuple(f"copd:{n}" for n in range(1, 11))


def resourcePath(relativePath: str) -> str:
    """Absolute path of a file in ``Resources/`` (source tree or built extension)."""
    return str(MODULE_ROOT / "Resources" / relativePath)


#
# MLVIRNET
#
class MLVIRNET(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MLVIRNET")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["MLVIRNET developers"]
        self.parent.helpText = _(
            "Deformable registration of lung CT with mlVIRNET, a multilevel variational image registration "
            "network. Choose the fixed and the moving CT (optionally lung masks) and press Apply: the result is "
            "a grid transform (fixed to moving, the resampling direction) that aligns the moving volume with "
            "the fixed volume, and optionally the warped moving volume. The 4D-CT series section registers every "
            "phase of a volume sequence (a 4D-CT), or of several checked phase volumes, to a reference phase: a "
            "transform sequence browsed with the "
            "phases, each shown aligned with the reference, and a motion summary table and plots. The Evaluation "
            "section measures the "
            "target registration error between landmark lists; the Data section loads DIR-LAB cases. "
            "Every node is used in its own coordinates: a volume under a transform is refused with a message "
            "(harden the transform first, in the Data module). "
            "Requires PyTorch (installed on first use, after asking). "
            "To try it: in Sample Data, under MLVIRNET, load the breathing pair (the bundled CT and a 15 mm "
            "synthetic-breathing partner with 60 landmarks each; made on first use in about 20 s), choose "
            "'MLVIRNET sample fixed' and 'MLVIRNET sample moving' here and press Apply; then compute the TRE "
            "with the two sample landmark lists in the Evaluation section."
        )
        self.parent.acknowledgementText = _(
            "MLVIRNET implements the method of: Hering A, van Ginneken B, Heldmann S. mlVIRNET: Multilevel "
            "Variational Image Registration Network. Medical Image Computing and Computer Assisted Intervention "
            "(MICCAI) 2019, LNCS 11769, pp. 257-265. The bundled example CT comes from the TotalSegmentator "
            "test data (Apache-2.0)."
        )
        iconPath = pathlib.Path(resourcePath("Icons/MLVIRNET.png"))
        if iconPath.is_file():
            self.parent.icon = qt.QIcon(str(iconPath))
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Parameter node
#
@parameterNodeWrapper
class MLVIRNETParameterNode:
    """The module's state, saved with the scene.

    fixedVolume, movingVolume - the CT pair.
    fixedMask, movingMask - optional lung masks (labelmap or segmentation).
    preset - the library preset; choosing one resets refineIterations and affine.
    outputTransform - grid transform receiving the result (created when empty).
    outputVolume - optional warped moving volume.
    jacobianVolume - optional Jacobian determinant of the result (local volume change).
    showResult - place the moving volume under the transform and show it over the fixed volume.
    modelSource, modelFile, device, refineIterations, affine - advanced settings.
    fixedLandmarks, movingLandmarks, treTransform, treTable - target registration error.
    dirLabRoot, dirLabCase, landmarkFile, landmarkReference - data loading.
    seriesSequence, seriesReference, seriesJacobian - the 4D-CT series: the volume sequence, the
        reference phase (position in the sequence) and whether to make the Jacobian sequence.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    movingMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    preset: Annotated[str, Choice(list(PRESETS))] = "Standard"
    outputTransform: vtkMRMLGridTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    jacobianVolume: vtkMRMLScalarVolumeNode
    showResult: bool = True
    modelSource: Annotated[str, Choice(list(MODEL_SOURCES))] = MODEL_SOURCES[0]
    modelFile: pathlib.Path
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    refineIterations: Annotated[int, Minimum(DEFAULT_ITERATIONS), Maximum(5000)] = DEFAULT_ITERATIONS
    affine: bool = True
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    treTransform: vtkMRMLTransformNode
    treTable: vtkMRMLTableNode
    dirLabRoot: pathlib.Path
    dirLabCase: Annotated[str, Choice(list(DIRLAB_CASES))] = DIRLAB_CASES[0]
    landmarkFile: pathlib.Path
    landmarkReference: vtkMRMLScalarVolumeNode
    seriesSequence: vtkMRMLSequenceNode
    seriesReference: Annotated[int, Minimum(0), Maximum(999)] = 0
    seriesJacobian: bool = False


#
# Logic
#
class MLVIRNETLogic(ScriptedLoadableModuleLogic, RegistrationLogic):
    """:class:`MLVIRNETLib.mrml.logic.RegistrationLogic` with Slicer's parameter node handling.

    Usable from the Python console without the GUI (see docs/slicer.md).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        RegistrationLogic.__init__(self, scene=slicer.mrmlScene)

    def getParameterNode(self) -> MLVIRNETParameterNode:
        return MLVIRNETParameterNode(super().getParameterNode())


#
# Dependencies
#
def pyprojectPath() -> pathlib.Path:
    """The library's ``pyproject.toml`` (installed beside ``MLVIRNETLib/`` by the extension)."""
    return MODULE_ROOT / "pyproject.toml"


def ensureLibraryDependencies() -> bool:
    """Install the library's dependencies other than PyTorch, after the user agrees; True when done.

    Slicer 5.11 and later: ``slicer.packaging.pip_ensure`` with the ``pyproject.toml`` dependencies
    (it asks before installing and does nothing when all are present). Older Slicer: the missing
    distributions are installed with ``slicer.util.pip_install`` after a confirmation.
    """
    from MLVIRNETLib.mrml.dependencies import TORCH, missing_distributions, pyproject_requirements

    try:
        from slicer import packaging
    except ImportError:  # Slicer before 5.11
        packaging = None
    if packaging is not None:
        requirements = [r for r in packaging.load_pyproject_dependencies(pyprojectPath()) if r.name.lower() != TORCH]
        try:
            packaging.pip_ensure(requirements, requester="MLVIRNET")
        except RuntimeError as error:  # the user declined
            slicer.util.warningDisplay(_("MLVIRNET cannot run without its Python packages ({error}).").format(error=error))
            return False
        return True
    missing = missing_distributions(pyproject_requirements(pyprojectPath()))
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        _("MLVIRNET needs these Python packages: {names}. Install them now with pip?").format(names=", ".join(missing)),
        windowTitle=_("Install Python packages"),
    ):
        return False
    slicer.util.pip_install(missing)
    return True


def ensurePyTorch() -> bool:
    """Make ``import torch`` work; True when it does.

    Uses the PyTorch extension (PyTorchUtils) when it is installed, which picks a CUDA build
    matching the GPU driver; otherwise offers to pip-install ``torch`` after asking the user.

    Raises:
        RuntimeError: the installation failed (with what to do instead).
    """
    from MLVIRNETLib.mrml.dependencies import torch_requirement

    versions = torch_requirement(pyprojectPath())
    if _importTorch():
        return True
    try:
        import PyTorchUtils  # the "PyTorch" extension
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=versions) is None:
                slicer.util.warningDisplay(_("MLVIRNET needs PyTorch; nothing was started."))
                return False
        return True
    if not slicer.util.confirmOkCancelDisplay(
        _(
            "MLVIRNET needs PyTorch, which is not installed. Install it now with pip (a download of several "
            "hundred MB to a few GB; Slicer may be unresponsive for some minutes)?\n\n"
            "Tip: the 'PyTorch' extension (Extensions Manager) installs a build that matches your GPU."
        ),
        windowTitle=_("Install PyTorch"),
    ):
        slicer.util.warningDisplay(_("MLVIRNET needs PyTorch; nothing was started."))
        return False
    try:
        slicer.util.pip_install(f"torch{versions}")
        import torch  # noqa: F401,F811
    except Exception as error:  # pip or import failure: tell the user what to do instead
        raise RuntimeError(
            f"PyTorch could not be installed ({error}). Install the 'PyTorch' extension from the Extensions "
            "Manager, or run slicer.util.pip_install('torch') in the Python console, then restart Slicer."
        ) from error
    return True


def _importTorch() -> bool:
    """``import torch``, its OpenMP threads set to wait passively (for that load only, see
    ``MLVIRNETLib.core.threads``); True when it worked."""
    from MLVIRNETLib.core.threads import passive_waiting_while_loading

    with passive_waiting_while_loading():
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
    return True


def ensureDependencies() -> bool:
    """The library's packages, then PyTorch; True when MLVIRNET can run."""
    return ensureLibraryDependencies() and ensurePyTorch()


#
# Sample Data
#
SAMPLE_CATEGORY = "MLVIRNET"
SAMPLE_CT = "MLVIRNETChestCT"
SAMPLE_PAIR = "MLVIRNETBreathingPair"


def registerSampleData() -> None:
    """Offer the bundled chest CT and a breathing pair (with landmarks) in the Sample Data module."""
    import SampleData

    from MLVIRNETLib.paths import bundled_ct_path

    thumbnail = resourcePath("Icons/MLVIRNETSampleData.png")
    SampleData.SampleDataLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, "MLVIRNET")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_CT,
        uris=[bundled_ct_path().as_uri()],
        fileNames=[bundled_ct_path().name],
        nodeNames=["MLVIRNET chest CT"],
        thumbnailFileName=thumbnail,
        loadFileTypes="VolumeFile",
    )
    # the pair is made by loadSamplePair, not downloaded: no files to list
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_PAIR,
        uris=[],
        fileNames=[],
        nodeNames=[],
        thumbnailFileName=thumbnail,
        customDownloader=loadSamplePair,
    )


def loadSamplePair(source=None) -> list:
    """The Sample Data module's loader of the breathing pair (``customDownloader``): the loaded nodes.

    The pair also becomes the module's input (fixed and moving volumes and landmark lists), so that
    Apply is the next step.
    """
    nodes = samplePairNodes()
    if nodes:
        parameters = MLVIRNETLogic().getParameterNode()
        for name, node in nodes.items():
            setattr(parameters, name, node)
    return list(nodes.values())


def samplePairNodes() -> dict:
    """Load the breathing pair: the bundled CT (fixed), its 15 mm breathing partner (moving) and
    60 corresponding lung landmarks each. The partner is generated into Slicer's cache on first use.

    The nodes keep no storage node (as Sample Data's own samples): saving the scene asks where.

    Returns:
        ``{"fixedVolume", "movingVolume", "fixedLandmarks", "movingLandmarks"}`` nodes (empty when the
        user declined to install the dependencies).
    """
    if not ensureDependencies():
        return {}
    from MLVIRNETLib.simulation.cases import sample_pair_files

    cache = pathlib.Path(slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory()) / "MLVIRNET"
    files = sample_pair_files(cache)
    nodes = {
        "fixedVolume": slicer.util.loadVolume(str(files.fixed), properties={"name": "MLVIRNET sample fixed"}),
        "movingVolume": slicer.util.loadVolume(str(files.moving), properties={"name": "MLVIRNET sample moving"}),
        "fixedLandmarks": slicer.util.loadMarkups(str(files.fixed_landmarks)),
        "movingLandmarks": slicer.util.loadMarkups(str(files.moving_landmarks)),
    }
    nodes["fixedLandmarks"].SetName("MLVIRNET sample fixed landmarks")
    nodes["movingLandmarks"].SetName("MLVIRNET sample moving landmarks")
    for node in nodes.values():
        storageNode = node.GetStorageNode()
        if storageNode is not None:
            node.SetAndObserveStorageNodeID(None)
            slicer.mrmlScene.RemoveNode(storageNode)
    return nodes


#
# MLVIRNETWidget
#
class MLVIRNETWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and calls the logic.

    A registration runs with the panel alive (the logic calls back with progress, which processes
    events). While it runs, the inputs and settings are locked and the nodes it works on are the
    ones captured when Apply was pressed; closing the scene, deleting one of those nodes, unloading
    the module or quitting Slicer cancels it, and then nothing is written.
    """

    LOCKED_WHILE_BUSY = ("inputsCollapsibleButton", "outputsCollapsibleButton", "advancedCollapsibleButton",
                         "seriesCollapsibleButton", "dataCollapsibleButton", "treCollapsibleButton")
    """The panel sections that cannot be changed while a registration runs."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._appliedPreset = None
        self._busy = False
        self._runNodeIDs: dict[str, str] = {}

    def resourcePath(self, filename: str) -> str:
        return resourcePath(filename)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MLVIRNET.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MLVIRNETLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAboutToBeRemovedEvent, self.onNodeAboutToBeRemoved)
        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.seriesApplyButton.connect("clicked(bool)", self.onSeriesApplyButton)
        self.ui.seriesVolumesSelector.connect("checkedNodesChanged()", self._updateButtons)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.computeTreButton.connect("clicked(bool)", self.onComputeTreButton)
        self.ui.loadDirLabCaseButton.connect("clicked(bool)", self.onLoadDirLabCaseButton)
        self.ui.importLandmarksButton.connect("clicked(bool)", self.onImportLandmarksButton)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """The module is unloaded (reload, exit): stop a running registration, drop the observers."""
        self._cancelRun(_("the module was unloaded"))
        slicer.app.disconnect("aboutToQuit()", self.onAboutToQuit)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRun(_("the scene was closed"))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAboutToBeRemoved(self, caller, event, node) -> None:
        if self._busy and node is not None and node.GetID() in self._runNodeIDs:
            self._cancelRun(_("the {what} was deleted").format(what=self._runNodeIDs[node.GetID()]))

    def onAboutToQuit(self) -> None:
        self._cancelRun(_("Slicer is closing"))

    def _cancelRun(self, reason: str) -> None:
        if self._busy and self.logic is not None:
            self.logic.cancel(reason)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[MLVIRNETParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._appliedPreset = self._parameterNode.preset
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    # -- state ----------------------------------------------------------------------------------
    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        if p.preset != self._appliedPreset:
            self._appliedPreset = p.preset
            p.refineIterations = DEFAULT_ITERATIONS
            p.affine = True
        self._updateButtons()

    def _inputProblem(self) -> str:
        """Why Apply cannot run with the current choices ("" when it can)."""
        p = self._parameterNode
        if p is None or not p.fixedVolume or not p.movingVolume:
            return _("Select the fixed and moving volumes.")
        if p.fixedVolume == p.movingVolume:
            return _("The fixed and moving volumes are the same: select two volumes.")
        return ""

    def _updateButtons(self) -> None:
        p = self._parameterNode
        problem = self._inputProblem()
        self.ui.applyButton.enabled = not problem and not self._busy
        self.ui.applyButton.toolTip = problem or _("Register the moving volume to the fixed volume.")
        self.ui.cancelButton.enabled = self._busy
        phases = self._seriesPhases()
        self.ui.seriesApplyButton.enabled = phases is not None and not self._busy
        if isinstance(phases, list):
            self.ui.seriesApplyButton.toolTip = _("Register every checked phase volume to the reference phase.")
        elif phases is not None:
            self.ui.seriesApplyButton.toolTip = _("Register every phase of the volume sequence to the reference phase.")
        else:
            self.ui.seriesApplyButton.toolTip = _("Select a volume sequence (a 4D-CT), or check two or more phase volumes.")
        self.ui.modelFilePathLineEdit.enabled = bool(p and p.modelSource == MODEL_SOURCES[1])
        self.ui.computeTreButton.enabled = bool(p and p.fixedLandmarks and p.movingLandmarks) and not self._busy
        self.ui.loadDirLabCaseButton.enabled = bool(p and str(p.dirLabRoot) not in ("", ".")) and not self._busy
        self.ui.importLandmarksButton.enabled = bool(p and p.landmarkFile.is_file()) and not self._busy

    def _setBusy(self, busy: bool) -> None:
        self._busy = busy
        for name in self.LOCKED_WHILE_BUSY:
            getattr(self.ui, name).enabled = not busy
        self._updateButtons()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps the panel alive: Cancel, scene changes

    # -- actions --------------------------------------------------------------------------------
    def onCancelButton(self) -> None:
        self.logic.cancel(_("Cancel was pressed"))
        self.ui.statusLabel.text = _("Cancelling...")

    def _settings(self) -> dict:
        """The registration settings (preset and advanced), read once when a run starts."""
        p = self._parameterNode
        return {
            "model": str(p.modelFile) if p.modelSource == MODEL_SOURCES[1] else None,
            "device": p.device,
            "refineIterations": None if p.refineIterations == DEFAULT_ITERATIONS else p.refineIterations,
            "affine": p.affine,
            "preset": PRESETS[p.preset],
        }

    @staticmethod
    def _checkModel(settings: dict) -> None:
        if settings["model"] is not None and not pathlib.Path(settings["model"]).is_file():
            raise ValueError(_("Model file not found: {path}").format(path=settings["model"]))

    def _runRequest(self) -> dict:
        """The nodes and settings of the run, read once when Apply is pressed."""
        p = self._parameterNode
        return {
            "fixedVolumeNode": p.fixedVolume,
            "movingVolumeNode": p.movingVolume,
            "outputTransformNode": p.outputTransform,
            "fixedMaskNode": p.fixedMask,
            "movingMaskNode": p.movingMask,
            "outputVolumeNode": p.outputVolume,
            "jacobianVolumeNode": p.jacobianVolume,
            **self._settings(),
        }

    def _runLogic(self, nodeRoles: dict, call, what: str):
        """``call()`` (a Logic run) with the panel locked and the nodes of ``nodeRoles`` (id -> how a
        message names it) watched: deleting one cancels the run. Returns what ``call`` returned, or
        None when the run was cancelled or failed (the status line and an error box say which)."""
        from MLVIRNETLib.registration import RegistrationCancelled

        self._runNodeIDs = dict(nodeRoles)
        self._setBusy(True)
        self.ui.progressBar.setValue(0)
        try:
            return call()
        except RegistrationCancelled:
            self.ui.progressBar.setValue(0)
            reason = self.logic.cancelReason or _("Cancel was pressed")
            self.ui.statusLabel.text = _("{what} cancelled ({reason}); nothing was changed.").format(what=what, reason=reason)
        except Exception as error:  # noqa: BLE001 - shown to the user, as tryWithErrorDisplay does
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("{what} failed.").format(what=what)
            slicer.util.errorDisplay(_("{what} failed.").format(what=what) + f"\n\n{error}")
        finally:
            self._runNodeIDs = {}
            self._setBusy(False)
        return None

    def onApplyButton(self) -> None:
        from MLVIRNETLib.mrml.logic import checkRegistrationInputs

        p = self._parameterNode
        showResult = p.showResult
        request = self._runRequest()
        try:  # every choice is checked before anything is installed or computed
            checkRegistrationInputs(
                request["fixedVolumeNode"], request["movingVolumeNode"], request["outputTransformNode"],
                request["fixedMaskNode"], request["movingMaskNode"], request["outputVolumeNode"],
                request["jacobianVolumeNode"],
            )
            self._checkModel(request)
        except ValueError as error:
            self.ui.statusLabel.text = _("Registration not started.")
            slicer.util.errorDisplay(_("Registration not started: {error}").format(error=error))
            return
        if not ensureDependencies():
            return
        roles = {node.GetID(): RUN_NODE_ROLES[key] for key, node in request.items() if key in RUN_NODE_ROLES and node is not None}
        transformNode = self._runLogic(
            roles, lambda: self.logic.register(**request, progressCallback=self._onProgress), _("Registration")
        )
        if transformNode is None:
            return
        if self._parameterNode is not None:
            self._parameterNode.outputTransform = transformNode
            self._parameterNode.treTransform = transformNode
        summary = self.logic.lastResult
        self.ui.statusLabel.text = self._resultSummary(summary)
        self.ui.detailsLabel.text = summary.details()
        if showResult:
            self._showResult(transformNode, request)

    def _seriesPhases(self):
        """The series to register: the checked phase volumes when two or more are checked (a list),
        else the selected volume sequence, else None."""
        checked = list(self.ui.seriesVolumesSelector.checkedNodes())
        if len(checked) >= 2:
            return checked
        p = self._parameterNode
        return p.seriesSequence if p is not None and p.seriesSequence is not None else None

    def onSeriesApplyButton(self) -> None:
        from MLVIRNETLib.mrml.series import checkSeriesInputs

        p = self._parameterNode
        phases, reference, jacobian, settings = self._seriesPhases(), p.seriesReference, p.seriesJacobian, self._settings()
        if phases is None:
            return
        if isinstance(phases, list):
            roles = {v.GetID(): _("phase volume '{name}'").format(name=v.GetName()) for v in phases}
        else:
            roles = {phases.GetID(): _("volume sequence")}
        try:  # every choice is checked before anything is installed or computed
            checkSeriesInputs(phases, reference)
            self._checkModel(settings)
        except ValueError as error:
            self.ui.statusLabel.text = _("Series registration not started.")
            slicer.util.errorDisplay(_("Series registration not started: {error}").format(error=error))
            return
        if not ensureDependencies():
            return
        nodes = self._runLogic(
            roles,
            lambda: self.logic.registerSequence(
                phases, reference, jacobian=jacobian, progressCallback=self._onProgress, **settings
            ),
            _("Series registration"),
        )
        if nodes is None:
            return
        self.ui.statusLabel.text = nodes.describe()
        slicer.util.setSliceViewerLayers(background=nodes.browser.GetProxyNode(nodes.volumeSequence))
        if nodes.table is not None:
            layoutNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
            if layoutNode is not None:  # the chart and the table beside the slice views
                layoutNode.SetViewArrangement(vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
            showTable(nodes.table)
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetActivePlotChartID(nodes.charts["breathing"].GetID())
            slicer.app.applicationLogic().PropagatePlotChartSelection()

    @staticmethod
    def _resultSummary(summary) -> str:
        lines = [_("Registration finished.")]
        if "total" in summary.timings:
            lines.append(_("Time: {seconds:.1f} s.").format(seconds=float(summary.timings["total"])))
        lines.append(_("Folding (det J <= 0): {percent:.3f} % of voxels.").format(percent=100 * summary.folding_fraction))
        lines.extend(summary.messages)
        return " ".join(lines)

    def _showResult(self, transformNode, request: dict) -> None:
        moving = request["movingVolumeNode"]
        parent = moving.GetParentTransformNode()
        previousResult = parent is not None and parent.GetNodeReferenceID(parent.GetMovingNodeReferenceRole()) == moving.GetID()
        if parent is None or parent == transformNode or previousResult:
            moving.SetAndObserveTransformNodeID(transformNode.GetID())
        else:
            logging.warning("MLVIRNET: the moving volume is under another transform; it was left there")
        foreground = request["outputVolumeNode"] or moving
        slicer.util.setSliceViewerLayers(background=request["fixedVolumeNode"], foreground=foreground, foregroundOpacity=0.5)

    def onComputeTreButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Computing the target registration error failed.")):
            if p.treTable is None:
                p.treTable = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName("MLVIRNET TRE")
                )
            stats = self.logic.computeTRE(p.fixedLandmarks, p.movingLandmarks, p.treTransform, p.treTable)
            self.ui.treResultLabel.text = stats["summary"]
            showTable(p.treTable)

    def onLoadDirLabCaseButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Loading the DIR-LAB case failed.")):
            if not ensureDependencies():
                return
            nodes = self.logic.loadDirLabCase(p.dirLabRoot, p.dirLabCase)
            p.fixedVolume = nodes["fixedVolume"]
            p.movingVolume = nodes["movingVolume"]
            p.fixedLandmarks = nodes["fixedLandmarks"]
            p.movingLandmarks = nodes["movingLandmarks"]
            p.fixedMask = None
            p.movingMask = None
            slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=p.movingVolume, foregroundOpacity=0.5)
            if slicer.app.layoutManager() is not None:
                slicer.util.resetSliceViews()
            self.ui.statusLabel.text = _("Loaded DIR-LAB case {case}.").format(case=p.dirLabCase)

    def onImportLandmarksButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Importing the landmarks failed.")):
            if not ensureDependencies():
                return
            node = self.logic.importLandmarks(p.landmarkFile, p.landmarkReference)
            reference = p.landmarkReference
            if reference is not None and reference == p.fixedVolume:
                p.fixedLandmarks = node
            elif reference is not None and reference == p.movingVolume:
                p.movingLandmarks = node
            self.ui.statusLabel.text = _("Imported {n} landmarks as '{name}'.").format(
                n=node.GetNumberOfControlPoints(), name=node.GetName()
            )


RUN_NODE_ROLES = {
    "fixedVolumeNode": "fixed volume",
    "movingVolumeNode": "moving volume",
    "outputTransformNode": "output transform",
    "fixedMaskNode": "fixed mask",
    "movingMaskNode": "moving mask",
    "outputVolumeNode": "warped volume",
    "jacobianVolumeNode": "Jacobian volume",
}
"""The nodes a run works on, by their key in the run request, and how a message names them."""

TABLE_LAYOUTS = {
    vtkMRMLLayoutNode.SlicerLayoutFourUpTableView,
    vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView,
    vtkMRMLLayoutNode.SlicerLayout3DTableView,
}
"""Layouts that show a table view."""


def showTable(tableNode) -> None:
    """Show ``tableNode`` in a table view, switching to the four-up table layout when the current
    layout has none (the layout node is the scene's; Slicer's layout manager follows it)."""
    selection = slicer.app.applicationLogic().GetSelectionNode()
    selection.SetActiveTableID(tableNode.GetID())
    layoutNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layoutNode is not None and layoutNode.GetViewArrangement() not in TABLE_LAYOUTS:
        layoutNode.SetViewArrangement(vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    slicer.app.applicationLogic().PropagateTableSelection()


#
# MLVIRNETTest
#
class MLVIRNETTest(ScriptedLoadableModuleTest):
    """Self-test run from Slicer (Reload and Test, or ctest in a built extension).

    The same checks as ``Testing/mrml/test_logic_mrml.py``, inside the application and its scene.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for test in (
            self.test_VolumeRoundTrip,
            self.test_GridTransformMatchesDeformation,
            self.test_TransformFileMatchesITKField,
            self.test_RegisterAndTRE,
            self.test_SamplePairRegistration,
            self.test_DirLabLandmarks,
            self.test_SeriesRegistration,
        ):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as reason:
                self.delayDisplay(f"{test.__name__} skipped: {reason}")

    # -- helpers --------------------------------------------------------------------------------
    def _requireTorch(self) -> None:
        try:
            import torch  # noqa: F401
        except ImportError:
            self.skipTest("PyTorch is not installed (install the PyTorch extension or press Apply once)")

    @staticmethod
    def _obliqueGrid(size=(9, 7, 5)):
        import numpy as np

        from MLVIRNETLib.core.geometry import ImageGrid

        a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        direction = rz @ rx @ np.diag([1.0, 1.0, -1.0])
        return ImageGrid(size, (0.7, 1.3, 2.5), (-12.5, 20.25, 33.0), tuple(direction.ravel()))

    @staticmethod
    def _smoothDeformation(grid, amplitude=3.0):
        import numpy as np
        import torch

        from MLVIRNETLib.core.deformation import Deformation

        c = torch.as_tensor(grid.index_to_world((np.asarray(grid.size) - 1) / 2), dtype=torch.float64)
        scale = float(np.max(grid.extent))

        def fn(x):
            r = (x - c) / scale
            return amplitude * torch.stack(
                [torch.sin(2 * r[..., 1] + 0.3), torch.cos(3 * r[..., 2]) - 0.5, torch.sin(r[..., 0] + r[..., 1])], dim=-1
            )

        return Deformation.from_function(grid, fn)

    @staticmethod
    def _pointsInside(grid, n=40, seed=0):
        import numpy as np

        rng = np.random.default_rng(seed)
        return np.asarray(grid.index_to_world(rng.uniform(0.1, 0.9, size=(n, 3)) * (np.asarray(grid.size) - 1)))

    # -- tests ----------------------------------------------------------------------------------
    def test_VolumeRoundTrip(self) -> None:
        """Volume node -> SimpleITK -> volume node keeps the oblique geometry and the voxels."""
        self._requireTorch()
        import numpy as np
        import SimpleITK as sitk

        from MLVIRNETLib import mrml as L
        from MLVIRNETLib.core.geometry import ras_to_lps

        grid = self._obliqueGrid()
        array = np.random.default_rng(3).integers(-1024, 2000, size=grid.shape_zyx).astype(np.int16)
        node = slicer.util.addVolumeFromArray(array, ijkToRAS=grid.index_to_ras_matrix(), name="oblique")
        image = L.volumeNodeToImage(node)
        ijkToRas = grid.index_to_ras_matrix()
        for index in [(0, 0, 0), (8, 6, 4), (5, 3, 2)]:
            ras = (ijkToRas @ np.array([*index, 1.0]))[:3]
            self.assertTrue(np.allclose(image.TransformIndexToPhysicalPoint(index), ras_to_lps(ras), atol=1e-9))
        self.assertTrue(np.array_equal(sitk.GetArrayFromImage(image), array))
        back = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "back")
        L.updateVolumeNodeFromImage(back, image)
        matrix = vtk.vtkMatrix4x4()
        back.GetIJKToRASMatrix(matrix)
        self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(matrix), ijkToRas, atol=1e-12))
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(back), array))
        self.delayDisplay("Volume round trip passed")

    def test_GridTransformMatchesDeformation(self) -> None:
        """The grid transform maps fixed RAS points like the library's deformation."""
        self._requireTorch()
        import numpy as np
        import torch

        from MLVIRNETLib import mrml as L
        from MLVIRNETLib.core.geometry import lps_to_ras, ras_to_lps

        grid = self._obliqueGrid((12, 9, 7))
        deformation = self._smoothDeformation(grid)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "T")
        node.SetAndObserveTransformFromParent(L.deformationToGridTransform(deformation))
        points = self._pointsInside(grid)
        expected = deformation.map_points(torch.as_tensor(points, dtype=torch.float64))[0].numpy()
        got = np.array([node.GetTransformFromParent().TransformPoint(*lps_to_ras(p)) for p in points])
        self.assertLess(float(np.abs(ras_to_lps(got) - expected).max()), 1e-3)
        self.delayDisplay("Grid transform passed")

    def test_TransformFileMatchesITKField(self) -> None:
        """A grid transform saved by Slicer (.h5) maps points like the CLI's ITK field."""
        self._requireTorch()
        import os

        import numpy as np
        import SimpleITK as sitk
        import torch

        from MLVIRNETLib import mrml as L

        grid = self._obliqueGrid((11, 8, 6))
        deformation = self._smoothDeformation(grid)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "T")
        node.SetAndObserveTransformFromParent(L.deformationToGridTransform(deformation))
        path = os.path.join(slicer.app.temporaryPath, "MLVIRNETTest_field.h5")
        self.assertTrue(slicer.util.saveNode(node, path))
        transform = sitk.ReadTransform(path)
        points = self._pointsInside(grid, seed=5)
        got = np.array([transform.TransformPoint(tuple(p)) for p in points])
        expected = deformation.map_points(torch.as_tensor(points, dtype=torch.float64))[0].numpy()
        self.assertLess(float(np.abs(got - expected).max()), 1e-3)
        os.remove(path)
        self.delayDisplay("Transform file passed")

    def test_RegisterAndTRE(self) -> None:
        """Register a known deformation of the bundled CT; transform and TRE agree with the library."""
        self._requireTorch()
        import numpy as np
        import SimpleITK as sitk
        import torch

        from MLVIRNETLib import mrml as L
        from MLVIRNETLib.core.geometry import ImageGrid, lps_to_ras, ras_to_lps
        from MLVIRNETLib.evaluation import metrics
        from MLVIRNETLib.networks.cascade import MultilevelNet
        from MLVIRNETLib.paths import bundled_ct_path
        from MLVIRNETLib.registration import RegistrationOptions

        ct = sitk.ReadImage(str(bundled_ct_path()))
        grid = ImageGrid.from_sitk(ct).resized((48, 44, 40))
        reference = sitk.Image(list(grid.size), sitk.sitkInt16)
        grid.copy_to_sitk(reference)
        small = sitk.Resample(
            sitk.SmoothingRecursiveGaussian(sitk.Cast(ct, sitk.sitkFloat32), 1.5),
            reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16,
        )
        truth = self._smoothDeformation(grid, amplitude=4.0)
        values = torch.as_tensor(sitk.GetArrayFromImage(small).astype(np.float32))[None, None]
        movingImage = sitk.GetImageFromArray(np.rint(truth.warp(values, grid)[0, 0].numpy()).astype(np.int16))
        grid.copy_to_sitk(movingImage)
        fixed = L.imageToNewVolumeNode(slicer.mrmlScene, small, "fixed")
        moving = L.imageToNewVolumeNode(slicer.mrmlScene, movingImage, "moving")

        # a small untrained network and few iterations: this checks the plumbing, not the accuracy
        torch.manual_seed(0)
        net = MultilevelNet(levels=2, features=4, depth=2)
        options = RegistrationOptions(grid={"size": (32, 32, 32), "crop_to_lungs": False}, refinement={"iterations": 2})
        logic = MLVIRNETLogic()
        transformNode = logic.register(fixed, moving, model=net, device="cpu", affine=False, options=options)
        deformation = L.gridTransformToDeformation(transformNode.GetTransformFromParent()).to(torch.float64)
        points = self._pointsInside(grid, n=30, seed=7)
        got = L.transformPointsRas(transformNode.GetTransformFromParent(), lps_to_ras(points))
        expected = deformation.map_points(torch.as_tensor(points, dtype=torch.float64))[0].numpy()
        self.assertLess(float(np.abs(ras_to_lps(got) - expected).max()), 0.01)

        movingPoints = truth.to(torch.float64).map_points(torch.as_tensor(points, dtype=torch.float64))[0].numpy()
        fixedLandmarks = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
        movingLandmarks = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")
        L.setMarkupsPoints(fixedLandmarks, points)
        L.setMarkupsPoints(movingLandmarks, movingPoints)
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "TRE")
        stats = logic.computeTRE(fixedLandmarks, movingLandmarks, transformNode, table)
        libraryTre = metrics.tre(points, movingPoints, deformation)
        self.assertAlmostEqual(stats["mean"], libraryTre.mean, delta=0.01)
        self.assertAlmostEqual(stats["max"], libraryTre.max, delta=0.01)
        self.assertEqual(table.GetNumberOfRows(), len(points))
        self.delayDisplay(f"Registration passed: {stats['summary']}")

    def test_SamplePairRegistration(self) -> None:
        """The Sample Data breathing pair registered end to end with the defaults; TRE through fiducials."""
        self._requireTorch()
        nodes = samplePairNodes()
        logic = MLVIRNETLogic()
        before = logic.computeTRE(nodes["fixedLandmarks"], nodes["movingLandmarks"])
        transformNode = logic.register(nodes["fixedVolume"], nodes["movingVolume"])
        after = logic.computeTRE(nodes["fixedLandmarks"], nodes["movingLandmarks"], transformNode)
        self.assertGreater(before["mean"], 3.0)
        self.assertLess(after["mean"], 1.0)
        self.assertLess(after["mean"], 0.25 * before["mean"])
        role = transformNode.GetFixedNodeReferenceRole()
        self.assertEqual(transformNode.GetNodeReferenceID(role), nodes["fixedVolume"].GetID())
        self.delayDisplay(f"Sample pair registered: {after['summary']}")

    def test_SeriesRegistration(self) -> None:
        """A two-phase volume sequence registered into a transform sequence browsed with it."""
        self._requireTorch()
        import numpy as np
        import SimpleITK as sitk

        from MLVIRNETLib import mrml as L
        from MLVIRNETLib.core.geometry import ImageGrid, lps_to_ras
        from MLVIRNETLib.paths import bundled_ct_path
        from MLVIRNETLib.registration import RegistrationOptions

        ct = sitk.ReadImage(str(bundled_ct_path()))
        grid = ImageGrid.from_sitk(ct).resized((48, 44, 40))
        reference = sitk.Image(list(grid.size), sitk.sitkInt16)
        grid.copy_to_sitk(reference)
        image = sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "MLVIRNETTest 4D-CT")
        for k, shift in enumerate((0.0, 3.0)):
            moved = sitk.Image(image)
            moved.SetOrigin(tuple(np.asarray(image.GetOrigin()) + [0.0, 0.0, shift]))
            phase = slicer.vtkMRMLScalarVolumeNode()
            L.updateVolumeNodeFromImage(phase, moved)
            sequence.SetDataNodeAtValue(phase, str(k))
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "MLVIRNETTest browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        # no network and two iterations: this checks the sequences and the browser, not the accuracy
        options = RegistrationOptions(grid={"size": (32, 32, 32), "crop_to_lungs": False})
        nodes = MLVIRNETLogic().registerSequence(
            sequence, 0, model="none", device="cpu", options=options, refineIterations=2, affine=False
        )
        self.assertEqual(nodes.transformSequence.GetNumberOfDataNodes(), 2)
        self.assertTrue(browser.IsSynchronizedSequenceNode(nodes.transformSequence, False))
        self.assertIs(browser.GetProxyNode(sequence).GetParentTransformNode(), nodes.proxyTransform)
        point = lps_to_ras(np.asarray(reference.TransformContinuousIndexToPhysicalPoint([24.0, 22.0, 20.0])))
        for k in (1, 0):
            browser.SetSelectedItemNumber(k)
            expected = nodes.transformSequence.GetNthDataNode(k).GetTransformFromParent().TransformPoint(*point)
            got = nodes.proxyTransform.GetTransformFromParent().TransformPoint(*point)
            self.assertLess(float(np.abs(np.subtract(got, expected)).max()), 1e-6)
        self.delayDisplay(nodes.describe())

    def test_DirLabLandmarks(self) -> None:
        """DIR-LAB 4D-CT case 1 landmarks land at IJKToRAS @ (index - 1) and give the paper's initial TRE."""
        self._requireTorch()
        import numpy as np

        root = MODULE_ROOT.parent / "shared" / "data"  # the development data beside a source checkout
        if not (root / "dirlab" / "4dct_landmarks").is_dir():
            self.skipTest("the shared DIR-LAB landmark files are not available")
        folder = root / "dirlab" / "4dct_landmarks"
        spacing = (0.97, 0.97, 2.5)
        ijkToRas = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        reference = slicer.util.addVolumeFromArray(np.zeros((94, 256, 256), np.int16), ijkToRAS=ijkToRas, name="case1")
        logic = MLVIRNETLogic()
        fixed = logic.loadDirLabLandmarks(folder / "Case1_300_T00_xyz.txt", reference)
        moving = logic.loadDirLabLandmarks(folder / "Case1_300_T50_xyz.txt", reference)
        indices = np.loadtxt(folder / "Case1_300_T00_xyz.txt")
        ras = (ijkToRas @ np.c_[indices - 1.0, np.ones(len(indices))].T).T[:, :3]
        self.assertTrue(np.allclose(slicer.util.arrayFromMarkupsControlPoints(fixed), ras, atol=1e-6))
        stats = logic.computeTRE(fixed, moving)
        self.assertAlmostEqual(stats["mean"], 3.89, delta=0.005)
        self.assertAlmostEqual(stats["std"], 2.78, delta=0.005)
        self.delayDisplay("DIR-LAB landmarks passed")
