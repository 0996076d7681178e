"""The DIR-LAB evaluation library (:mod:`MLVIRNETLib.evaluation.dirlab_evaluation`) on small DIR-LAB-like
cases generated in ``tmp_path``: landmark files of 1-based voxel indices and known translations as
fields, so every expected TRE is computed here from the DIR-LAB geometry table by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.evaluation.dirlab_evaluation import (
    DirlabEvaluationConfig,
    DirlabRegistrationSettings,
    evaluate_dirlab,
    find_field,
    resolve_cases,
)
from MLVIRNETLib.io.dirlab import dirlab_grid, list_files
from MLVIRNETLib.io.fields import write_field

# (size, spacing) of the cases used here, copied from the DIR-LAB reference data (not from the library)
GEOMETRY = {"4dct:1": ((256, 256, 94), (0.97, 0.97, 2.5)), "4dct:2": ((256, 256, 112), (1.16, 1.16, 2.5)),
            "copd:1": ((512, 512, 121), (0.625, 0.625, 2.5))}
AXIS_SIGN = np.array([1.0, 1.0, -1.0])  # DIR-LAB direction diag(1, 1, -1), origin at voxel (0, 0, 0)
N_POINTS = 40


def landmark_name(case: str, phase: str) -> str:
    dataset, number = case.split(":")
    return f"Case{number}_300_{phase}_xyz.txt" if dataset == "4dct" else f"copd{number}_300_{phase}_xyz_r1.txt"


def write_case(root: Path, case: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write random inhale/exhale landmark files of ``case`` -> (inhale, exhale) 1-based voxel indices."""
    size = np.asarray(GEOMETRY[case][0])
    rng = np.random.default_rng(seed)
    inhale = rng.integers(12, size - 12, size=(N_POINTS, 3))
    exhale = inhale + rng.integers(-6, 7, size=(N_POINTS, 3))
    phases = ("T00", "T50") if case.startswith("4dct") else ("iBH", "eBH")
    root.mkdir(parents=True, exist_ok=True)
    for phase, points in zip(phases, (inhale, exhale)):
        (root / landmark_name(case, phase)).write_text("".join(f"{x}\t{y}\t{z}\n" for x, y, z in points))
    return inhale.astype(float), exhale.astype(float)


def to_mm(case: str, one_based: np.ndarray) -> np.ndarray:
    """LPS mm of 1-based DIR-LAB voxel indices, by hand."""
    return (one_based - 1.0) * np.asarray(GEOMETRY[case][1]) * AXIS_SIGN


def translation_field(case: str, shift_mm) -> Deformation:
    """A constant field on a coarse grid with the field of view of the case's DIR-LAB grid."""
    coarse = dirlab_grid(case).resized((8, 8, 6))
    u = torch.as_tensor(np.asarray(shift_mm, dtype=float)).view(1, 3, 1, 1, 1).expand(1, 3, *coarse.shape_zyx)
    return Deformation(coarse, u.contiguous())


def errors_mm(a_mm: np.ndarray, b_mm: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a_mm - b_mm, axis=1)


def test_geometry_table_matches_the_library():
    for case, (size, spacing) in GEOMETRY.items():
        grid = dirlab_grid(case)
        assert grid.size == size and np.allclose(grid.spacing, spacing)


def test_initial_tre_is_the_mean_landmark_distance(tmp_path):
    root = tmp_path / "dirlab"
    points = {case: write_case(root / case.replace(":", ""), case, seed) for seed, case in enumerate(GEOMETRY)}
    evaluation = evaluate_dirlab(DirlabEvaluationConfig(root=root, cases=["4dct", "copd:1"]))
    assert list(evaluation.results) == ["4dct:1", "4dct:2", "copd:1"]
    assert evaluation.skipped == [f"4dct:{n}" for n in range(3, 11)]
    expected = {case: errors_mm(to_mm(case, i), to_mm(case, e)) for case, (i, e) in points.items()}
    for case, errors in expected.items():
        initial = evaluation.results[case]["initial"]
        assert list(evaluation.results[case]) == ["initial"]
        assert initial.n == N_POINTS
        assert initial.mean == pytest.approx(errors.mean(), abs=1e-9)
        assert initial.std == pytest.approx(errors.std(), abs=1e-9)
        np.testing.assert_allclose(initial.per_point, errors, atol=1e-9)
    assert evaluation.groups == {"4dct": ["4dct:1", "4dct:2"], "copd": ["copd:1"]}
    table = evaluation.table()
    pooled = np.concatenate(list(expected.values()))
    assert table["total"]["initial"].mean == pytest.approx(pooled.mean(), abs=1e-9)
    assert table["total"]["initial"].n == 3 * N_POINTS
    four = np.concatenate([expected["4dct:1"], expected["4dct:2"]])
    assert table["total 4dct"]["initial"].std == pytest.approx(four.std(), abs=1e-9)
    assert evaluation.direction == "fixed -> moving: T00 fixed, T50 moving, iBH fixed, eBH moving"
    assert evaluation.metadata["registered_from"] is None and evaluation.outputs == {}
    assert f"| total | {3 * N_POINTS} | {pooled.mean():.2f} ({pooled.std():.2f}) |" in evaluation.markdown()


@pytest.mark.parametrize("fixed_phase", ["inhale", "exhale"])
def test_registered_tre_through_a_translation_field(tmp_path, fixed_phase):
    root, fields, out = tmp_path / "dirlab", tmp_path / "fields", tmp_path / "res"
    fields.mkdir()
    case = "4dct:1"
    inhale, exhale = write_case(root, case, seed=3)
    fixed, moving = (inhale, exhale) if fixed_phase == "inhale" else (exhale, inhale)
    shift = np.array([1.5, -2.25, 3.0])
    write_field(translation_field(case, shift), fields / "case1.nii.gz", dtype="float64")
    config = DirlabEvaluationConfig(root=root, cases=[case], fields=fields, fixed_phase=fixed_phase)
    evaluation = evaluate_dirlab(config, output_dir=out)
    expected = errors_mm(to_mm(case, fixed) + shift, to_mm(case, moving))
    registered = evaluation.results[case]["registered"]
    assert registered.mean == pytest.approx(expected.mean(), abs=1e-6)
    assert registered.std == pytest.approx(expected.std(), abs=1e-6)
    np.testing.assert_allclose(registered.per_point, expected, atol=1e-6)
    assert evaluation.results[case]["initial"].mean == pytest.approx(
        errors_mm(to_mm(case, fixed), to_mm(case, moving)).mean(), abs=1e-9)
    details = evaluation.details[case]
    assert details["field"] == str(fields / "case1.nii.gz") and details["field_grid_matches_dirlab"] is False
    assert (details["fixed"], details["moving"]) == (("T00", "T50") if fixed_phase == "inhale" else ("T50", "T00"))
    doc = json.loads((out / "dirlab_tre.json").read_text())
    assert set(evaluation.outputs) == {"json", "csv", "markdown"} and doc["registered_from"] == "fields"
    assert doc["cases"][case]["registered"]["mean"] == pytest.approx(expected.mean(), abs=1e-6)
    assert "x_moving = x_fixed + u(x_fixed)" in doc["direction"]


def test_snap_to_voxel_rounds_the_mapped_points(tmp_path):
    root, fields = tmp_path / "dirlab", tmp_path / "fields"
    fields.mkdir()
    case = "4dct:2"
    inhale, exhale = write_case(root, case, seed=7)
    index_shift = np.array([1.3, -0.4, 2.2])  # snapped: (1, 0, 2) voxels
    shift_mm = index_shift * np.asarray(GEOMETRY[case][1]) * AXIS_SIGN
    write_field(translation_field(case, shift_mm), fields / "4dct_case2.h5")
    evaluation = evaluate_dirlab(DirlabEvaluationConfig(root=root, cases=[case], fields=fields, snap_to_voxel=True))
    expected = errors_mm(to_mm(case, inhale + np.array([1.0, 0.0, 2.0])), to_mm(case, exhale))
    registered = evaluation.results[case]["registered"]
    assert registered.snapped
    np.testing.assert_allclose(registered.per_point, expected, atol=1e-6)
    assert "Snapped to voxels." in evaluation.markdown()


def test_register_mode_on_generated_images(tmp_path):
    """Raw int16 ``.img`` files (stored value = HU + 1024) are read and registered; with no network,
    no affine and no refinement the map is the identity, so the registered TRE equals the initial one."""
    root, saved = tmp_path / "dirlab", tmp_path / "saved"
    saved.mkdir()
    case = "4dct:1"
    inhale, exhale = write_case(root, case, seed=11)
    nx, ny, nz = GEOMETRY[case][0]
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij", sparse=True)
    hu = np.where(((x - 128) / 110) ** 2 + ((y - 128) / 90) ** 2 < 1, 40.0, -1000.0)
    hu = np.where(((x - 128) / 80) ** 2 + ((y - 120) / 60) ** 2 + ((z - 47) / 45) ** 2 < 1, -850.0, hu)
    (hu + 1024).astype("<i2").tofile(root / "case1_T00_s.img")
    (hu + 1024).astype("<i2").tofile(root / "case1_T50_s.img")
    settings = DirlabRegistrationSettings(model=None, device="cpu", grid_size=32, refine_iterations=0, affine=False,
                                          save_fields=saved)
    evaluation = evaluate_dirlab(DirlabEvaluationConfig(root=root, cases=[case], registration=settings))
    expected = errors_mm(to_mm(case, inhale), to_mm(case, exhale))
    np.testing.assert_allclose(evaluation.results[case]["registered"].per_point, expected, atol=1e-3)
    details = evaluation.details[case]
    assert details["registration"]["model_used"] is None and details["field_grid_matches_dirlab"] is True
    assert details["registration"]["fixed_image"] == str(root / "case1_T00_s.img")
    assert (saved / "4dct_case1.nii.gz").is_file() and evaluation.metadata["registered_from"] == "register"


def test_find_field_and_resolve_cases(tmp_path):
    root = tmp_path / "dirlab"
    write_case(root, "4dct:2", seed=1)
    assert resolve_cases(["4dct:2", "4DCT:case2"], list_files(root), root) == (["4dct:2"], [])
    with pytest.raises(FileNotFoundError, match="no copd landmark files"):
        resolve_cases(["copd"], list_files(root), root)
    fields = tmp_path / "fields"
    fields.mkdir()
    (fields / "4dct-2.mha").write_bytes(b"")
    assert find_field(fields, "4dct:2") == fields / "4dct-2.mha"
    (fields / "case2.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="several fields for case 4dct:2"):
        find_field(fields, "4dct:2")
    with pytest.raises(FileNotFoundError, match="no deformation field for case 4dct:1"):
        find_field(fields, "4dct:1")


def test_bad_inputs_raise_before_writing(tmp_path):
    root, out = tmp_path / "dirlab", tmp_path / "res"
    write_case(root, "4dct:1", seed=2)
    with pytest.raises(ValueError, match="fixed_phase"):
        evaluate_dirlab(DirlabEvaluationConfig(root=root, cases=["4dct:1"], fixed_phase="mid"), out)
    with pytest.raises(ValueError, match="not both"):
        evaluate_dirlab(DirlabEvaluationConfig(root=root, fields=tmp_path, registration=DirlabRegistrationSettings()))
    with pytest.raises(FileNotFoundError, match="no T00 image for DIR-LAB case 4dct:1"):
        evaluate_dirlab(DirlabEvaluationConfig(root=root, cases=["4dct:1"], registration=DirlabRegistrationSettings()),
                        out)
    fields = tmp_path / "fields"
    fields.mkdir()
    small = ImageGrid((4, 4, 4), (5.0, 5.0, 5.0), (100.0, 100.0, -100.0), dirlab_grid("4dct:1").direction)
    write_field(Deformation.identity(small), fields / "case1.nii.gz")  # covers almost none of the landmarks
    with pytest.raises(ValueError, match="case 4dct:1, field"):
        evaluate_dirlab(DirlabEvaluationConfig(root=root, cases=["4dct:1"], fields=fields), out)
    assert not out.exists()
    out.write_text("a file")
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_dirlab(DirlabEvaluationConfig(root=root, cases=["4dct:1"]), out)
