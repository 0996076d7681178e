"""The MLVIRNET module run as Slicer runs it: Slicer's own Python code, real MRML, Qt stand-ins.

See ``slicer_app.py`` for what is real and what stands in for the application. Each test drives
the module's classes the way a user or Slicer does: discovery and Sample Data at start-up, the
panel, Apply, actions during a run, the self-test.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

import slicer_app

reason = slicer_app.available()
if reason:
    pytest.skip(reason, allow_module_level=True)

import qt_standins  # noqa: E402


@pytest.fixture
def harness(tmp_path):
    with slicer_app.installed(tmp_path) as h:
        h.discoverModule()
        yield h


@pytest.fixture
def panel(harness):
    widget = harness.createWidget()
    yield widget
    harness.unloadModule()  # as at exit: cleanup() removes the panel's observers


def small_pair(h, shift_mm: float = 3.0):
    """Fixed and moving volumes from the bundled CT at about 3 mm, the moving shifted by ``shift_mm``."""
    import SimpleITK as sitk

    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.mrml import imageToNewVolumeNode
    from MLVIRNETLib.paths import bundled_ct_path

    ct = sitk.ReadImage(str(bundled_ct_path()))
    grid = ImageGrid.from_sitk(ct).resized((60, 63, 82))
    reference = sitk.Image(list(grid.size), sitk.sitkInt16)
    grid.copy_to_sitk(reference)
    fixed = sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    moving = sitk.Image(fixed)
    moving.SetOrigin(tuple(np.asarray(fixed.GetOrigin()) + [0.0, 0.0, shift_mm]))
    scene = h.slicer.mrmlScene
    return imageToNewVolumeNode(scene, fixed, "fixed"), imageToNewVolumeNode(scene, moving, "moving")


def choose(combo, node) -> bool:
    """A user picks ``node`` in a node selector; False when the selector is locked (greyed out)."""
    if not combo.isEnabled():
        return False
    combo.setCurrentNode(node)
    return True


def test_start_up_registers_both_samples_and_sets_no_process_wide_state(harness):
    assert harness.slotErrors == []
    names = [s.sampleName for s in harness.slicer.modules.sampleDataSources["MLVIRNET"]]
    assert names == ["MLVIRNETChestCT", "MLVIRNETBreathingPair"]
    assert "OMP_WAIT_POLICY" not in os.environ or os.environ.get("MLVIRNET_TEST_OMP_SET_BY_USER")


def test_the_chest_ct_sample_loads_through_sample_data_without_a_storage_node_in_the_extension(harness):
    import SampleData

    logic = SampleData.SampleDataLogic()
    nodes = logic.downloadFromSource(logic.sourceForSampleName("MLVIRNETChestCT"))
    assert len(nodes) == 1 and nodes[0].IsA("vtkMRMLScalarVolumeNode")
    assert nodes[0].GetImageData().GetDimensions() == (120, 126, 164)
    storage = nodes[0].GetStorageNode()
    assert storage is None or not storage.GetFileName().startswith(str(slicer_app.ROOT))


def test_the_breathing_pair_sample_loads_and_becomes_the_input(harness, panel):
    import SampleData

    source = SampleData.SampleDataLogic().sourceForSampleName("MLVIRNETBreathingPair")
    # what the Sample Data panel's button does
    nodes = source.customDownloader(source)
    assert [n.GetClassName() for n in nodes] == [
        "vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeNode", "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsFiducialNode"]
    assert nodes[2].GetNumberOfControlPoints() == nodes[3].GetNumberOfControlPoints() == 60
    assert all(n.GetStorageNode() is None for n in nodes)
    p = panel._parameterNode
    assert (p.fixedVolume, p.movingVolume, p.fixedLandmarks, p.movingLandmarks) == tuple(nodes)
    assert panel.ui.fixedVolumeSelector.currentNode() is nodes[0]
    assert panel.ui.applyButton.enabled


def test_the_panel_binds_every_parameter_and_selects_no_input_by_itself(harness, panel):
    fixed, moving = small_pair(harness)
    p = panel._parameterNode
    assert p.fixedVolume is None and p.movingVolume is None  # no auto-selection of the same volume twice
    assert not panel.ui.applyButton.enabled
    assert choose(panel.ui.fixedVolumeSelector, fixed) and choose(panel.ui.movingVolumeSelector, fixed)
    assert p.fixedVolume is fixed and p.movingVolume is fixed
    assert not panel.ui.applyButton.enabled and "same" in panel.ui.applyButton.toolTip
    choose(panel.ui.movingVolumeSelector, moving)
    assert panel.ui.applyButton.enabled
    panel.ui.presetComboBox.currentIndex = 0  # "Fast (network only)"
    assert p.preset == "Fast (network only)"
    panel.ui.refineIterationsSpinBox.value = 7
    assert p.refineIterations == 7


def _ready(h, panel, preset_index=0):
    fixed, moving = small_pair(h)
    choose(panel.ui.fixedVolumeSelector, fixed)
    choose(panel.ui.movingVolumeSelector, moving)
    panel.ui.presetComboBox.currentIndex = preset_index
    return fixed, moving


def _transforms(h):
    scene = h.slicer.mrmlScene
    return [scene.GetNthNodeByClass(i, "vtkMRMLTransformNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTransformNode"))]


def test_apply_gives_a_grid_transform_warped_and_jacobian_volumes_and_details(harness, panel):
    fixed, moving = _ready(harness, panel)
    scene = harness.slicer.mrmlScene
    warped = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    jacobian = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "jacobian")
    choose(panel.ui.outputVolumeSelector, warped)
    choose(panel.ui.jacobianVolumeSelector, jacobian)
    panel.ui.applyButton.click()
    assert harness.errors() == [] and harness.slotErrors == []
    transform = panel._parameterNode.outputTransform
    assert transform is not None and transform.IsA("vtkMRMLGridTransformNode")
    assert transform.GetNodeReferenceID(transform.GetFixedNodeReferenceRole()) == fixed.GetID()
    assert transform.GetNodeReferenceID(transform.GetMovingNodeReferenceRole()) == moving.GetID()
    assert moving.GetParentTransformNode() is transform
    assert warped.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    det = harness.slicer.util.arrayFromVolume(jacobian)
    assert det.dtype == np.float32 and 0.5 < float(np.median(det)) < 1.5
    display = jacobian.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 1.0)
    assert "Preset: fast" in panel.ui.detailsLabel.text and "Time:" in panel.ui.detailsLabel.text
    assert "Quality: " in panel.ui.detailsLabel.text and panel.logic.lastResult.quality is not None
    assert not hasattr(panel.logic.lastResult, "deformation")  # the field lives in the transform only
    assert qt_standins.QApplication.overrideCursors == []  # no app-wide wait cursor
    assert all(getattr(panel.ui, name).enabled for name in panel.LOCKED_WHILE_BUSY)


def test_an_output_that_is_an_input_is_refused_before_any_work(harness, panel):
    fixed, moving = _ready(harness, panel)
    choose(panel.ui.outputVolumeSelector, moving)
    before = harness.app.processEventsCalls
    panel.ui.applyButton.click()
    assert any("inputs are never overwritten" in e for e in harness.errors())
    assert harness.app.processEventsCalls == before  # nothing ran
    assert _transforms(harness) == [] and moving.GetParentTransformNode() is None


def test_a_selector_change_during_a_run_is_refused_and_the_result_goes_to_the_captured_nodes(harness, panel):
    fixed, moving = _ready(harness, panel)
    other = small_pair(harness, shift_mm=6.0)[1]
    attempts = []
    harness.app.postEvent(lambda: attempts.append(choose(panel.ui.movingVolumeSelector, other)))
    # a script could still change the parameter node: the run keeps what Apply captured
    harness.app.postEvent(lambda: setattr(panel._parameterNode, "movingVolume", other))
    panel.ui.applyButton.click()
    assert attempts == [False]  # the selector was locked
    transform = panel._parameterNode.outputTransform
    assert transform.GetNodeReferenceID(transform.GetMovingNodeReferenceRole()) == moving.GetID()
    assert moving.GetParentTransformNode() is transform and other.GetParentTransformNode() is None
    assert harness.errors() == []


def test_deleting_an_input_during_a_run_cancels_it_without_an_error(harness, panel):
    fixed, moving = _ready(harness, panel)
    harness.app.postEvent(lambda: harness.slicer.mrmlScene.RemoveNode(moving))
    panel.ui.applyButton.click()
    assert harness.errors() == [] and harness.slotErrors == []
    assert "moving volume was deleted" in panel.ui.statusLabel.text
    assert _transforms(harness) == []


def test_closing_the_scene_during_a_run_cancels_it_and_leaves_the_new_scene_empty(harness, panel):
    _ready(harness, panel)
    harness.app.postEvent(lambda: harness.slicer.mrmlScene.Clear(0))
    panel.ui.applyButton.click()
    assert harness.errors() == [] and harness.slotErrors == []
    assert "scene was closed" in panel.ui.statusLabel.text
    assert _transforms(harness) == []
    assert harness.slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_unloading_the_module_during_a_run_cancels_it(harness, panel):
    _ready(harness, panel)
    harness.app.postEvent(harness.unloadModule)
    panel.ui.applyButton.click()
    assert "module was unloaded" in panel.ui.statusLabel.text
    assert _transforms(harness) == [] and harness.errors() == []


def test_tre_through_fiducials_skips_missing_points_and_shows_a_table(harness, panel):
    scene = harness.slicer.mrmlScene
    fixed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    moving = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")
    for i in range(4):
        fixed.AddControlPoint([float(i), 0.0, 0.0], f"P{i}")
    for i in (3, 2, 1, 0):  # other order: paired by label
        moving.AddControlPoint([float(i), 1.0, 0.0], f"P{i}")
    moving.SetNthControlPointPositionMissing(0)  # P3 skipped while placing
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    panel._parameterNode.fixedLandmarks = fixed
    panel._parameterNode.movingLandmarks = moving
    panel.ui.computeTreButton.click()
    assert harness.errors() == []
    assert "1 landmark pair(s) with a missing point left out" in panel.ui.treResultLabel.text
    assert "1.00 ± 0.00 mm" in panel.ui.treResultLabel.text
    assert layout.GetViewArrangement() == layout.SlicerLayoutFourUpTableView
    assert panel._parameterNode.treTable.GetNumberOfRows() == 3


@pytest.fixture
def without_torch():
    """``import torch`` fails, as where PyTorch is not installed; the library is imported afresh.

    Every torch and library module is restored afterwards and the fresh ones are dropped.
    """
    owned = [n for n in sys.modules if n == "torch" or n.startswith(("torch.", "MLVIRNETLib"))]
    saved = {n: sys.modules.pop(n) for n in owned}
    sys.modules["torch"] = None
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n == "torch" or n.startswith(("torch.", "MLVIRNETLib"))]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_tre_needs_no_torch(harness, without_torch):
    from MLVIRNETLib.mrml.logic import RegistrationLogic

    scene = harness.slicer.mrmlScene
    fixed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    moving = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")
    fixed.AddControlPoint([0.0, 0.0, 0.0])
    moving.AddControlPoint([3.0, 4.0, 0.0])
    assert RegistrationLogic(scene).computeTRE(fixed, moving)["mean"] == pytest.approx(5.0)
    assert sys.modules["torch"] is None


def test_self_test_without_torch_reports_skips_only(harness, without_torch):
    harness.logRecords.clear()
    harness.slicer.selfTests["MLVIRNET"]()
    messages = [r.getMessage() for r in harness.logRecords]
    skipped = [m for m in messages if "skipped: PyTorch is not installed" in m]
    assert len(skipped) == 7, messages
    assert harness.errors() == []


def test_self_test_with_torch_passes(harness):
    harness.slicer.selfTests["MLVIRNET"]()  # raises on a failure
    messages = [r.getMessage() for r in harness.logRecords]
    assert any("Sample pair registered" in m for m in messages)
    assert any("Series registered: 2 phases" in m for m in messages)
    assert harness.errors() == []


# ----------------------------------------------------------------------------------------------
# the 4D-CT series section
# ----------------------------------------------------------------------------------------------
SHIFTS_MM = (0.0, 2.0, 4.0)


def phase_sequence(h):
    """A volume sequence in its browser, as Slicer loads a 4D-CT: the bundled CT at about 3 mm
    moved by :data:`SHIFTS_MM` towards the head (LPS z), one phase each."""
    import SimpleITK as sitk

    from MLVIRNETLib.mrml import updateVolumeNodeFromImage, volumeNodeToImage

    scene = h.slicer.mrmlScene
    fixed, moving = small_pair(h, shift_mm=0.0)
    image = volumeNodeToImage(fixed)
    scene.RemoveNode(fixed)
    scene.RemoveNode(moving)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "4D-CT")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("%")
    for k, shift in enumerate(SHIFTS_MM):
        moved = sitk.Image(image)
        moved.SetOrigin(tuple(np.asarray(image.GetOrigin()) + [0.0, 0.0, shift]))
        phase = h.slicer.vtkMRMLScalarVolumeNode()
        updateVolumeNodeFromImage(phase, moved)
        sequence.SetDataNodeAtValue(phase, str(50 * k))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "4D-CT browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    return sequence, browser


def _sequences(h):
    scene = h.slicer.mrmlScene
    return [scene.GetNthNodeByClass(i, "vtkMRMLSequenceNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode"))]


def test_the_series_section_gives_a_transform_sequence_browsed_with_the_phases(harness, panel):
    from MLVIRNETLib.core.geometry import ras_to_lps
    from MLVIRNETLib.mrml import transformPointsRas

    sequence, browser = phase_sequence(harness)
    layout = harness.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout.SetViewArrangement(layout.SlicerLayoutFourUpView)
    assert not panel.ui.seriesApplyButton.enabled
    assert choose(panel.ui.seriesSequenceSelector, sequence)
    panel.ui.seriesReferenceSpinBox.value = 0
    panel.ui.seriesJacobianCheckBox.checked = True
    panel.ui.presetComboBox.currentIndex = 0  # "Fast (network only)"
    assert panel._parameterNode.seriesJacobian and panel.ui.seriesApplyButton.enabled
    panel.ui.seriesApplyButton.click()
    assert harness.errors() == [] and harness.slotErrors == []
    assert "Series registered: 3 phases" in panel.ui.statusLabel.text
    transforms = [s for s in _sequences(harness) if s.GetName().endswith("MLVIRNET transforms")]
    assert len(transforms) == 1 and transforms[0].GetNumberOfDataNodes() == 3
    assert browser.IsSynchronizedSequenceNode(transforms[0], False)
    proxyTransform = browser.GetProxyNode(transforms[0])
    proxyVolume = browser.GetProxyNode(sequence)
    assert proxyVolume.GetParentTransformNode() is proxyTransform
    import vtk

    centre = np.asarray(proxyVolume.GetImageData().GetDimensions()) / 2.0
    ijkToRas = vtk.vtkMatrix4x4()
    proxyVolume.GetIJKToRASMatrix(ijkToRas)
    points = np.array([ijkToRas.MultiplyPoint([*(centre + offset), 1.0])[:3] for offset in
                       ([0, 0, 0], [5, 5, 5], [-5, 5, -5], [5, -5, 5])])
    for k, shift in enumerate(SHIFTS_MM):
        browser.SetSelectedItemNumber(k)
        motion = ras_to_lps(transformPointsRas(proxyTransform.GetTransformFromParent(), points)) - ras_to_lps(points)
        assert abs(float(np.median(motion[:, 2])) - shift) < 1.0, (k, motion)  # the phase's own shift
    selection = harness.app.applicationLogic().GetSelectionNode()
    assert selection.GetActiveTableID() and selection.GetActivePlotChartID()
    table = harness.slicer.mrmlScene.GetNodeByID(selection.GetActiveTableID())
    assert table.GetNumberOfRows() == 3
    assert layout.GetViewArrangement() == layout.SlicerLayoutFourUpPlotTableView
    assert all(getattr(panel.ui, name).enabled for name in panel.LOCKED_WHILE_BUSY)


def test_checked_phase_volumes_are_registered_as_a_series(harness, panel):
    """Several volumes checked in the panel (no sequence): a new volume sequence of them, browsed
    with the transform sequence; one checked volume is not a series, and unchecking goes back."""
    from MLVIRNETLib.mrml import volumeNodeToImage

    sequence, _ = phase_sequence(harness)
    scene = harness.slicer.mrmlScene
    volumes = []
    for k in range(sequence.GetNumberOfDataNodes()):
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"phase {k}")
        volume.Copy(sequence.GetNthDataNode(k))
        volume.SetName(f"phase {k}")
        volumes.append(volume)
    scene.RemoveNode(sequence)
    assert volumeNodeToImage(volumes[0]).GetSize() == volumeNodeToImage(volumes[2]).GetSize()
    selector = panel.ui.seriesVolumesSelector
    assert not panel.ui.seriesApplyButton.enabled
    selector.check(volumes[0])
    assert not panel.ui.seriesApplyButton.enabled  # one phase is not a series
    selector.check(volumes[1])
    selector.check(volumes[2])
    assert panel.ui.seriesApplyButton.enabled and "checked phase volume" in panel.ui.seriesApplyButton.toolTip
    panel.ui.presetComboBox.currentIndex = 0  # "Fast (network only)"
    panel._parameterNode.seriesReference = 0
    panel.ui.seriesApplyButton.click()
    assert harness.errors() == [] and harness.slotErrors == []
    assert "Series registered: 3 phases" in panel.ui.statusLabel.text
    made = {s.GetName(): s for s in _sequences(harness)}
    phases = next(s for name, s in made.items() if name.endswith("phases"))
    transforms = next(s for name, s in made.items() if name.endswith("MLVIRNET transforms"))
    assert phases.GetNumberOfDataNodes() == 3 and transforms.GetNumberOfDataNodes() == 3
    browsers = [scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
                for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode"))]
    browser = next(b for b in browsers if b.GetMasterSequenceNode() is phases)  # a new browser of the new sequence
    assert browser.IsSynchronizedSequenceNode(transforms, True)
    assert browser.GetProxyNode(phases).GetParentTransformNode() is browser.GetProxyNode(transforms)
    assert all(scene.IsNodePresent(v) for v in volumes)  # the inputs stay as they were
    selector.uncheck(volumes[1])
    selector.uncheck(volumes[2])
    assert not panel.ui.seriesApplyButton.enabled


def test_a_reference_out_of_range_is_refused_before_any_work(harness, panel):
    sequence, _ = phase_sequence(harness)
    choose(panel.ui.seriesSequenceSelector, sequence)
    panel._parameterNode.seriesReference = 3
    before = harness.app.processEventsCalls
    panel.ui.seriesApplyButton.click()
    assert any("out of range" in e for e in harness.errors())
    assert harness.app.processEventsCalls == before and len(_sequences(harness)) == 1


def test_deleting_the_sequence_during_a_series_run_cancels_it(harness, panel):
    sequence, browser = phase_sequence(harness)
    choose(panel.ui.seriesSequenceSelector, sequence)
    panel.ui.presetComboBox.currentIndex = 0
    harness.app.postEvent(lambda: harness.slicer.mrmlScene.RemoveNode(sequence))
    panel.ui.seriesApplyButton.click()
    assert harness.errors() == [] and harness.slotErrors == []
    assert "volume sequence was deleted" in panel.ui.statusLabel.text
    assert _sequences(harness) == [] and browser.GetNumberOfSynchronizedSequenceNodes() == 0


def test_closing_the_scene_during_a_series_run_cancels_it(harness, panel):
    sequence, _ = phase_sequence(harness)
    choose(panel.ui.seriesSequenceSelector, sequence)
    panel.ui.presetComboBox.currentIndex = 0
    harness.app.postEvent(lambda: harness.slicer.mrmlScene.Clear(0))
    panel.ui.seriesApplyButton.click()
    assert harness.errors() == [] and harness.slotErrors == []
    assert "scene was closed" in panel.ui.statusLabel.text
    assert _sequences(harness) == [] and harness.slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode") == 0


def test_a_scene_saved_without_the_series_settings_loads_with_their_defaults(harness, panel):
    """A scene written before the series section existed: its parameter node lacks the series
    parameters; loading it gives their defaults and keeps the saved ones."""
    scene = harness.slicer.mrmlScene
    panel.ui.presetComboBox.currentIndex = 0
    node = panel._parameterNode.parameterNode
    assert node.GetParameter("seriesReference") == "0"
    scene.SetSaveToXMLString(1)
    scene.Commit()
    xml = scene.GetSceneXMLString()
    older = re.sub(r' parameter\d+= "series\w+ [^"]*"', "", xml)  # the module node as an older module wrote it
    assert older != xml and "series" not in older and '"preset Fast (network only)"' in older
    scene.Clear(0)
    scene.SetLoadFromXMLString(1)
    scene.SetSceneXMLString(older)
    scene.Import()
    p = harness.module.MLVIRNETLogic().getParameterNode()
    assert p.preset == "Fast (network only)"  # kept from the file
    assert (p.seriesSequence, p.seriesReference, p.seriesJacobian) == (None, 0, False)
    assert harness.errors() == [] and harness.slotErrors == []
