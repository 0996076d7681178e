"""Cancel through the Slicer Logic in every stage, on real MRML: the run stops and the scene stays as it was.

The library works in a worker thread while the calling thread passes its reports on, so the stage
a report names may already be over when the callback sees it; that a cancel stops the work inside
the stage it is requested in is tested in the library, in one thread
(``Testing/registration/test_cancel.py``).
"""

from __future__ import annotations

import pytest
import torch

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[slicer]')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core (no vtkMRMLScene)", allow_module_level=True)

from MLVIRNETLib import mrml as L  # noqa: E402
from MLVIRNETLib.core.progress import RegistrationCancelled  # noqa: E402
from MLVIRNETLib.networks import MultilevelNet  # noqa: E402
from MLVIRNETLib.registration import RegistrationOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES = [
    "Reading volumes",
    "lung masks",
    "affine pre-alignment",
    "preprocessing",
    "network",
    "refinement",
    "full-resolution field",
    "Creating the grid transform",
]
"""Every stage of ``RegistrationLogic.register`` (the Logic's own first and last, ``register()``'s between)."""

INNER = {
    "affine pre-alignment": "affine",
    "network": "network: convolution",
    "refinement": "refine 1/",
    "full-resolution field": "full-resolution field",
    "Creating the grid transform": "grid transform",
}
"""Stages that report from inside their work, and the start of those messages."""


@pytest.fixture
def pair(breathing_pair_3mm):
    """The bundled CT at about 3 mm and a 10 mm synthetic-breathing partner (conftest)."""
    return breathing_pair_3mm


def snapshot(scene) -> list[tuple[str, str, int]]:
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [(n.GetID(), n.GetClassName(), n.GetMTime()) for n in nodes]


def run(pair, on_progress, monkeypatch):
    """Register through the Logic with every report forwarded (no throttling); returns what it needs."""
    monkeypatch.setattr("MLVIRNETLib.mrml.logic.PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr("MLVIRNETLib.mrml.worker.PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr("MLVIRNETLib.mrml.worker.POLL_INTERVAL_S", 0.01)
    scene = slicer.vtkMRMLScene()
    logic = L.RegistrationLogic(scene)
    fixed = L.imageToNewVolumeNode(scene, pair[0], "fixed")
    moving = L.imageToNewVolumeNode(scene, pair[1], "moving")
    torch.manual_seed(0)
    net = MultilevelNet(levels=2, features=4, depth=2)
    # small slabs, as a 512 x 512 scan gets with the default slab size
    options = RegistrationOptions(grid={"size": (32, 32, 32)}, refinement={"iterations": (6, 4)}, runtime={"num_threads": 1, "slab_voxels": 60 * 63 * 16})
    # an earlier result in the output transform: a cancelled run must leave it as it is
    output = logic.register(fixed, moving, model=net, device="cpu", options=options)
    before = L.gridTransformToDeformation(output.GetTransformFromParent()).displacement.clone()
    state = snapshot(scene)

    def call():
        return logic.register(fixed, moving, output, model=net, device="cpu", options=options,
                              progressCallback=lambda f, m: on_progress(logic, f, m))

    return scene, output, before, state, call


def test_every_stage_reports_and_inner_stages_report_often(pair, monkeypatch):
    messages = []
    _, _, _, _, call = run(pair, lambda logic, f, m: messages.append((f, m)), monkeypatch)
    call()
    texts = [m for _, m in messages]
    starts = [m for i, m in enumerate(texts) if m in STAGES and (i == 0 or texts[i - 1] != m)]
    assert starts == STAGES
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for stage, prefix in INNER.items():
        assert sum(m.startswith(prefix) and m != stage for m in texts) >= 2, f"{stage} does not report from inside"


@pytest.mark.parametrize("stage", STAGES)
def test_cancel_at_the_start_of_a_stage_stops_there_and_changes_nothing(pair, monkeypatch, stage):
    seen = []

    def on_progress(logic, fraction, message):
        seen.append(message)
        if message == stage:
            logic.cancel()

    scene, output, before, state, call = run(pair, on_progress, monkeypatch)
    with pytest.raises(RegistrationCancelled):
        call()
    assert stage in seen
    assert snapshot(scene) == state
    torch.testing.assert_close(L.gridTransformToDeformation(output.GetTransformFromParent()).displacement, before,
                               rtol=0, atol=0)
