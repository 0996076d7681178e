"""register_series: a generated 4D-CT with known motion per phase, the same result as one pair at a
time, the model read once, progress and cancel across the phases, bad arguments refused up front."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MLVIRNETLib.core.progress import RegistrationCancelled
from MLVIRNETLib.evaluation.motion import phase_motion
from MLVIRNETLib.networks import model_files
from MLVIRNETLib.networks.cascade import NetworkConfig, build_network
from MLVIRNETLib.registration import options_for, register
from MLVIRNETLib.registration.series import register_series

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = options_for("standard", refinement={"iterations": (10, 5)}, grid={"max_voxels": 32})
"""Refinement alone on a 32-voxel working grid: a quick registration of the 3 mm CT."""


@pytest.fixture(scope="module")
def registered(synthetic_4dct_3mm):
    phases, truths, lungs, points = synthetic_4dct_3mm
    out = []
    for r in register_series(phases, 0, model=None, device="cpu", options=QUICK):
        out.append((r, phase_motion(r.deformation, r.reference_mask, r.phase_mask, index=r.index,
                                    reference=r.is_reference, landmarks=(points[0], points[r.index]))))
    return out


def test_every_phase_follows_its_known_motion(synthetic_4dct_3mm, registered) -> None:
    phases, truths, lungs, points = synthetic_4dct_3mm
    assert [r.index for r, _ in registered] == [0, 1, 2, 3]
    ref, ref_row = registered[0]
    assert ref.is_reference and ref.result is None and float(ref.deformation.displacement.abs().max()) == 0.0
    assert ref_row.tre_mean_mm == 0.0 and ref_row.lung_dice == 1.0
    for (r, row), truth in zip(registered[1:], truths[1:]):
        analytic = float(np.linalg.norm(points[r.index] - points[0], axis=1).mean())  # no motion: the truth's |u|
        assert row.tre_before_mm == pytest.approx(analytic, rel=1e-9)
        assert row.tre_mean_mm < 0.6 * row.tre_before_mm, (r.name, row.tre_before_mm, row.tre_mean_mm)
        true_row = phase_motion(truth, lungs, None)
        # inhaling: the lungs grow and their base moves down (LPS z decreases), as in the truth
        assert row.lung_volume_jacobian_ml > ref_row.lung_volume_jacobian_ml
        assert row.lung_volume_jacobian_ml == pytest.approx(true_row.lung_volume_jacobian_ml, rel=0.02)
        assert true_row.si_excursion_mm < 0 and row.si_excursion_mm < 0.5 * true_row.si_excursion_mm
        assert row.lung_dice > 0.95 and r.result.quality.ok
    # the breathing curve: phase 2 (6 mm) moves most; phases 1 and 3 are the same image
    assert registered[2][1].tre_before_mm > registered[1][1].tre_before_mm
    assert torch.equal(registered[1][0].deformation.displacement, registered[3][0].deformation.displacement)


def test_a_phase_gets_what_one_pair_registration_gives(synthetic_4dct_3mm, registered) -> None:
    phases = synthetic_4dct_3mm[0]
    single = register(phases[0], phases[2], model=None, device="cpu", options=QUICK)
    assert torch.allclose(single.deformation.displacement, registered[2][0].deformation.displacement, atol=1e-5)


def test_the_model_is_read_once_and_gives_the_pair_result(synthetic_4dct_3mm, tmp_path, monkeypatch) -> None:
    phases = synthetic_4dct_3mm[0][:3]
    torch.manual_seed(0)
    config = NetworkConfig(levels=2, features=4, depth=2, input_size=(16, 16, 16))
    path = model_files.save_model(tmp_path / "tiny.pt", build_network(config).eval(), config, {})
    reads = []
    real_load = model_files.load_model
    monkeypatch.setattr(model_files, "load_model", lambda *a, **k: reads.append(a) or real_load(*a, **k))
    fast = options_for("fast")
    results = [r for r in register_series(phases, 0, model=path, device="cpu", options=fast)]
    assert len(reads) == 1
    single = register(phases[0], phases[1], model=path, device="cpu", options=fast)
    assert torch.allclose(single.deformation.displacement, results[1].deformation.displacement, atol=1e-5)
    assert results[1].result.model_used == str(path)


def test_progress_spans_the_series_and_cancel_stops_between_phases(synthetic_4dct_3mm) -> None:
    phases = synthetic_4dct_3mm[0][:3]
    reports: list[tuple[float, str]] = []
    stop = {"now": False}
    series = register_series(phases, 1, names=["T00", "T10", "T20"], model=None, device="cpu", options=QUICK,
                             progress=lambda f, m: reports.append((f, m)), cancel=lambda: stop["now"])
    first = next(series)
    assert (first.index, first.name) == (0, "T00") and not first.is_reference
    assert reports[0][1].startswith("T10 (reference): lung mask")
    assert any(m.startswith("T00 (1/3): ") and "refine" in m for _, m in reports)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and 0.3 < fractions[-1] < 0.4  # one phase of three done
    second = next(series)
    assert second.is_reference and second.name == "T10"
    stop["now"] = True
    with pytest.raises(RegistrationCancelled):
        next(series)


def test_cancel_is_heard_while_a_phase_lung_mask_is_made(synthetic_4dct_3mm) -> None:
    phases = synthetic_4dct_3mm[0][:2]
    reports: list[str] = []
    series = register_series(phases, 0, names=["T00", "T10"], which=[1], model=None, device="cpu", options=QUICK,
                             progress=lambda f, m: reports.append(m),
                             cancel=lambda: any(m.startswith("T10 (1/1): lung mask") for m in reports))
    with pytest.raises(RegistrationCancelled) as stopped:
        next(series)
    assert "T10 (1/1): lung mask" in reports  # stopped in the lung mask, before the registration began
    assert any(entry.path.name == "lungmask.py" for entry in stopped.traceback)


def test_the_reference_gets_no_phase_mask_when_none_is_asked_for(synthetic_4dct_3mm) -> None:
    phases = synthetic_4dct_3mm[0][:2]
    (item,) = register_series(phases, 0, which=[0], phase_masks=False, model=None, device="cpu", options=QUICK)
    assert item.is_reference and item.phase_mask is None and item.reference_mask is not None


def test_which_registers_only_the_phases_asked_for(synthetic_4dct_3mm) -> None:
    phases = synthetic_4dct_3mm[0]
    read = []
    loaders = [lambda k=k: read.append(k) or phases[k] for k in range(4)]
    got = [r.index for r in register_series(loaders, 0, which=[2], model=None, device="cpu", options=QUICK,
                                            phase_masks=False)]
    assert got == [2] and sorted(set(read)) == [0, 2]


@pytest.mark.parametrize("kwargs, message", [
    ({"reference": 4}, "reference phase 4 is out of range: the series has 4 phases (0..3)"),
    ({"names": ["a", "b", "a", "c"]}, "phase names must be unique"),
    ({"names": ["a", "b"]}, "2 names for 4 phases"),
    ({"which": [0, 7]}, "phase indices [7] are out of range"),
])
def test_bad_arguments_are_refused_before_any_work(kwargs, message) -> None:
    read = []
    loaders = [lambda k=k: read.append(k) for k in range(4)]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        register_series(loaders, **{"reference": 0, **kwargs})
    assert read == []


def test_a_single_phase_or_a_2d_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 phases, got 1"):
        register_series([sitk.Image(8, 8, 8, sitk.sitkInt16)])
    flat = sitk.Image(8, 8, sitk.sitkInt16)
    series = register_series([flat, sitk.Image(8, 8, 8, sitk.sitkInt16)], model=None)
    with pytest.raises(ValueError, match="^reference phase phase00: expected a 3-D image, got a 2-D image"):
        next(series)
    series = register_series([sitk.Image(8, 8, 8, sitk.sitkInt16), flat], model=None)
    with pytest.raises(ValueError, match="^phase phase01: expected a 3-D image, got a 2-D image"):
        list(series)


def test_a_phase_is_let_go_before_the_next_one_is_registered(synthetic_4dct_3mm) -> None:
    import gc
    import weakref

    phases = synthetic_4dct_3mm[0][:3]
    first_field: list[weakref.ref] = []
    alive: list[bool] = []

    def progress(fraction: float, message: str) -> None:
        if message.startswith("phase02 (2/2)") and first_field and not alive:  # once: a collection is slow
            gc.collect()
            alive.append(first_field[0]() is not None)

    series = register_series(phases, 0, which=[1, 2], model=None, device="cpu", options=QUICK, progress=progress)
    first = next(series)
    first_field.append(weakref.ref(first.deformation.displacement))
    del first
    next(series)
    assert alive and not any(alive)  # one field in memory at a time


def test_a_chain_composes_the_steps_towards_each_phase(synthetic_4dct_3mm, registered) -> None:
    phases, _, lungs, points = synthetic_4dct_3mm
    chained = list(register_series(phases[:3], 0, model=None, device="cpu", options=QUICK, chain=True,
                                   reference_mask=lungs))
    # the first step is the direct registration to the reference
    assert torch.allclose(chained[1].deformation.displacement, registered[1][0].deformation.displacement, atol=1e-5)
    # phase 2 is reached through phase 1: its map is the step 1 -> 2 composed with the map 0 -> 1
    step = register(phases[1], phases[2], model=None, device="cpu", options=QUICK)
    composed = step.deformation.compose(chained[1].deformation)
    assert torch.allclose(chained[2].deformation.displacement, composed.displacement, atol=1e-4)
    row = phase_motion(chained[2].deformation, lungs, landmarks=(points[0], points[2]))
    assert row.tre_mean_mm < 0.6 * row.tre_before_mm
    tiny = options_for("standard", refinement={"iterations": (2, 1)}, grid={"max_voxels": 16}, affine=None)
    order = [r.index for r in register_series(phases[:3], 1, model=None, device="cpu", options=tiny, chain=True)]
    assert order == [1, 2, 0]  # the reference, then away from it each way
    with pytest.raises(ValueError, match="a chain registers every phase"):
        register_series(phases, 0, chain=True, which=[1])
