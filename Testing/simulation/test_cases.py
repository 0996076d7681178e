"""Synthetic breathing cases and the Sample Data pair files."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk
from helpers import bundled_ct_3mm

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.progress import RegistrationCancelled
from MLVIRNETLib.evaluation.metrics import tre
from MLVIRNETLib.io.images import write_image
from MLVIRNETLib.io.landmarks import read_landmarks
from MLVIRNETLib.simulation.cases import SAMPLE_PAIR, sample_pair_files, synthetic_breathing_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """The bundled CT at 3 mm (60 x 63 x 82), int16 HU, written to a file."""
    path = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    write_image(bundled_ct_3mm(), path)
    return path


def test_synthetic_case_landmarks_follow_the_known_motion(small_ct):
    fixed = sitk.ReadImage(str(small_ct))
    case = synthetic_breathing_case(fixed, peak_mm=12.0, seed=3, n_landmarks=40)
    assert case.moving.GetSize() == fixed.GetSize()
    assert 11.0 < case.peak_displacement_mm < 13.0  # 12 mm inside the lungs; the field peaks slightly off them
    assert len(case.fixed_points) == len(case.moving_points) > 10
    # the truth maps every fixed landmark exactly onto its moving landmark
    assert tre(case.fixed_points, case.moving_points, case.truth).max < 1e-3
    assert tre(case.fixed_points, case.moving_points).mean > 2.0


def test_synthetic_case_checks_the_peak(small_ct):
    with pytest.raises(ValueError, match="peak_mm must be > 0"):
        synthetic_breathing_case(sitk.ReadImage(str(small_ct)), peak_mm=0.0)


def test_sample_pair_files_are_made_once_and_reused(small_ct, tmp_path):
    reports = []
    files = sample_pair_files(tmp_path / "cache", fixed_path=small_ct, progress=lambda f, m: reports.append(f))
    assert reports[-1] == 1.0
    moving = sitk.ReadImage(str(files.moving))
    assert moving.GetPixelID() == sitk.sitkInt16  # the fixed image's type
    assert ImageGrid.from_sitk(moving).is_close(ImageGrid.from_sitk(sitk.ReadImage(str(small_ct))), tol_mm=1e-6)
    fixed_points, moving_points = read_landmarks(files.fixed_landmarks), read_landmarks(files.moving_landmarks)
    assert fixed_points.shape == moving_points.shape and fixed_points.shape[0] > 10
    assert 1.0 < tre(fixed_points, moving_points).mean < SAMPLE_PAIR["peak_mm"]
    markups = json.loads(files.fixed_landmarks.read_text(encoding="utf-8"))
    assert markups["markups"][0]["type"] == "Fiducial"

    stamps = [p.stat().st_mtime_ns for p in files.all()]
    again = sample_pair_files(tmp_path / "cache", fixed_path=small_ct)
    assert again == files and [p.stat().st_mtime_ns for p in again.all()] == stamps

    # other settings recorded beside the files: they are made again
    record = tmp_path / "cache" / "MLVIRNET-sample.json"
    record.write_text(json.dumps({**SAMPLE_PAIR, "fixed": small_ct.name, "seed": 99}), encoding="utf-8")
    sample_pair_files(tmp_path / "cache", fixed_path=small_ct)
    assert files.moving.stat().st_mtime_ns != stamps[1]
    assert json.loads(record.read_text(encoding="utf-8"))["seed"] == SAMPLE_PAIR["seed"]


def test_cancel_leaves_no_sample_files(small_ct, tmp_path):
    calls = {"n": 0}

    def cancel_after_one() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(RegistrationCancelled):
        sample_pair_files(tmp_path / "cache", fixed_path=small_ct, cancel=cancel_after_one)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []
    assert calls["n"] == 2  # stopped at the first report after the request
