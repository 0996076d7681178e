"""Cancel in every stage of ``register()``: at the stage's start and from inside it, the run stops there."""

from __future__ import annotations

import pytest
import torch

from MLVIRNETLib.core.progress import Progress, RegistrationCancelled
from MLVIRNETLib.networks import MultilevelNet
from MLVIRNETLib.registration import RegistrationOptions, register

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES = ["lung masks", "affine pre-alignment", "preprocessing", "network", "refinement", "full-resolution field"]
"""The stages of ``register()``, in order."""

INNER = {
    "lung masks": "lung mask:",
    "affine pre-alignment": "affine",
    "preprocessing": "preprocessing:",
    "network": "network: convolution",
    "refinement": "refine 1/",
    "full-resolution field": "full-resolution field:",
}
"""What a stage reports from inside its work (the start of those messages)."""


@pytest.fixture
def pair(breathing_pair_3mm):
    """The bundled CT at about 3 mm and a 10 mm synthetic-breathing partner (conftest)."""
    return breathing_pair_3mm


def run(pair, on_report):
    """``register`` with every report passed to ``on_report(message, stop)``; ``stop()`` asks to cancel."""
    stop = {"now": False}
    torch.manual_seed(0)
    net = MultilevelNet(levels=2, features=4, depth=2)
    options = RegistrationOptions(grid={"size": (32, 32, 32)}, refinement={"iterations": (6, 4)},
                                  runtime={"num_threads": 1, "slab_voxels": 60 * 63 * 16})
    progress = Progress(lambda f, m: on_report(m, lambda: stop.update(now=True)), lambda: stop["now"],
                        min_interval_s=0.0)
    return register(pair[0], pair[1], model=net, device="cpu", options=options, progress=progress)


def test_every_stage_starts_in_order_and_reports_from_inside(pair):
    seen = []
    run(pair, lambda m, stop: seen.append(m))
    assert [m for m in seen if m in STAGES] == STAGES
    for stage, prefix in INNER.items():
        if prefix is not None:
            inside = seen[seen.index(stage) + 1:]
            assert sum(m.startswith(prefix) for m in inside) >= 2, f"{stage} does not report from inside"


@pytest.mark.parametrize("stage", STAGES)
def test_cancel_at_the_start_of_a_stage_stops_it(pair, stage):
    seen = []

    def on_report(message, stop):
        seen.append(message)
        if message == stage:
            stop()

    with pytest.raises(RegistrationCancelled):
        run(pair, on_report)
    assert seen[-1] == stage  # not one more report: the request is checked before the next one


@pytest.mark.parametrize("stage", [s for s, prefix in INNER.items() if prefix is not None])
def test_cancel_inside_a_stage_stops_it_before_its_end(pair, stage):
    seen = []
    state = {"in_stage": False, "inside": 0}

    def on_report(message, stop):
        seen.append(message)
        if message in STAGES:
            state["in_stage"] = message == stage
        elif state["in_stage"] and message.startswith(INNER[stage]):
            state["inside"] += 1
            if state["inside"] == 2:
                stop()

    with pytest.raises(RegistrationCancelled):
        run(pair, on_report)
    assert state["inside"] == 2 and seen[-1].startswith(INNER[stage])
