"""The quality check through the command line: a moving CT with x and y swapped in its direction
matrix (the wrong header of ``benchmarks/calibrate_quality.py``) is flagged on stderr, in ``--json``
and in the batch's ``result.json``; the same pair with its correct header is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from helpers import bundled_ct_3mm

from MLVIRNETLib.simulation.cases import synthetic_breathing_case

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from calibrate_quality import swapped_xy  # noqa: E402  (the header the threshold was calibrated against)

WARNING = "quality check: the registered images agree poorly in the lungs"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "MLVIRNETLib.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The bundled CT at 3 mm, its 10 mm breathing partner, and that partner with x and y swapped."""
    folder = tmp_path_factory.mktemp("quality")
    fixed = bundled_ct_3mm()
    moving = synthetic_breathing_case(fixed, peak_mm=10.0, n_landmarks=10).moving
    paths = {"fixed": folder / "fixed.nii.gz", "correct": folder / "moving.nii.gz",
             "swapped": folder / "moving_xy.nii.gz"}
    for name, image in (("fixed", fixed), ("correct", moving), ("swapped", swapped_xy(moving))):
        sitk.WriteImage(image, str(paths[name]))
    return paths


@pytest.mark.parametrize("header", ["correct", "swapped"])
def test_register_warns_on_the_swapped_header_only(pair, tmp_path, header) -> None:
    r = _cli("register", str(pair["fixed"]), str(pair[header]), "-o", str(tmp_path / "f.nii.gz"),
             "--preset", "fast", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    quality = json.loads(r.stdout)["quality"]
    if header == "correct":
        assert quality["ok"] is True and quality["message"] is None and quality["ncc"] >= quality["ncc_threshold"]
        assert WARNING not in r.stderr and WARNING not in r.stdout
    else:
        assert quality["ok"] is False and quality["ncc"] < quality["ncc_threshold"], quality
        assert quality["message"].startswith(WARNING)
        assert f"mlvirnet register: {WARNING}" in r.stderr
        assert any(m.startswith(WARNING) for m in json.loads(r.stdout)["messages"])


def test_batch_records_the_warning_in_result_json(pair, tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,fixed,moving\ngood,{pair['fixed']},{pair['correct']}\n"
                        f"xy,{pair['fixed']},{pair['swapped']}\n")
    out = tmp_path / "out"
    r = _cli("batch", str(manifest), "-o", str(out), "--preset", "fast", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["quality_warnings"] == ["xy"]
    good = json.loads((out / "good" / "result.json").read_text())["quality"]
    bad = json.loads((out / "xy" / "result.json").read_text())["quality"]
    assert good["ok"] is True and bad["ok"] is False and bad["message"].startswith(WARNING)
    assert "pair xy: quality check failed" in r.stderr and "pair good: quality" not in r.stderr
