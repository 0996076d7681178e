"""The network-alone path of ``register()`` (no refinement): the identity check and the second
pass with the images swapped (``network_both_ways_fallback``)."""

from __future__ import annotations

import pytest
import torch
from helpers import bundled_ct_3mm

from MLVIRNETLib.core.progress import Progress, RegistrationCancelled
from MLVIRNETLib.evaluation.metrics import tre
from MLVIRNETLib.networks import MultilevelNet
from MLVIRNETLib.registration import RegistrationOptions, preset_options, register
from MLVIRNETLib.simulation.cases import synthetic_breathing_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SWAPPED = "network, images swapped"
"""The stage report of the second pass."""


def test_a_small_motion_is_found_by_the_network_run_both_ways() -> None:
    """#13: 3 mm of breathing is smaller than what the shipped network one way adds by itself, so its
    deformation fits worse than no motion. The identity would leave the initial error (0.75 mm of
    1.13 here, after the affine stage); the two directions averaged leave 0.14 mm."""
    case = synthetic_breathing_case(bundled_ct_3mm(), peak_mm=3.0, n_landmarks=60, seed=1)
    reports: list[str] = []
    result = register(case.fixed, case.moving, case.lungs, options=preset_options("fast"),
                      progress=Progress(lambda f, m: reports.append(m), min_interval_s=0.0))
    assert any("kept the network run both ways" in m for m in result.messages), result.messages
    assert SWAPPED in reports
    before = tre(case.fixed_points, case.moving_points).mean
    after = tre(case.fixed_points, case.moving_points, result.deformation).mean
    assert after < 0.25 * before, (before, after)


def _random_net(head_scale: float = 1.0) -> MultilevelNet:
    """An untrained cascade (its output layers scaled by ``head_scale``): one way, its deformation fits
    an image registered to itself worse than no motion (1.7 mm at most here; 18 mm scaled by 10)."""
    torch.manual_seed(0)
    net = MultilevelNet(levels=2, features=4, depth=2)
    with torch.no_grad():
        for level in net.nets:
            level.head.weight.mul_(head_scale)
    return net


@pytest.mark.parametrize("fallback,symmetric,head_scale,said", [
    # both ways the bias cancels (0.0007 mm at most here): that or the identity, whichever fits
    # better by a hair, is kept
    (True, False, 1.0, ("kept the network run both ways", "one way and both ways; kept the identity")),
    (True, False, 10.0, ("one way and both ways; kept the identity",)),
    (False, False, 1.0, ("than no motion; kept the identity",)),
    (True, True, 10.0, ()),  # already both ways on every level: no second pass, whatever is kept
])
def test_what_fits_worse_than_no_motion_gives_way(breathing_pair_3mm, fallback: bool, symmetric: bool,
                                                   head_scale: float, said: tuple[str, ...]) -> None:
    fixed = breathing_pair_3mm[0]
    reports: list[str] = []
    options = RegistrationOptions(grid={"size": (32, 32, 32)}, refinement={"iterations": 0},
                                  network={"both_ways_fallback": fallback})
    if symmetric:
        with pytest.warns(DeprecationWarning, match="network_symmetric"):  # experimental: no preset uses it
            options = RegistrationOptions(grid={"size": (32, 32, 32)}, refinement={"iterations": 0},
                                          network={"both_ways_fallback": fallback}, network_symmetric=True)
    result = register(fixed, fixed, model=_random_net(head_scale), device="cpu", options=options,
                      progress=Progress(lambda f, m: reports.append(m), min_interval_s=0.0))
    assert not said or any(text in m for m in result.messages for text in said), result.messages
    assert (SWAPPED in reports) == (fallback and not symmetric)
    assert float(result.deformation.displacement.abs().max()) < 0.01
    # the network's own one-way output stays in the result's levels
    assert float(result.level_deformations[-1].displacement.abs().max()) > 1.0


def test_cancel_inside_the_second_pass_stops_it(breathing_pair_3mm) -> None:
    fixed = breathing_pair_3mm[0]
    stop = {"now": False, "inside": 0, "in_pass": False}

    def on_report(_fraction: float, message: str) -> None:
        if message == SWAPPED:
            stop["in_pass"] = True
        elif stop["in_pass"] and message.startswith(f"{SWAPPED}: convolution"):
            stop["inside"] += 1
            stop["now"] = stop["inside"] == 2

    with pytest.raises(RegistrationCancelled):
        register(fixed, fixed, model=_random_net(), device="cpu",
                 options=RegistrationOptions(grid={"size": (32, 32, 32)}, refinement={"iterations": 0}),
                 progress=Progress(on_report, lambda: stop["now"], min_interval_s=0.0))
    assert stop["inside"] == 2


def test_the_fallback_option_is_checked() -> None:
    with pytest.raises(ValueError, match="network.both_ways_fallback must be true or false, got 'yes'"):
        RegistrationOptions(network={"both_ways_fallback": "yes"})
    assert RegistrationOptions().network.both_ways_fallback is True
