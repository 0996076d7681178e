"""The 4D-CT series through the Slicer Logic (``RegistrationLogic.registerSequence``) on real MRML.

A 3-phase sequence made from the bundled CT at about 3 mm with known synthetic breathing (0, 3 and
6 mm, ``helpers.synthetic_4dct``) is registered once with small settings; the sequence browser
and the Sequences module's logic are the real ones of the ``slicer-core`` wheel.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[slicer]')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core (no vtkMRMLScene)", allow_module_level=True)

from helpers import synthetic_4dct  # noqa: E402

from MLVIRNETLib import mrml as L  # noqa: E402
from MLVIRNETLib.core.geometry import lps_to_ras, ras_to_lps  # noqa: E402
from MLVIRNETLib.core.progress import RegistrationCancelled  # noqa: E402
from MLVIRNETLib.evaluation.motion import SUMMARY_COLUMNS  # noqa: E402
from MLVIRNETLib.registration.presets import options_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INDEX_VALUES = ["0", "33.3", "66.7"]


def fast_options():
    """The shipped network on a 32^3 grid, no refinement."""
    return options_for("fast", grid={"size": (32, 32, 32)})


def tiny_options():
    """No network, two refinement iterations per level, no affine stage: the plumbing only."""
    return options_for("standard", grid={"size": (32, 32, 32)}, refinement={"iterations": 2}, affine=None)


@pytest.fixture(scope="module")
def case():
    """``(phases, truths, points)``: 3 phases at 0, 3 and 6 mm of synthetic breathing."""
    phases, truths, _, points = synthetic_4dct(n_phases=4, peak_mm=6.0, n_landmarks=20)
    return phases[:3], truths[:3], points[:3]


def new_scene():
    """A scene with the Sequences module's logic, as Slicer sets it up (it registers the browser node)."""
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    scene._sequencesLogic = logic  # kept alive with the scene
    return scene


def volume_sequence(scene, phases, browse: bool = True):
    """A volume sequence as Slicer loads a 4D-CT: index "time" in %, one scalar volume per phase."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "4D-CT")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("%")
    sequence.SetIndexType(sequence.NumericIndex)
    for value, image in zip(INDEX_VALUES, phases):
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(f"4D-CT {value}")
        L.updateVolumeNodeFromImage(node, image)
        sequence.SetDataNodeAtValue(node, value)
    browser = None
    if browse:
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "4D-CT browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    return sequence, browser


def snapshot(scene) -> list[tuple[str, str]]:
    return [(scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName()) for i in range(scene.GetNumberOfNodes())]


@pytest.fixture(scope="module")
def run(case):
    """One registration of the sequence (reference = phase 0, with the Jacobian sequence)."""
    scene = new_scene()
    sequence, browser = volume_sequence(scene, case[0])
    logic = L.RegistrationLogic(scene)
    reports = []
    nodes = logic.registerSequence(sequence, 0, jacobian=True, device="cpu", options=fast_options(),
                                   progressCallback=lambda f, m: reports.append((f, m)))
    return scene, sequence, browser, logic, nodes, reports


def points_inside_lungs(points) -> np.ndarray:
    return np.asarray(points[0])  # the reference phase's landmarks, in the lungs


def mapped(transformNode, pointsLps) -> np.ndarray:
    return ras_to_lps(L.transformPointsRas(transformNode.GetTransformFromParent(), lps_to_ras(pointsLps)))


def test_the_transform_sequence_has_one_grid_transform_per_phase_indexed_like_the_volumes(run):
    scene, sequence, _, _, nodes, reports = run
    transforms = nodes.transformSequence
    assert transforms.GetNumberOfDataNodes() == 3
    assert [transforms.GetNthIndexValue(i) for i in range(3)] == INDEX_VALUES
    assert (transforms.GetIndexName(), transforms.GetIndexUnit(), transforms.GetIndexType()) == ("time", "%", sequence.NumericIndex)
    assert all(transforms.GetNthDataNode(i).IsA("vtkMRMLGridTransformNode") for i in range(3))
    reference = L.gridTransformToDeformation(transforms.GetNthDataNode(0).GetTransformFromParent())
    assert float(reference.displacement.abs().max()) == 0.0  # the reference phase: the identity
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and reports[-1] == (1.0, "Done")
    assert any("(2/3)" in m for _, m in reports)


def test_the_browser_synchronises_both_sequences_and_the_proxy_follows_the_phase(run, case):
    scene, sequence, browser, _, nodes, _ = run
    assert nodes.browser is browser and nodes.volumeSequence is sequence  # the input's own browser
    assert browser.IsSynchronizedSequenceNode(nodes.transformSequence, False)
    proxyVolume = browser.GetProxyNode(sequence)
    assert nodes.proxyTransform is browser.GetProxyNode(nodes.transformSequence)
    assert proxyVolume.GetParentTransformNode() is nodes.proxyTransform  # each phase shown aligned
    points = points_inside_lungs(case[2])
    for k in (2, 1, 0):
        browser.SetSelectedItemNumber(k)
        expected = mapped(nodes.transformSequence.GetNthDataNode(k), points)
        np.testing.assert_allclose(mapped(nodes.proxyTransform, points), expected, atol=1e-6)
        assert np.array_equal(L.arrayFromVolumeNode(proxyVolume), L.arrayFromVolumeNode(sequence.GetNthDataNode(k)))
        assert proxyVolume.GetParentTransformNode() is nodes.proxyTransform


def test_each_phase_transform_is_the_single_pair_result_and_follows_the_known_motion(run, case):
    scene, sequence, _, logic, nodes, _ = run
    phases, truths, points = case
    reference = L.imageToNewVolumeNode(scene, phases[0], "reference")
    phase = L.imageToNewVolumeNode(scene, phases[2], "phase 2")
    try:
        single = logic.register(reference, phase, device="cpu", options=fast_options())
        inside = points_inside_lungs(points)
        series = mapped(nodes.transformSequence.GetNthDataNode(2), inside)
        np.testing.assert_allclose(series, mapped(single, inside), atol=1e-3)
        before = np.linalg.norm(points[2] - inside, axis=1).mean()
        after = np.linalg.norm(series - points[2], axis=1).mean()
        assert before > 1.5 and after < 0.5 * before, (before, after)
    finally:
        for node in (reference, phase, single):
            scene.RemoveNode(node)


def test_the_jacobian_sequence_is_browsed_and_shown_like_the_single_pair_jacobian(run):
    _, _, browser, _, nodes, _ = run
    jacobians = nodes.jacobianSequence
    assert jacobians.GetNumberOfDataNodes() == 3 and browser.IsSynchronizedSequenceNode(jacobians, False)
    assert np.all(L.arrayFromVolumeNode(jacobians.GetNthDataNode(0)) == 1.0)  # identity: no volume change
    moved = L.arrayFromVolumeNode(jacobians.GetNthDataNode(2))
    assert moved.dtype == np.float32 and 0.5 < float(np.median(moved)) < 1.5 and np.ptp(moved) > 0.01
    display = browser.GetProxyNode(jacobians).GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (1.0, 1.0, 0)


def test_the_motion_table_has_a_row_per_phase_and_the_charts_plot_it(run):
    _, _, _, _, nodes, _ = run
    table = nodes.table
    assert table.GetNumberOfRows() == 3
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)
    assert [table.GetCellText(r, columns.index("phase")) for r in range(3)] == ["time 0", "time 33.3", "time 66.7"]
    volumes = column(table, "lung_volume_jacobian_ml")
    np.testing.assert_allclose(volumes, [r.lung_volume_jacobian_ml for r in nodes.summary.rows], rtol=1e-6)
    excursion = column(table, "si_excursion_mm")
    assert excursion[0] == 0.0 and abs(excursion[2]) > abs(excursion[1]) > 0.5  # the 6 mm phase moves most
    assert table.GetAttribute("MLVIRNET.EndInhale") == nodes.summary.end_inhale
    assert set(nodes.charts) == {"breathing", "excursion"}
    for key, name in (("breathing", "lung_volume_jacobian_ml"), ("excursion", "si_excursion_mm")):
        chart = nodes.charts[key]
        series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
        assert [s.GetYColumnName() for s in series] == [name, f"flagged_{name}", f"end_inhale_{name}", f"end_exhale_{name}"]
        assert series[2].GetMarkerStyle() != series[3].GetMarkerStyle()  # the two extremes read apart
        assert all(s.GetTableNode() is table and s.GetXColumnName() == "index" for s in series)


def column(table, name: str) -> np.ndarray:
    array = table.GetTable().GetColumnByName(name)
    return np.array([array.GetValue(r) for r in range(array.GetNumberOfTuples())], dtype=float)


def test_a_flagged_phase_gets_a_value_in_the_flagged_columns_only():
    from MLVIRNETLib.evaluation.motion import PhaseMotion, SeriesSummary
    from MLVIRNETLib.mrml.motion_nodes import fillMotionTable

    rows = [PhaseMotion(k, f"p{k}", k == 0, 3000.0 + k, None, None, 0.0, 0.0, 0.0, -k, 0.0) for k in range(3)]
    rows[2].flagged, rows[2].flag_reason = True, "lung volume jumps"
    table = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLTableNode")
    fillMotionTable(table, SeriesSummary(rows, "p0", "p2", "p0", {"p2": "lung volume jumps"}))
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    flagged = column(table, "flagged_lung_volume_jacobian_ml")
    assert np.isnan(flagged[:2]).all() and flagged[2] == 3002.0
    inhale, exhale = column(table, "end_inhale_si_excursion_mm"), column(table, "end_exhale_lung_volume_jacobian_ml")
    assert np.isnan(inhale[:2]).all() and inhale[2] == -2.0  # end-inhale p2
    assert exhale[0] == 3000.0 and np.isnan(exhale[1:]).all()  # end-exhale p0
    assert table.GetCellText(2, columns.index("flag_reason")) == "lung volume jumps"
    assert np.isnan(column(table, "lung_volume_mask_ml")).all()  # None -> NaN
    assert column(table, "reference").tolist() == [1.0, 0.0, 0.0]  # booleans -> 0/1


def test_a_list_of_volumes_is_browsed_as_a_new_volume_sequence(case):
    scene = new_scene()
    volumes = [L.imageToNewVolumeNode(scene, image, f"phase {k}") for k, image in enumerate(case[0][:2])]
    nodes = L.RegistrationLogic(scene).registerSequence(volumes, 1, model=L.NO_MODEL, device="cpu", options=tiny_options())
    assert nodes.volumeSequence.GetNumberOfDataNodes() == 2 and nodes.transformSequence.GetNumberOfDataNodes() == 2
    assert nodes.browser.GetMasterSequenceNode() is nodes.volumeSequence
    assert nodes.browser.IsSynchronizedSequenceNode(nodes.transformSequence, False)
    reference = L.gridTransformToDeformation(nodes.transformSequence.GetNthDataNode(1).GetTransformFromParent())
    assert float(reference.displacement.abs().max()) == 0.0
    assert all(v.GetParentTransformNode() is None for v in volumes)  # the inputs are left as they were


BAD = {
    "a sequence of transforms": lambda scene, volumes: _transformSequence(scene),
    "one phase": lambda scene, volumes: volumes[:1],
    "the reference out of range": lambda scene, volumes: (volumes, 2),
    "a negative reference": lambda scene, volumes: (volumes, -1),
    "a boolean reference": lambda scene, volumes: (volumes, True),
    "the same volume twice": lambda scene, volumes: [volumes[0], volumes[0]],
    "a labelmap phase": lambda scene, volumes: [volumes[0], scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")],
    "a phase without voxels": lambda scene, volumes: [volumes[0], scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")],
    "not a node": lambda scene, volumes: "4D-CT",
}
MESSAGES = {
    "a sequence of transforms": "must be a scalar volume", "one phase": "at least 2 phases",
    "the reference out of range": "out of range", "a negative reference": "out of range",
    "a boolean reference": "out of range", "the same volume twice": "twice",
    "a labelmap phase": "scalar volume", "a phase without voxels": "no voxels", "not a node": "volume sequence node",
}


def _transformSequence(scene):
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "transforms")
    for k in range(3):
        sequence.SetDataNodeAtValue(slicer.vtkMRMLLinearTransformNode(), str(k))
    return sequence


@pytest.mark.parametrize("what", list(BAD))
def test_bad_input_is_one_error_before_any_node_is_made(case, what, monkeypatch):
    import MLVIRNETLib.registration.series as series

    monkeypatch.setattr(series, "register_series", lambda *a, **k: pytest.fail("work started"))
    scene = new_scene()
    volumes = [L.imageToNewVolumeNode(scene, image, f"phase {k}") for k, image in enumerate(case[0][:2])]
    given = BAD[what](scene, volumes)
    phases, reference = given if isinstance(given, tuple) else (given, 0)
    before = snapshot(scene)
    with pytest.raises(ValueError, match=MESSAGES[what]):
        L.RegistrationLogic(scene).registerSequence(phases, reference)
    assert snapshot(scene) == before


def test_a_scene_without_the_sequences_module_is_refused_before_any_work(case):
    scene = slicer.vtkMRMLScene()  # no sequences logic: no browser node class
    volumes = [L.imageToNewVolumeNode(scene, image, f"phase {k}") for k, image in enumerate(case[0][:2])]
    with pytest.raises(ValueError, match="Sequences module"):
        L.RegistrationLogic(scene).registerSequence(volumes, 0)


@pytest.mark.parametrize("stage", ["Reading the phases", "(reference): lung mask", "(2/3): reading", "Creating the sequences"])
def test_cancel_in_any_stage_creates_nothing(case, stage, monkeypatch):
    monkeypatch.setattr("MLVIRNETLib.mrml.series.PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr("MLVIRNETLib.mrml.worker.PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr("MLVIRNETLib.mrml.worker.POLL_INTERVAL_S", 0.01)
    scene = new_scene()
    sequence, browser = volume_sequence(scene, case[0])
    logic = L.RegistrationLogic(scene)
    before = snapshot(scene)
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message.endswith(stage):
            logic.cancel("test")

    with pytest.raises(RegistrationCancelled):
        logic.registerSequence(sequence, 0, model=L.NO_MODEL, device="cpu", options=tiny_options(), progressCallback=progress)
    assert any(m.endswith(stage) for m in seen)
    assert snapshot(scene) == before
    assert browser.GetNumberOfSynchronizedSequenceNodes() == 0
    assert logic.cancelReason == "test"


def test_the_sequence_deleted_during_the_run_creates_nothing(case):
    scene = new_scene()
    sequence, _ = volume_sequence(scene, case[0][:2], browse=False)
    logic = L.RegistrationLogic(scene)
    removed = []

    def progress(fraction, message):
        if not removed and "(2/2)" in message:
            removed.append(scene.RemoveNode(sequence))

    with pytest.raises(ValueError, match="removed from the scene"):
        logic.registerSequence(sequence, 0, model=L.NO_MODEL, device="cpu", options=tiny_options(), progressCallback=progress)
    assert removed and snapshot(scene) == []
