"""DIR-LAB: geometry table, raw reader (exact byte layout), file finder, the paper's initial errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.evaluation.metrics import TREResult, tre
from MLVIRNETLib.io.dirlab import (
    DIRLAB_4DCT,
    DIRLAB_COPD,
    apply_dirlab_geometry,
    dirlab_grid,
    find_dirlab_case_files,
    parse_case,
    read_dirlab_image,
)
from MLVIRNETLib.io.landmarks import read_landmarks

# Table 1 of Hering et al., MICCAI 2019, column "Initial": mean (sd) in mm
PAPER_INITIAL = {
    1: (3.89, 2.78), 2: (4.34, 3.90), 3: (6.94, 4.05), 4: (9.83, 4.85), 5: (7.48, 5.50),
    6: (10.89, 6.96), 7: (11.03, 7.42), 8: (14.99, 9.00), 9: (7.92, 3.97), 10: (7.30, 6.34),
}
COPD_PUBLISHED_MEAN = {1: 26.33, 2: 21.79, 3: 12.64, 4: 29.58}


@pytest.mark.parametrize(
    "case, size, spacing",
    [("4dct:1", (256, 256, 94), 0.97), ("4dct:8", (512, 512, 128), 0.97), ("4dct:2", (256, 256, 112), 1.16),
     ("copd:4", (512, 512, 126), 0.590), ("copd:10", (512, 512, 135), 0.742)],
)
def test_dirlab_grid(case, size, spacing):
    g = dirlab_grid(case)
    assert g.size == size and g.spacing == (spacing, spacing, 2.5)
    assert g.origin == (0.0, 0.0, 0.0)
    assert np.allclose(g.direction_matrix, np.diag([1.0, 1.0, -1.0]))  # slice index runs head -> feet


def test_tables_complete():
    assert sorted(DIRLAB_4DCT) == list(range(1, 11)) and sorted(DIRLAB_COPD) == list(range(1, 11))


@pytest.mark.parametrize("bad", ["4dct:11", "copd:0", "case1", "4dct", "dirlab:3", ""])
def test_parse_case_errors(bad):
    with pytest.raises(ValueError, match="case"):
        parse_case(bad)


def test_parse_case_variants():
    assert parse_case("4DCT:case01").name == "4dct:1"
    assert parse_case(" copd : 7 ").slug == "copd_case7"


def write_raw(path, stored_zyx: np.ndarray) -> None:
    """DIR-LAB byte layout: little-endian int16, x fastest, no header."""
    stored_zyx.astype("<i2").tofile(path)


def test_read_raw_case1_layout_with_real_landmarks(tmp_path, shared_data):
    case = "4dct:1"
    grid = dirlab_grid(case)
    nx, ny, nz = grid.size
    assert (nx, ny, nz) == (256, 256, 94)
    lm_file = shared_data / "dirlab" / "4dct_landmarks" / "Case1_300_T00_xyz.txt"
    idx = np.loadtxt(lm_file).astype(int) - 1  # 0-based x, y, z
    stored = np.full((nz, ny, nx), 1024 - 1000, dtype=np.int16)  # air: -1000 HU
    marks = 24 + np.arange(len(idx), dtype=np.int16) % 1000  # stored values of the marks
    stored[idx[:, 2], idx[:, 1], idx[:, 0]] = marks
    path = tmp_path / "case1_T00_s.img"
    write_raw(path, stored)
    assert path.stat().st_size == 256 * 256 * 94 * 2

    image = read_dirlab_image(path, case)
    assert image.GetPixelID() == sitk.sitkInt16
    assert ImageGrid.from_sitk(image) == grid
    hu = sitk.GetArrayFromImage(image)
    assert hu[0, 0, 0] == -1000
    # every real landmark, converted to mm, lands on its marked voxel of the image read here
    world = read_landmarks(lm_file, grid)
    for p, (x, y, z) in zip(world, idx):
        assert image.TransformPhysicalPointToIndex(tuple(p)) == (x, y, z)
    values = np.array([image.GetPixel(image.TransformPhysicalPointToIndex(tuple(p))) for p in world])
    last_mark_per_voxel = {tuple(v): m for v, m in zip(idx, marks)}
    assert np.array_equal(values, [last_mark_per_voxel[tuple(v)] - 1024 for v in idx])


def test_read_raw_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_dirlab_image(tmp_path / "missing.img", "4dct:1")
    path = tmp_path / "case2_T00_s.img"
    write_raw(path, np.zeros((94, 256, 256), dtype=np.int16))  # case 1's size
    with pytest.raises(ValueError, match=r"needs 14680064 bytes \(that size fits case 4dct:1\)"):
        read_dirlab_image(path, "4dct:2")
    (tmp_path / "short.img").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="has 100 bytes"):
        read_dirlab_image(tmp_path / "short.img", "copd:1")


@pytest.mark.parametrize(
    "case, names",
    [
        ("4dct:1", ["Case1Pack/ExtremePhases/Case1_300_T00_xyz.txt", "Case1Pack/ExtremePhases/Case1_300_T50_xyz.txt",
                    "Case1Pack/Images/case1_T00_s.img", "Case1Pack/Images/case1_T50_s.img"]),
        ("4dct:6", ["Case6Pack/case6_dirLab300_T00_xyz.txt", "Case6Pack/case6_dirLab300_T50_xyz.txt",
                    "Case6Pack/Images/case6_T00-ssm.img", "Case6Pack/Images/case6_T50-ssm.img"]),
        ("4dct:8", ["Case8Deploy/ExtremePhases/case8_dirLab300_T00_xyz.txt", "Case8Deploy/ExtremePhases/case8_dirLab300_T50_xyz.txt",
                    "Case8Deploy/Images/case8_T00.img", "Case8Deploy/Images/case8_T50.img"]),
        ("copd:1", ["copd1/copd1_300_iBH_xyz_r1.txt", "copd1/copd1_300_eBH_xyz_r1.txt",
                    "copd1/copd1_iBHCT.img", "copd1/copd1_eBHCT.img"]),
    ],
)
def test_find_case_files_name_variants(tmp_path, case, names):
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    # distractors: case 10 must not match case 1, other phases must not match
    for extra in ["Case10Pack/Case10_300_T00_xyz.txt", "Case1Pack/Images/case1_T10_s.img", "copd10/copd10_iBHCT.img"]:
        (tmp_path / extra).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / extra).write_text(extra)
    found = find_dirlab_case_files(tmp_path, case, require_images=True)
    assert [found.inhale_landmarks, found.exhale_landmarks, found.inhale_image, found.exhale_image] == [
        tmp_path / n for n in names
    ]


def test_find_case_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root folder not found"):
        find_dirlab_case_files(tmp_path / "nope", "4dct:1")
    (tmp_path / "Case1_300_T00_xyz.txt").write_text("1 1 1\n")
    with pytest.raises(FileNotFoundError, match="no T50 landmark file"):
        find_dirlab_case_files(tmp_path, "4dct:1")
    (tmp_path / "Case1_300_T50_xyz.txt").write_text("1 1 1\n")
    assert find_dirlab_case_files(tmp_path, "4dct:1").inhale_image is None
    with pytest.raises(FileNotFoundError, match="no T00 image"):
        find_dirlab_case_files(tmp_path, "4dct:1", require_images=True)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "case1_300_T00_xyz.txt").write_text("1 1 1\n")  # identical copy: tolerated
    find_dirlab_case_files(tmp_path, "4dct:1")
    (tmp_path / "copy" / "case1_300_T00_xyz.txt").write_text("2 2 2\n")
    with pytest.raises(ValueError, match="several different files"):
        find_dirlab_case_files(tmp_path, "4dct:1")


def _case_results(shared_data, dataset, numbers):
    out = {}
    for n in numbers:
        case = f"{dataset}:{n}"
        files = find_dirlab_case_files(shared_data / "dirlab", case)
        grid = dirlab_grid(case)
        out[n] = tre(read_landmarks(files.inhale_landmarks, grid), read_landmarks(files.exhale_landmarks, grid))
    return out


def test_initial_error_reproduces_paper_table1(shared_data):
    results = _case_results(shared_data, "4dct", range(1, 11))
    for n, (mean, sd) in PAPER_INITIAL.items():
        assert results[n].n == 300
        assert round(results[n].mean, 2) == pytest.approx(mean, abs=1e-9), f"case {n}"
        assert round(results[n].std, 2) == pytest.approx(sd, abs=1e-9), f"case {n}"
    total = TREResult.pooled(list(results.values()))
    assert total.n == 3000
    assert (round(total.mean, 2), round(total.std, 2)) == (8.46, 6.58)


def test_initial_error_copd(shared_data):
    results = _case_results(shared_data, "copd", range(1, 5))
    for n, mean in COPD_PUBLISHED_MEAN.items():
        assert round(results[n].mean, 2) == pytest.approx(mean, abs=1e-9)


def test_copd_masks_agree_with_landmarks_and_orientation(shared_data):
    """The shared COPD 1 lung mask (saved with identity direction) re-stamped with the DIR-LAB
    geometry: the landmarks, converted with the same geometry, fall inside the lungs."""
    mask = apply_dirlab_geometry(sitk.ReadImage(str(shared_data / "dirlab" / "copd" / "copd1_iBHCT_masks.nii.gz")), "copd:1")
    grid = dirlab_grid("copd:1")
    assert ImageGrid.from_sitk(mask) == grid
    pts = read_landmarks(shared_data / "dirlab" / "copd" / "copd1_300_iBH_xyz_r1.txt", grid)
    inside = [mask.GetPixel(mask.TransformPhysicalPointToIndex(tuple(p))) > 0 for p in pts]
    assert np.mean(inside) >= 0.99
    # apex at slice 0 (superior = larger LPS z): lung area grows slowly from slice 0, drops fast at the base
    area = (sitk.GetArrayViewFromImage(mask) > 0).sum(axis=(1, 2))
    top = grid.index_to_world(np.array([0.0, 0.0, 0.0]))[2]
    bottom = grid.index_to_world(np.array([0.0, 0.0, grid.size[2] - 1.0]))[2]
    assert top > bottom
    first, last = np.flatnonzero(area > 0)[[0, -1]]
    peak = int(np.argmax(area))
    assert peak - first > last - peak
    with pytest.raises(ValueError, match="does not match DIR-LAB case"):
        apply_dirlab_geometry(mask, "copd:2")
