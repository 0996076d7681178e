"""``mlvirnet tre`` and ``mlvirnet evaluate-dirlab`` (in-process, plus one real subprocess)."""

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
from MLVIRNETLib.io.landmarks import read_landmarks, write_landmarks


def mlvirnet_command() -> list[str]:
    script = Path(sys.executable).with_name("mlvirnet")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from MLVIRNETLib.cli import main; sys.exit(main())"]


@pytest.fixture
def lm_dir(shared_data):
    return shared_data / "dirlab" / "4dct_landmarks"


def case_points(lm_dir, n):
    grid = dirlab_grid(f"4dct:{n}")
    return (
        read_landmarks(lm_dir / f"Case{n}_300_T00_xyz.txt", grid),
        read_landmarks(lm_dir / f"Case{n}_300_T50_xyz.txt", grid),
    )


def translation_field(grid: ImageGrid, shift) -> Deformation:
    """A constant field on a coarse grid with the same field of view and direction as ``grid``."""
    coarse = grid.resized(tuple(max(2, s // 32) for s in grid.size))
    u = torch.as_tensor(np.asarray(shift, dtype=float)).view(1, 3, 1, 1, 1).expand(1, 3, *coarse.shape_zyx)
    return Deformation(coarse, u.contiguous())


def tre_args(lm_dir, n, *extra):
    return ["tre", "--fixed-landmarks", str(lm_dir / f"Case{n}_300_T00_xyz.txt"),
            "--moving-landmarks", str(lm_dir / f"Case{n}_300_T50_xyz.txt"), "--dirlab-case", f"4dct:{n}", *extra]


def test_initial_json(lm_dir, capsys):
    assert main(tre_args(lm_dir, 3, "--json")) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    doc = json.loads(out[0])
    assert (round(doc["mean"], 2), round(doc["std"], 2), doc["n"]) == (6.94, 4.05, 300)
    assert doc["direction"] == "fixed -> moving" and doc["kind"] == "initial"
    assert doc["p95"] <= doc["max"]


def test_readable_summary_states_direction(lm_dir, capsys):
    assert main(tre_args(lm_dir, 1)) == 0
    out = capsys.readouterr().out
    assert "fixed -> moving" in out and "mean 3.89 mm, sd 2.78 mm" in out and "n = 300" in out


@pytest.mark.parametrize("snap", [False, True])
def test_registered_with_field(tmp_path, lm_dir, capsys, snap):
    fixed, moving = case_points(lm_dir, 4)
    shift = (moving - fixed).mean(axis=0)
    grid = dirlab_grid("4dct:4")
    field = write_field(translation_field(grid, shift), tmp_path / "f.nii.gz", dtype="float64")
    args = tre_args(lm_dir, 4, "--field", str(field), "--json", *(["--snap-to-voxel"] if snap else []))
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    mapped = fixed + shift
    if snap:
        idx = np.clip(np.rint(grid.world_to_index(mapped)), 0, np.asarray(grid.size) - 1)
        mapped = grid.index_to_world(idx)
    expected = np.linalg.norm(mapped - moving, axis=1)
    assert doc["kind"] == "registered" and doc["snap_to_voxel"] is snap
    assert doc["mean"] == pytest.approx(expected.mean(), abs=1e-5)
    assert doc["std"] == pytest.approx(expected.std(), abs=1e-5)
    assert doc["mean"] < 9.83  # the translation helps relative to the initial error


def test_world_landmark_files(tmp_path, lm_dir, capsys):
    fixed, moving = case_points(lm_dir, 2)
    write_landmarks(fixed, tmp_path / "f.mrk.json", coordinate_system="RAS")
    write_landmarks(moving, tmp_path / "m.csv")
    assert main(["tre", "--fixed-landmarks", str(tmp_path / "f.mrk.json"), "--moving-landmarks", str(tmp_path / "m.csv"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (round(doc["mean"], 2), round(doc["std"], 2)) == (4.34, 3.90)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlvirnet ")
    return err[0]


def test_errors_exit_2_with_one_line(tmp_path, lm_dir, capsys):
    short = tmp_path / "short.txt"
    short.write_text("".join(lm_dir.joinpath("Case1_300_T50_xyz.txt").read_text().splitlines(keepends=True)[:299]))
    assert main(["tre", "--fixed-landmarks", str(lm_dir / "Case1_300_T00_xyz.txt"), "--moving-landmarks", str(short),
                 "--dirlab-case", "4dct:1"]) == 2
    assert "300 fixed vs 299 moving" in one_error_line(capsys)

    two_cols = tmp_path / "bad.txt"
    two_cols.write_text("1 2\n")
    assert main(["tre", "--fixed-landmarks", str(two_cols), "--moving-landmarks", str(two_cols), "--dirlab-case", "4dct:1"]) == 2
    assert "expected 3 values" in one_error_line(capsys)

    outside = tmp_path / "outside.txt"
    outside.write_text("1 1 95\n")  # case 1 has 94 slices
    assert main(["tre", "--fixed-landmarks", str(outside), "--moving-landmarks", str(outside), "--dirlab-case", "4dct:1"]) == 2
    assert "outside the image" in one_error_line(capsys)

    assert main(["tre", "--fixed-landmarks", str(lm_dir / "Case1_300_T00_xyz.txt"),
                 "--moving-landmarks", str(lm_dir / "Case1_300_T50_xyz.txt")]) == 2
    assert "--dirlab-case" in one_error_line(capsys)

    # a field whose grid covers only part of the lungs
    grid = dirlab_grid("4dct:1")
    part = ImageGrid((8, 8, 4), (10.0, 10.0, 10.0), (50.0, 50.0, -60.0), grid.direction)
    write_field(Deformation.identity(part), tmp_path / "part.h5")
    assert main(tre_args(lm_dir, 1, "--field", str(tmp_path / "part.h5"))) == 2
    assert "outside the deformation field's grid" in one_error_line(capsys)


# ----------------------------------------------------------------------------------------------
# evaluate-dirlab
# ----------------------------------------------------------------------------------------------
def test_evaluate_dirlab_initial_table(tmp_path, shared_data, capsys):
    out = tmp_path / "res"
    assert main(["evaluate-dirlab", "--root", str(shared_data / "dirlab"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "T00 fixed, T50 moving" in printed and "| total | 3000 | 8.46 (6.58) |" in printed
    doc = json.loads((out / "dirlab_tre.json").read_text())
    assert doc["cases"]["total"]["initial"]["n"] == 3000
    assert round(doc["cases"]["4dct:8"]["initial"]["mean"], 2) == 14.99
    assert len(doc["cases"]["4dct:8"]["initial"]["per_point"]) == 300
    assert "| 4dct:10 | 300 | 7.30 (6.34) |" in (out / "dirlab_tre.md").read_text()
    csv_lines = (out / "dirlab_tre.csv").read_text().splitlines()
    assert csv_lines[0].startswith("case,n,initial_mean,initial_std") and len(csv_lines) == 12


def test_evaluate_dirlab_with_fields(tmp_path, shared_data, capsys):
    fields = tmp_path / "fields"
    fields.mkdir()
    lm_dir = shared_data / "dirlab" / "4dct_landmarks"
    expected = {}
    for n, name in ((1, "4dct_case1.nii.gz"), (5, "case5.h5")):
        fixed, moving = case_points(lm_dir, n)
        shift = (moving - fixed).mean(axis=0)
        write_field(translation_field(dirlab_grid(f"4dct:{n}"), shift), fields / name, dtype="float64")
        expected[f"4dct:{n}"] = np.linalg.norm(fixed + shift - moving, axis=1)
    out = tmp_path / "res"
    args = ["evaluate-dirlab", "--root", str(shared_data / "dirlab"), "--cases", "4dct:1", "4dct:5", "--fields", str(fields), "-o", str(out)]
    assert main(args) == 0
    doc = json.loads((out / "dirlab_tre.json").read_text())
    for case, errors in expected.items():
        assert doc["cases"][case]["registered"]["mean"] == pytest.approx(errors.mean(), abs=1e-5)
    pooled = np.concatenate(list(expected.values()))
    assert doc["cases"]["total"]["registered"]["std"] == pytest.approx(pooled.std(), abs=1e-5)
    assert "x_moving = x_fixed + u(x_fixed)" in doc["direction"]
    assert doc["case_details"]["4dct:1"]["field_grid_matches_dirlab"] is False  # coarse grid


def test_evaluate_dirlab_failure_writes_nothing(tmp_path, shared_data, capsys):
    fields = tmp_path / "fields"
    fields.mkdir()
    grid = dirlab_grid("4dct:1")
    write_field(Deformation.identity(grid.resized((8, 8, 4))), fields / "case1.nii.gz")
    part = ImageGrid((4, 4, 4), (10.0, 10.0, 10.0), (50.0, 50.0, -60.0), grid.direction)
    write_field(Deformation.identity(part), fields / "case2.nii.gz")  # does not cover case 2's landmarks
    out = tmp_path / "res"
    root = str(shared_data / "dirlab")
    assert main(["evaluate-dirlab", "--root", root, "--cases", "4dct:1", "4dct:2", "--fields", str(fields), "-o", str(out)]) == 2
    assert "case 4dct:2" in one_error_line(capsys) and not out.exists()
    assert main(["evaluate-dirlab", "--root", root, "--cases", "4dct:1", "4dct:3", "--fields", str(fields), "-o", str(out)]) == 2
    assert "no deformation field for case 4dct:3" in one_error_line(capsys) and not out.exists()
    assert main(["evaluate-dirlab", "--root", str(tmp_path), "--cases", "4dct", "-o", str(out)]) == 2
    assert "no 4dct landmark files" in one_error_line(capsys) and not out.exists()
    assert main(["evaluate-dirlab", "--root", root, "--cases", "4dct:1", "--register", "-o", str(out)]) == 2
    assert "no T00 image for DIR-LAB case 4dct:1" in one_error_line(capsys) and not out.exists()
    assert main(["evaluate-dirlab", "--root", root, "--save-fields", str(fields), "-o", str(out)]) == 2
    assert "--save-fields needs --register" in one_error_line(capsys) and not out.exists()


def test_entry_point_subprocess(shared_data):
    lm_dir = shared_data / "dirlab" / "4dct_landmarks"
    proc = subprocess.run(
        mlvirnet_command() + tre_args(lm_dir, 10, "--json"), capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (round(doc["mean"], 2), round(doc["std"], 2), doc["n"]) == (7.30, 6.34, 300)


def test_evaluate_dirlab_register_wiring(tmp_path, shared_data):
    """--register reads the raw images (DIR-LAB byte layout) and maps the landmarks through
    ``register(...).deformation``. With no network, no affine and no refinement that map is the
    identity, so the registered column must equal the initial one; the saved field is on the
    DIR-LAB grid."""
    root = tmp_path / "Case1Pack"
    root.mkdir()
    for phase in ("T00", "T50"):
        name = f"Case1_300_{phase}_xyz.txt"
        (root / name).write_bytes((shared_data / "dirlab" / "4dct_landmarks" / name).read_bytes())
    grid = dirlab_grid("4dct:1")
    nx, ny, nz = grid.size
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij", sparse=True)
    hu = np.where(((x - 128) / 110) ** 2 + ((y - 128) / 90) ** 2 < 1, 40.0, -1000.0)
    for cx in (80, 176):
        hu = np.where(((x - cx) / 38) ** 2 + ((y - 120) / 60) ** 2 + ((z - 47) / 45) ** 2 < 1, -850.0, hu)
    stored = (np.rint(hu + 30 * np.sin(x / 5.0) * np.cos(y / 7.0) * np.sin(z / 3.0)) + 1024).astype("<i2")
    stored.tofile(root / "case1_T00_s.img")
    stored.tofile(root / "case1_T50_s.img")
    fields, out = tmp_path / "fields", tmp_path / "res"
    fields.mkdir()
    args = ["evaluate-dirlab", "--root", str(tmp_path), "--cases", "4dct:1", "--register", "--model", "none",
            "--no-affine", "--refine", "0", "--grid-size", "32", "32", "32", "--device", "cpu",
            "--save-fields", str(fields), "-o", str(out)]
    assert main(args) == 0
    doc = json.loads((out / "dirlab_tre.json").read_text())
    initial, registered = doc["cases"]["4dct:1"]["initial"], doc["cases"]["4dct:1"]["registered"]
    assert registered["mean"] == pytest.approx(initial["mean"], abs=1e-4)
    assert np.allclose(registered["per_point"], initial["per_point"], atol=1e-3)
    assert doc["registered_from"] == "register" and doc["case_details"]["4dct:1"]["registration"]["model_used"] is None
    saved = read_field(fields / "4dct_case1.nii.gz")
    assert saved.grid.is_close(grid, tol_mm=1e-3) and float(saved.displacement.abs().max()) < 1e-3
