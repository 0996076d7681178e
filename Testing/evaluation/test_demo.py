"""The demo library function :func:`MLVIRNETLib.evaluation.demo.run_demo`: input checks come before any
work. (The full run is exercised end to end by ``Testing/cli/test_cli_demo.py``.)"""

from __future__ import annotations

import pytest

from MLVIRNETLib.evaluation.demo import OUTPUT_NAMES, DemoConfig, run_demo


@pytest.mark.parametrize(
    "config, message",
    [
        (DemoConfig(peak_mm=0.0), "peak_mm must be > 0"),
        (DemoConfig(peak_mm=float("nan")), "peak_mm must be > 0"),
        (DemoConfig(refine_iterations=-1), "refine_iterations must be >= 0"),
        (DemoConfig(landmarks=0), "landmarks must be >= 1"),
        (DemoConfig(device="tpu"), "device"),
    ],
)
def test_bad_settings_raise_value_error_and_write_nothing(tmp_path, config, message):
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=message):
        run_demo(out, config)
    assert not out.exists()


def test_missing_image_and_unusable_output(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(FileNotFoundError, match="CT not found"):
        run_demo(out, DemoConfig(image=tmp_path / "missing.nii.gz"))
    assert not out.exists()
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        run_demo(afile)
    out.mkdir()
    ct = out / "fixed.nii.gz"
    ct.write_bytes(b"")
    with pytest.raises(ValueError, match="would overwrite the input"):
        run_demo(out, DemoConfig(image=ct))
    assert sorted(p.name for p in out.iterdir()) == ["fixed.nii.gz"]
    assert OUTPUT_NAMES == ("fixed.nii.gz", "moving.nii.gz", "warped.nii.gz", "field.nii.gz", "overlay.png", "report.json")
