"""``mlvirnet demo``: the README's main job, end to end on the bundled CT (short refinement)."""

from __future__ import annotations

import json

import SimpleITK as sitk

from MLVIRNETLib.cli import main
from MLVIRNETLib.io.fields import read_field


def test_demo_registers_bundled_ct_and_writes_outputs(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "-o", str(out), "--model", "none", "--refine", "10", "--landmarks", "40", "--quiet", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("fixed.nii.gz", "moving.nii.gz", "warped.nii.gz", "field.nii.gz", "overlay.png", "report.json"):
        assert (out / name).is_file(), name
    assert report["peak_displacement_mm"] >= 15.0
    before, after = report["tre_before_mm"]["mean"], report["tre_after_mm"]["mean"]
    assert after < 0.5 * before, (before, after)
    assert report["folding_percent"] < 0.5
    assert report["quality"]["ok"] is True and not any("quality check" in m for m in report["messages"])
    # the field lives on the fixed grid
    field = read_field(out / "field.nii.gz")
    fixed = sitk.ReadImage(str(out / "fixed.nii.gz"))
    assert field.grid.size == fixed.GetSize()
    assert json.loads((out / "report.json").read_text())["landmarks"] == report["landmarks"]


def test_demo_refuses_bad_arguments(tmp_path, capsys) -> None:
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert main(["demo", "-o", str(afile), "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["demo", "-o", str(tmp_path / "d"), "--peak-mm", "-1", "--quiet"]) == 2
    assert main(["demo", "-o", str(tmp_path / "d"), "--image", str(tmp_path / "missing.nii.gz"), "--quiet"]) == 2
    assert not (tmp_path / "d").exists()
