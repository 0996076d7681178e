"""The cohort library: manifest checks naming the line, shards, skipping done pairs, recording, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MLVIRNETLib.core.progress import RegistrationCancelled
from MLVIRNETLib.evaluation.cohort import CohortConfig, Shard, read_manifest, run_cohort
from MLVIRNETLib.registration.options import RegistrationOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ct(path: Path, shift_vox: float) -> Path:
    """A 24^3 CT-like volume (2 mm voxels): dark blobs in soft tissue, shifted along x by ``shift_vox``."""
    z, y, x = np.meshgrid(*[np.arange(24.0)] * 3, indexing="ij")
    x = x - shift_vox
    blobs = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 18.0)
                for cx, cy, cz in ((8, 9, 10), (15, 14, 12), (11, 16, 15)))
    image = sitk.GetImageFromArray((40.0 - 900.0 * blobs).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    _ct(root / "fixed.nii.gz", 0.0)
    _ct(root / "moving.nii.gz", 1.0)
    np.savetxt(root / "f.csv", [[16.0, 18.0, 20.0], [30.0, 28.0, 24.0]], delimiter=",", header="x,y,z", comments="")
    np.savetxt(root / "m.csv", [[18.0, 18.0, 20.0], [32.0, 28.0, 24.0]], delimiter=",", header="x,y,z", comments="")
    (root / "one.csv").write_text("x,y,z\n1,2,3\n")
    (root / "junk.nii.gz").write_bytes(b"junk")
    return root


def _manifest(folder: Path, text: str, name: str = "manifest.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


CONFIG = CohortConfig(options=RegistrationOptions(grid={"size": (16, 16, 16), "crop_to_lungs": False},
                                                  refinement={"iterations": 2}, affine=None), model=None, device="cpu")


@pytest.mark.parametrize("text,match", [
    ("id,fixed\na,fixed.nii.gz\n", "line 1: missing column(s) ['moving']"),
    ("id,fixed,moving,fixed_landmark\na,fixed.nii.gz,moving.nii.gz,f.csv\n", "unknown column(s) ['fixed_landmark']"),
    ("id,fixed,moving\n", "lists no pairs"),
    ("id,fixed,moving\na,fixed.nii.gz,moving.nii.gz\nb,fixed.nii.gz,nowhere.nii.gz\n",
     "line 3 (id 'b'): moving not found"),
    ("id,fixed,moving\na,fixed.nii.gz,moving.nii.gz\na,fixed.nii.gz,moving.nii.gz\n",
     "line 3 (id 'a'): id 'a' repeats line 2"),
    ("id,fixed,moving\n../up,fixed.nii.gz,moving.nii.gz\n", "line 2 (id '../up'): an id may hold only"),
    ("id,fixed,moving\n,fixed.nii.gz,moving.nii.gz\n", "line 2: empty id"),
    ("id,fixed,moving\na,fixed.nii.gz,\n", "no moving image"),
    ("id,fixed,moving\na,fixed.nii.gz,moving.nii.gz,extra\n", "line 2 (id 'a'): expected 3 cells"),
    ("id,fixed,moving\na,fixed.nii.gz\n", "expected 3 cells"),
    ("id,fixed,moving,fixed_landmarks,moving_landmarks\na,fixed.nii.gz,moving.nii.gz,f.csv,\n", "give both"),
    ("id,fixed,moving,fixed_landmarks,moving_landmarks\na,fixed.nii.gz,moving.nii.gz,f.csv,fixed.nii.gz\n",
     "cannot tell the landmark format"),
])
def test_the_manifest_is_checked_up_front_naming_the_line(folder, text, match) -> None:
    with pytest.raises(ValueError) as info:
        read_manifest(_manifest(folder, text, "bad.csv"))
    assert match in str(info.value) and "bad.csv" in str(info.value)


def test_paths_are_relative_to_the_manifest_or_absolute(folder) -> None:
    pairs = read_manifest(_manifest(folder, f"\ufeffid, fixed ,moving,fixed_mask\n"
                                            f"a,fixed.nii.gz,{folder / 'moving.nii.gz'},\n\n"))
    assert [p.id for p in pairs] == ["a"] and pairs[0].fixed == folder / "fixed.nii.gz"
    assert pairs[0].moving == folder / "moving.nii.gz" and pairs[0].fixed_mask is None and pairs[0].line == 2


def test_shards_split_the_pairs_exactly_once() -> None:
    pairs = list(range(7))
    for n in (1, 2, 3, 7, 9):
        parts = [Shard(i, n).select(pairs) for i in range(1, n + 1)]  # type: ignore[arg-type]
        assert sorted(p for part in parts for p in part) == pairs
    assert Shard.parse(" 2/3 ") == Shard(2, 3) and Shard(2, 3).select(pairs) == [1, 4]  # type: ignore[arg-type]
    for bad in ("0/3", "4/3", "1/0", "-1/2", "1", "a/b", "1/2/3"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)


def test_run_records_failures_skips_done_pairs_and_reports_one_progress(folder, tmp_path) -> None:
    pairs = read_manifest(_manifest(folder, "id,fixed,moving,fixed_landmarks,moving_landmarks\n"
                                            "a,fixed.nii.gz,moving.nii.gz,f.csv,m.csv\n"
                                            "bad,fixed.nii.gz,junk.nii.gz,,\n"
                                            "count,fixed.nii.gz,moving.nii.gz,f.csv,one.csv\n"
                                            "c,fixed.nii.gz,moving.nii.gz,,\n"))
    seen: list[tuple[float, str]] = []
    result = run_cohort(pairs, tmp_path / "out", CONFIG, progress=lambda f, m: seen.append((f, m)))
    assert [(o.id, o.status) for o in result.outcomes] == [("a", "done"), ("bad", "failed"), ("count", "failed"),
                                                           ("c", "done")]
    assert "junk.nii.gz" in result.outcomes[1].error and "landmark counts differ" in result.outcomes[2].error
    assert not (tmp_path / "out" / "count" / "field.nii.gz").exists()  # failed before registering
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1][1].startswith("4/4 c:")
    rows = {r["id"]: r for r in result.rows}
    assert rows["a"]["tre_before_mean"] == pytest.approx(2.0) and rows["c"]["tre_before_mean"] is None
    doc = json.loads((tmp_path / "out" / "a" / "result.json").read_text())
    assert doc["tre_after_mm"]["n"] == 2 and doc["field"] == "field.nii.gz"

    again = run_cohort(pairs, tmp_path / "out", CohortConfig(**{**CONFIG.__dict__, "shard": Shard(1, 2)}))
    assert [(o.id, o.status) for o in again.outcomes] == [("a", "skipped"), ("count", "failed")]
    assert [r["status"] for r in again.rows] == ["done", "failed", "failed", "done"]


def test_cancel_stops_the_run_and_the_pair_is_not_done(folder, tmp_path) -> None:
    pairs = read_manifest(_manifest(folder, "id,fixed,moving\na,fixed.nii.gz,moving.nii.gz\n", "one_pair.csv"))
    with pytest.raises(RegistrationCancelled):
        run_cohort(pairs, tmp_path / "out", CONFIG, cancel=lambda: True)
    assert not (tmp_path / "out" / "a" / "result.json").exists()
    assert not (tmp_path / "out" / "a" / "error.txt").exists()


def test_an_input_where_an_output_goes_is_refused(folder, tmp_path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    _ct(out / "a" / "field.nii.gz", 0.0)
    pairs = read_manifest(_manifest(folder, f"id,fixed,moving\na,{out / 'a' / 'field.nii.gz'},moving.nii.gz\n",
                                    "clash.csv"))
    with pytest.raises(ValueError, match="where an output goes"):
        run_cohort(pairs, out, CONFIG)
