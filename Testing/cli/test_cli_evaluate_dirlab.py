"""``mlvirnet evaluate-dirlab`` on small DIR-LAB-like cases generated in ``tmp_path`` (no shared data):
landmark files of 1-based voxel indices, raw int16 ``.img`` images (stored value = HU + 1024) and
known translations as fields, so every expected TRE is computed here by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MLVIRNETLib.cli import main
from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.io.dirlab import dirlab_grid
from MLVIRNETLib.io.fields import read_field, write_field

# (size, spacing) of the cases used here, copied from the DIR-LAB reference data (not from the library)
GEOMETRY = {"4dct:1": ((256, 256, 94), (0.97, 0.97, 2.5)), "4dct:2": ((256, 256, 112), (1.16, 1.16, 2.5))}
AXIS_SIGN = np.array([1.0, 1.0, -1.0])  # DIR-LAB direction diag(1, 1, -1), origin at voxel (0, 0, 0)
N_POINTS = 30


def write_case(root: Path, number: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random T00/T50 landmark files ``Case<N>_300_<phase>_xyz.txt`` -> (T00, T50) 1-based voxel indices."""
    size = np.asarray(GEOMETRY[f"4dct:{number}"][0])
    rng = np.random.default_rng(seed)
    t00 = rng.integers(12, size - 12, size=(N_POINTS, 3))
    t50 = t00 + rng.integers(-6, 7, size=(N_POINTS, 3))
    root.mkdir(parents=True, exist_ok=True)
    for phase, points in (("T00", t00), ("T50", t50)):
        (root / f"Case{number}_300_{phase}_xyz.txt").write_text("".join(f"{x}\t{y}\t{z}\n" for x, y, z in points))
    return t00.astype(float), t50.astype(float)


def to_mm(number: int, one_based: np.ndarray) -> np.ndarray:
    """LPS mm of 1-based DIR-LAB voxel indices, by hand."""
    return (one_based - 1.0) * np.asarray(GEOMETRY[f"4dct:{number}"][1]) * AXIS_SIGN


def translation_field(number: int, shift_mm) -> Deformation:
    coarse = dirlab_grid(f"4dct:{number}").resized((8, 8, 6))
    u = torch.as_tensor(np.asarray(shift_mm, dtype=float)).view(1, 3, 1, 1, 1).expand(1, 3, *coarse.shape_zyx)
    return Deformation(coarse, u.contiguous())


def write_images(root: Path) -> None:
    """Identical T00/T50 raw images of case 1 (256 x 256 x 94 int16, HU + 1024, no header): a body and a lung."""
    nx, ny, nz = GEOMETRY["4dct:1"][0]
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij", sparse=True)
    hu = np.where(((x - 128) / 110) ** 2 + ((y - 128) / 90) ** 2 < 1, 40.0, -1000.0)
    hu = np.where(((x - 128) / 80) ** 2 + ((y - 120) / 60) ** 2 + ((z - 47) / 45) ** 2 < 1, -850.0, hu)
    for phase in ("T00", "T50"):
        (hu + 1024).astype("<i2").tofile(root / f"case1_{phase}_s.img")


def distances(a_mm: np.ndarray, b_mm: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a_mm - b_mm, axis=1)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlvirnet evaluate-dirlab: error: "), err
    return err[0]


def test_initial_error_is_the_mean_landmark_distance(tmp_path, capsys):
    t00, t50 = write_case(tmp_path / "data" / "Case1Pack", 1, seed=0)
    expected = distances(to_mm(1, t00), to_mm(1, t50))
    out = tmp_path / "res"
    assert main(["evaluate-dirlab", "--root", str(tmp_path / "data"), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    summary = f"{expected.mean():.2f} ({expected.std():.2f})"
    assert f"| 4dct:1 | {N_POINTS} | {summary} |" in captured.out
    assert f"| total | {N_POINTS} | {summary} |" in captured.out
    assert "T00 fixed, T50 moving" in captured.out and "wrote " in captured.out
    assert "4dct:2, 4dct:3" in captured.err  # the other 4D-CT cases are reported as skipped
    doc = json.loads((out / "dirlab_tre.json").read_text())
    initial = doc["cases"]["4dct:1"]["initial"]
    assert initial["mean"] == pytest.approx(expected.mean(), abs=1e-9)
    assert initial["std"] == pytest.approx(expected.std(), abs=1e-9)
    np.testing.assert_allclose(initial["per_point"], expected, atol=1e-9)
    assert doc["registered_from"] is None and doc["skipped_cases"][0] == "4dct:2"
    assert (out / "dirlab_tre.csv").read_text().splitlines()[0].startswith("case,n,initial_mean,initial_std")


@pytest.mark.parametrize("fixed_phase", ["inhale", "exhale"])
def test_fields_give_the_analytic_error(tmp_path, capsys, fixed_phase):
    root, fields, out = tmp_path / "data", tmp_path / "fields", tmp_path / "res"
    fields.mkdir()
    shifts = {1: np.array([1.5, -2.25, 3.0]), 2: np.array([-0.5, 4.0, -7.5])}
    expected = {}
    for number, name in ((1, "4dct_case1.nii.gz"), (2, "case2.h5")):
        t00, t50 = write_case(root, number, seed=number)
        fixed, moving = (t00, t50) if fixed_phase == "inhale" else (t50, t00)
        write_field(translation_field(number, shifts[number]), fields / name, dtype="float64")
        expected[f"4dct:{number}"] = distances(to_mm(number, fixed) + shifts[number], to_mm(number, moving))
    args = ["evaluate-dirlab", "--root", str(root), "--cases", "4dct:1", "4dct:2", "--fields", str(fields),
            "--fixed-phase", fixed_phase, "-o", str(out)]
    assert main(args) == 0
    doc = json.loads((out / "dirlab_tre.json").read_text())
    for case, errors in expected.items():
        assert doc["cases"][case]["registered"]["mean"] == pytest.approx(errors.mean(), abs=1e-6)
        np.testing.assert_allclose(doc["cases"][case]["registered"]["per_point"], errors, atol=1e-6)
    pooled = np.concatenate(list(expected.values()))
    assert doc["cases"]["total"]["registered"]["mean"] == pytest.approx(pooled.mean(), abs=1e-6)
    assert doc["cases"]["total"]["registered"]["std"] == pytest.approx(pooled.std(), abs=1e-6)
    tags = "T00 fixed, T50 moving" if fixed_phase == "inhale" else "T50 fixed, T00 moving"
    assert doc["direction"].startswith(f"fixed -> moving: {tags}")
    assert "x_moving = x_fixed + u(x_fixed)" in doc["direction"]
    assert doc["registered_from"] == "fields" and doc["fixed_phase"] == fixed_phase
    assert doc["case_details"]["4dct:2"]["field"] == str(fields / "case2.h5")
    assert f"| total | {2 * N_POINTS} |" in capsys.readouterr().out


def test_snap_to_voxel(tmp_path, capsys):
    root, fields = tmp_path / "data", tmp_path / "fields"
    fields.mkdir()
    t00, t50 = write_case(root, 2, seed=5)
    index_shift = np.array([-2.4, 0.7, 1.45])  # snapped: (-2, 1, 1) voxels
    write_field(translation_field(2, index_shift * np.asarray(GEOMETRY["4dct:2"][1]) * AXIS_SIGN), fields / "case2.mha")
    out = tmp_path / "res"
    assert main(["evaluate-dirlab", "--root", str(root), "--cases", "4dct:2", "--fields", str(fields),
                 "--snap-to-voxel", "-o", str(out)]) == 0
    expected = distances(to_mm(2, t00 + np.array([-2.0, 1.0, 1.0])), to_mm(2, t50))
    doc = json.loads((out / "dirlab_tre.json").read_text())
    np.testing.assert_allclose(doc["cases"]["4dct:2"]["registered"]["per_point"], expected, atol=1e-6)
    assert doc["snap_to_voxel"] is True and "Snapped to voxels." in capsys.readouterr().out


def test_register_reads_raw_images(tmp_path):
    """--register reads the raw images and maps the landmarks through ``register(...).deformation``:
    with no network, no affine and no refinement that map is the identity, so the registered error
    equals the landmark distance; the saved field is on the DIR-LAB grid."""
    root, fields, out = tmp_path / "data", tmp_path / "fields", tmp_path / "res"
    fields.mkdir()
    t00, t50 = write_case(root, 1, seed=9)
    write_images(root)
    args = ["evaluate-dirlab", "--root", str(root), "--cases", "4dct:1", "--register", "--model", "none",
            "--no-affine", "--refine", "0", "--grid-size", "32", "32", "32", "--device", "cpu",
            "--save-fields", str(fields), "-o", str(out)]
    assert main(args) == 0
    doc = json.loads((out / "dirlab_tre.json").read_text())
    expected = distances(to_mm(1, t00), to_mm(1, t50))
    np.testing.assert_allclose(doc["cases"]["4dct:1"]["registered"]["per_point"], expected, atol=1e-3)
    assert doc["cases"]["4dct:1"]["initial"]["mean"] == pytest.approx(expected.mean(), abs=1e-9)
    details = doc["case_details"]["4dct:1"]
    assert doc["registered_from"] == "register" and details["registration"]["model_used"] is None
    assert details["registration"]["moving_image"] == str(root / "case1_T50_s.img")
    saved = read_field(fields / "4dct_case1.nii.gz")
    assert saved.grid.is_close(dirlab_grid("4dct:1"), tol_mm=1e-3) and float(saved.displacement.abs().max()) < 1e-3


def test_failures_exit_2_and_write_nothing(tmp_path, capsys):
    root, fields, out = tmp_path / "data", tmp_path / "fields", tmp_path / "res"
    fields.mkdir()
    write_case(root, 1, seed=1)
    write_case(root, 2, seed=2)
    write_field(translation_field(1, (1.0, 2.0, 3.0)), fields / "case1.nii.gz")
    small = ImageGrid((4, 4, 4), (5.0, 5.0, 5.0), (100.0, 100.0, -100.0), dirlab_grid("4dct:2").direction)
    write_field(Deformation.identity(small), fields / "case2.nii.gz")  # does not cover case 2's landmarks
    base = ["evaluate-dirlab", "--root", str(root), "-o", str(out)]
    assert main(base + ["--cases", "4dct:1", "4dct:2", "--fields", str(fields)]) == 2
    assert "case 4dct:2, field" in one_error_line(capsys)
    assert main(base + ["--cases", "4dct:3"]) == 2
    assert "no T00 landmark file for DIR-LAB case 4dct:3" in one_error_line(capsys)
    assert main(base + ["--cases", "copd", "--fields", str(fields)]) == 2
    assert "no copd landmark files" in one_error_line(capsys)
    (fields / "case1.nii.gz").unlink()
    assert main(base + ["--cases", "4dct:1", "--fields", str(fields)]) == 2
    assert "no deformation field for case 4dct:1" in one_error_line(capsys)
    assert main(base + ["--cases", "4dct:1", "--register"]) == 2
    assert "no T00 image for DIR-LAB case 4dct:1" in one_error_line(capsys)
    assert main(base + ["--save-fields", str(fields)]) == 2
    assert "--save-fields needs --register" in one_error_line(capsys)
    assert main(base + ["--register", "--save-fields", str(tmp_path / "missing")]) == 2
    assert "--save-fields folder does not exist" in one_error_line(capsys)
    assert not out.exists()
    out.write_text("a file")
    assert main(base) == 2
    assert "not a folder" in one_error_line(capsys)


def test_console_script(tmp_path):
    t00, t50 = write_case(tmp_path, 2, seed=4)
    script = Path(sys.executable).with_name("mlvirnet")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "MLVIRNETLib.cli"]
    proc = subprocess.run(command + ["evaluate-dirlab", "--root", str(tmp_path), "--cases", "4dct:2"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    expected = distances(to_mm(2, t00), to_mm(2, t50))
    assert f"| 4dct:2 | {N_POINTS} | {expected.mean():.2f} ({expected.std():.2f}) |" in proc.stdout
