"""The details view's summary of a registration shows the result's quality check: the lung NCC (and
Dice where both masks exist) with its threshold, and a failed check's warning once, before the notes.
The results are real registrations (affine only) of the bundled CT at 3 mm and its 10 mm breathing
partner, with the correct header and with x and y swapped in the moving image's direction matrix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from MLVIRNETLib.mrml.outputs import RegistrationSummary
from MLVIRNETLib.registration import options_for, register

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from calibrate_quality import swapped_xy  # noqa: E402  (the wrong header of the calibration)


def _summary(fixed, moving, fixed_mask=None, moving_mask=None) -> RegistrationSummary:
    """The summary the Logic builds from a registration (affine only, one thread)."""
    options = options_for("standard", refinement={"iterations": 0}, runtime={"num_threads": 1})
    result = register(fixed, moving, fixed_mask, moving_mask, model=None, device="cpu", options=options)
    return RegistrationSummary(timings=dict(result.timings), folding_fraction=result.folding_fraction,
                               model=result.model_used, device="cpu", messages=tuple(result.messages),
                               quality=result.quality)


@pytest.fixture(scope="module")
def pair(breathing_pair_3mm):
    return breathing_pair_3mm


def test_a_good_result_shows_its_quality_without_a_warning(pair) -> None:
    lines = _summary(*pair).details().splitlines()
    quality = [line for line in lines if line.startswith("Quality: ")]
    assert len(quality) == 1 and quality[0].startswith("Quality: good: lung NCC 0.9"), lines
    assert "(flagged below 0.80)" in quality[0] and "Dice" not in quality[0]
    assert not any(line.startswith("Warning:") or "quality check" in line for line in lines), lines


def test_a_swapped_header_shows_poor_quality_and_its_warning_once(pair) -> None:
    fixed, moving = pair
    lines = _summary(fixed, swapped_xy(moving)).details().splitlines()
    quality = [line for line in lines if line.startswith("Quality: ")]
    assert len(quality) == 1 and quality[0].startswith("Quality: POOR: lung NCC 0."), lines
    warnings = [line for line in lines if "quality check:" in line]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: quality check: the registered images agree"), lines
    assert lines.index(warnings[0]) == lines.index(quality[0]) + 1
    assert any(line.startswith("Note: no network") for line in lines)  # the other notes stay


def test_with_both_masks_the_lung_dice_is_shown(pair) -> None:
    import SimpleITK as sitk

    fixed = pair[0]
    lungs = sitk.BinaryThreshold(fixed, -950, -500, 1, 0)  # a rough lung mask of the fixed CT
    quality = [line for line in _summary(fixed, fixed, lungs, lungs).details().splitlines()
               if line.startswith("Quality: ")]
    assert len(quality) == 1 and ", lung Dice 1.00 (flagged below 0.80)" in quality[0], quality


def test_a_summary_without_a_quality_check_has_no_quality_line() -> None:
    details = RegistrationSummary(timings={"total": 1.0}, messages=("a note",)).details()
    assert "Quality" not in details and details.endswith("Note: a note")
