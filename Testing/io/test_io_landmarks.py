"""Landmark files: DIR-LAB voxel text, Slicer markups (.mrk.json, .fcsv) and CSV, LPS/RAS handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import oblique_grid

from MLVIRNETLib.core.geometry import lps_to_ras
from MLVIRNETLib.io.dirlab import dirlab_grid
from MLVIRNETLib.io.landmarks import read_landmarks, write_landmarks


@pytest.fixture
def lm_grid():
    return oblique_grid(size=(40, 30, 20), spacing=(0.8, 1.1, 2.5), origin=(-101.5, 60.25, -233.0))


POINTS_1BASED = np.array([[1, 1, 1], [40, 30, 20], [12, 7, 3], [33.5, 2.25, 19]])


@pytest.mark.parametrize(
    "text",
    [
        "1\t1\t1\n40\t30\t20\n12\t7\t3\n33.5\t2.25\t19\n",  # tabs
        "1 1 1\r\n40 30 20\r\n12 7 3\r\n33.5 2.25 19\r\n",  # spaces, CRLF
        " 1.000000\t 1.000000\t 1.000000\t\n 40.0\t 30.0\t 20.0\t\n12 7 3\n33.5  2.25   19\n\n",  # floats, trailing tabs
    ],
)
def test_dirlab_text_variants(tmp_path, lm_grid, text):
    path = tmp_path / "lm.txt"
    path.write_bytes(text.encode())
    pts = read_landmarks(path, lm_grid)
    assert np.allclose(pts, lm_grid.index_to_world(POINTS_1BASED - 1.0), atol=1e-9)


def test_dirlab_requires_grid(tmp_path):
    (tmp_path / "lm.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="grid is needed"):
        read_landmarks(tmp_path / "lm.txt")


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 3\n4 5\n", "line 2: expected 3 values"),
        ("1 2 3 4\n", "line 1: expected 3 values"),
        ("1 2 3\n4 five 6\n", "'five' is not a number"),
        ("1 2 3\n0 5 6\n", "outside the image"),
        ("41 5 6\n", "outside the image"),
        ("1 2 21\n", "outside the image"),
        ("\n\n", "holds no points"),
    ],
)
def test_dirlab_errors(tmp_path, lm_grid, text, message):
    (tmp_path / "lm.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_landmarks(tmp_path / "lm.txt", lm_grid)


def test_missing_and_unknown(tmp_path, lm_grid):
    with pytest.raises(FileNotFoundError):
        read_landmarks(tmp_path / "nope.txt", lm_grid)
    (tmp_path / "a.xyz").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="cannot tell the landmark format"):
        read_landmarks(tmp_path / "a.xyz", lm_grid)


@pytest.mark.parametrize("suffix", [".mrk.json", ".fcsv", ".csv", ".txt"])
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_write_read_round_trip(tmp_path, lm_grid, suffix, system):
    rng = np.random.default_rng(5)
    pts = lm_grid.index_to_world(rng.uniform(0, 19, size=(7, 3)))
    path = write_landmarks(pts, tmp_path / f"p{suffix}", grid=lm_grid, coordinate_system=system)
    back = read_landmarks(path, lm_grid)
    assert np.allclose(back, pts, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_markups_json_ras_is_flipped_on_disk(tmp_path):
    pts = np.array([[10.0, -20.0, 30.0], [-1.5, 2.5, -3.5]])
    path = write_landmarks(pts, tmp_path / "p.mrk.json", coordinate_system="RAS")
    doc = json.loads(path.read_text())
    assert doc["markups"][0]["coordinateSystem"] == "RAS"
    assert np.allclose([cp["position"] for cp in doc["markups"][0]["controlPoints"]], lps_to_ras(pts))


def test_slicer_style_markups_json(tmp_path):
    """A file as Slicer 5 writes it (extra fields, two markups, RAS and LPS)."""
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "RAS",
                "coordinateUnits": "mm",
                "locked": False,
                "controlPoints": [
                    {"id": "1", "label": "F-1", "position": [1.0, 2.0, 3.0], "orientation": [-1, 0, 0, 0, -1, 0, 0, 0, 1], "selected": True},
                ],
                "measurements": [],
                "display": {"visibility": True},
            },
            {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"id": "1", "position": [4.0, 5.0, 6.0]}]},
        ],
    }
    (tmp_path / "s.mrk.json").write_text(json.dumps(doc))
    assert np.allclose(read_landmarks(tmp_path / "s.mrk.json"), [[-1.0, -2.0, 3.0], [4.0, 5.0, 6.0]])


@pytest.mark.parametrize(
    "header, expected",
    [
        ("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n", [1.0, 2.0, 3.0]),
        ("# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n", [-1.0, -2.0, 3.0]),
        ("# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\n", [-1.0, -2.0, 3.0]),
        ("# Markups fiducial file version = 4.6\n# CoordinateSystem = 1\n", [1.0, 2.0, 3.0]),
        ("# Markups fiducial file version = 4.4\n", [-1.0, -2.0, 3.0]),  # no line: RAS
    ],
)
def test_fcsv_coordinate_system_header(tmp_path, header, expected):
    text = header + "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    text += "vtkMRMLMarkupsFiducialNode_0,1,2,3,0,0,0,1,1,1,0,F-1,,\n"
    (tmp_path / "a.fcsv").write_text(text)
    assert np.allclose(read_landmarks(tmp_path / "a.fcsv"), [expected])


@pytest.mark.parametrize(
    "text",
    ["x,y,z\n1,2,3\n-4.5,5,6e1\n", "label,z,y,x,note\nA,3,2,1,\nB,6e1,5,-4.5,hi\n", "1,2,3\n-4.5,5,60\n", "1;2;3\n-4.5;5;60\n"],
)
def test_csv_variants(tmp_path, text):
    (tmp_path / "a.csv").write_text(text)
    assert np.allclose(read_landmarks(tmp_path / "a.csv"), [[1, 2, 3], [-4.5, 5, 60]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("1,2,3,4\n", "exactly 3 columns"),
        ("a,b,c\n1,2,3\n", "must name columns x, y and z"),
        ("x,y,z\n1,2\n", "expected 3 columns, found 2"),
        ("x,y,z\n1,2,abc\n", "'abc' is not a number"),
        ("x,y,z\n", "holds no points"),
    ],
)
def test_csv_errors(tmp_path, text, message):
    (tmp_path / "a.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_landmarks(tmp_path / "a.csv")


def test_write_errors_leave_nothing(tmp_path, lm_grid):
    with pytest.raises(ValueError, match=r"shape \(P, 3\)"):
        write_landmarks(np.zeros((3, 2)), tmp_path / "a.csv")
    with pytest.raises(ValueError, match="needs the image grid"):
        write_landmarks(np.zeros((3, 3)), tmp_path / "a.txt")
    with pytest.raises(ValueError, match="2 labels for 3 points"):
        write_landmarks(np.zeros((3, 3)), tmp_path / "a.fcsv", labels=["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_real_dirlab_files(shared_data):
    folder = shared_data / "dirlab" / "4dct_landmarks"
    grid = dirlab_grid("4dct:1")
    tabbed = read_landmarks(folder / "Case1_300_T00_xyz.txt", grid)
    crlf = read_landmarks(folder / "original_format_Case1_300_T00_xyz.txt", grid)
    assert tabbed.shape == (300, 3)
    assert np.array_equal(tabbed, crlf)
    # first line of the file is "211 139 66": voxel (210, 138, 65), slices run head -> feet
    assert np.allclose(tabbed[0], [210 * 0.97, 138 * 0.97, -65 * 2.5])
    floats = read_landmarks(shared_data / "dirlab" / "copd" / "copd1_300_eBH_xyz_r1.txt", dirlab_grid("copd:1"))
    assert floats.shape == (300, 3)
    assert np.allclose(floats[0], [193 * 0.625, 256 * 0.625, -6 * 2.5])
