"""Cohort runs and inputs that cannot go silently wrong: outputs never replace inputs, manifests with
repeated or mis-cased columns, resume that compares inputs and settings, damaged results, ids that
would clash with outputs, concurrent runs with kill -9, a full disk, a crafted .h5, Slicer landmarks
marked missing. Real subprocesses, files and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from cohort_data import FAST, write_cohort, write_pair

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "MLVIRNETLib.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _popen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "MLVIRNETLib.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("safety") / "c")


def test_the_manifest_is_never_an_output(cohort, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("summary.csv", "summary.json", "tre_boxplot.png"):
        manifest = out / name
        manifest.write_text(cohort.read_text().replace(",p", f",{cohort.parent}/p"))
        before = manifest.read_bytes()
        r = _cli("batch", str(manifest), "-o", str(out), *FAST, "--quiet")
        assert r.returncode == 2 and "refusing to overwrite an input" in r.stderr, r.stderr
        assert manifest.read_bytes() == before and not any(p.is_dir() for p in out.iterdir())
        manifest.unlink()


@pytest.mark.parametrize("header,hint", [
    ("id,fixed,moving,moving", "appear more than once"),
    ("id;fixed;moving", "separated by commas"),
    ("ID,Fixed,Moving", "lower case"),
])
def test_bad_headers_get_a_hint(cohort, tmp_path, header, hint) -> None:
    manifest = tmp_path / "m.csv"
    sep = ";" if ";" in header else ","
    cells = sep.join(["p0", str(cohort.parent / "p0_fixed.nii.gz"), str(cohort.parent / "p0_moving.nii.gz")]
                     + ([str(cohort.parent / "p0_fixed.nii.gz")] if header.count(",") == 3 else []))
    manifest.write_text(f"{header}\n{cells}\n")
    r = _cli("batch", str(manifest), "-o", str(tmp_path / "out"), *FAST, "--quiet")
    assert r.returncode == 2 and hint in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_as_manifest_and_ids_that_clash_are_refused_before_work(cohort, tmp_path) -> None:
    r = _cli("batch", str(tmp_path), "-o", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 2 and "is a folder; give the CSV file" in r.stderr
    fixed, moving = cohort.parent / "p0_fixed.nii.gz", cohort.parent / "p0_moving.nii.gz"
    for pid, problem in (("summary.csv", "name of a cohort output"), ("a" * 300, "bytes long")):
        manifest = tmp_path / "ids.csv"
        manifest.write_text(f"id,fixed,moving\nok,{fixed},{moving}\n{pid},{fixed},{moving}\n")
        r = _cli("batch", str(manifest), "-o", str(tmp_path / "out"), *FAST, "--quiet")
        assert r.returncode == 2 and problem in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()  # nothing registered
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ok").write_text("a file where the pair folder goes")
    manifest.write_text(f"id,fixed,moving\nok,{fixed},{moving}\n")
    r = _cli("batch", str(manifest), "-o", str(tmp_path / "out"), *FAST, "--quiet")
    assert r.returncode == 2 and "exists and is not a folder" in r.stderr and "File exists" not in r.stderr


def test_resume_redoes_changed_damaged_and_incomplete_pairs(cohort, tmp_path) -> None:
    out = tmp_path / "out"
    r = _cli("batch", str(cohort), "-o", str(out), *FAST, "--quiet", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["run"]["done"] == 3, r.stderr
    doc = json.loads((out / "p0" / "result.json").read_text())
    assert doc["inputs"]["fixed"]["path"] == str((cohort.parent / "p0_fixed.nii.gz").absolute())
    assert doc["inputs"]["fixed"]["manifest_path"] == "p0_fixed.nii.gz" and doc["quality"]["ok"] in (True, False)
    r = _cli("batch", str(cohort), "-o", str(out), *FAST, "--quiet", "--json")
    assert json.loads(r.stdout)["run"] == {"done": 0, "skipped": 3, "failed": 0}
    (out / "p0" / "field.nii.gz").unlink()  # an output gone
    (out / "p1" / "result.json").write_text("{}")  # damaged
    r = _cli("batch", str(cohort), "-o", str(out), *FAST, "--quiet", "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["registered"] == ["p0", "p1"], r.stderr
    assert "field.nii.gz are missing" in info["redone"]["p0"] and "incomplete" in info["redone"]["p1"]
    assert str(out / "p1" / "result.json") in r.stderr and "Traceback" not in r.stderr
    (out / "p2" / "result.json").write_text('{"seconds": 1, "inp')  # truncated
    r = _cli("batch", str(cohort), "-o", str(out), *FAST[:3], "--refine", "4", "--grid-size", "16", "16", "16",
             "--quiet", "--json")
    info = json.loads(r.stdout)  # other settings: everything again; the truncated file named
    assert info["registered"] == ["p0", "p1", "p2"] and "damaged" in info["redone"]["p2"], r.stderr
    assert "settings differ" in info["redone"]["p0"] and "refinement.iterations" in info["redone"]["p0"]


def test_two_concurrent_runs_with_kill_9_do_every_pair_once(tmp_path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    rows = ["id,fixed,moving"]
    for k in range(4):
        paths = write_pair(folder, f"q{k}", (3.0 - k, 2.0, 1.0 + k))
        rows.append(f"q{k},{paths[0].name},{paths[1].name}")
    manifest = folder / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ("batch", str(manifest), "-o", str(out), *FAST[:3], "--refine", "30", "--grid-size", "16", "16",
            "16", "--json")
    a = _popen(*args)
    deadline = time.time() + 120
    while not list(out.glob("*/result.json")) and time.time() < deadline:
        time.sleep(0.05)
    b = _popen(*args)
    time.sleep(1.0)
    a.send_signal(signal.SIGKILL)  # a dies holding a pair's lock, maybe with a temporary half written
    a.wait()
    stdout, stderr = b.communicate(timeout=300)
    assert b.returncode == 0, stderr
    info = json.loads(stdout)
    pids = {p.parent.name: json.loads(p.read_text())["pid"] for p in out.glob("*/result.json")}
    assert sorted(pids) == ["q0", "q1", "q2", "q3"] and not list(out.glob("*/error.txt"))
    by_a = {pid for pid, who in pids.items() if who == a.pid}
    assert by_a and not by_a & set(info["registered"])  # b never redid a pair a had finished
    assert sorted(by_a | set(info["registered"])) == ["q0", "q1", "q2", "q3"]
    assert info["cohort"] == {"done": 4, "failed": 0, "pending": 0}
    assert not [p for p in out.rglob(".*")]  # the killed writer's temporaries are gone


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_stops_the_batch_and_register_keeps_all_outputs_as_before(cohort, tmp_path) -> None:
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "200k"):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        r = _cli("batch", str(cohort), "-o", str(disk / "out"), *FAST, "--quiet")
        assert r.returncode == 2 and "no space left" in r.stderr.lower(), r.stderr
        assert (disk / "out" / "p0" / "result.json").is_file()  # the pair that fitted is done
        assert not (disk / "out" / "p2").exists()  # stopped at once: the last pair never started
        subprocess.run(["rm", "-rf", str(disk / "out")], check=True)
        # register: the field fits, the warped image does not; neither may be published
        fixed, moving = cohort.parent / "p0_fixed.nii.gz", cohort.parent / "p0_moving.nii.gz"
        probe = _cli("register", str(fixed), str(moving), "-o", str(tmp_path / "f.nii.gz"), "--warped",
                     str(tmp_path / "w.nii.gz"), *FAST, "--quiet")
        assert probe.returncode == 0, probe.stderr
        field, warped = (tmp_path / "f.nii.gz").stat().st_size, (tmp_path / "w.nii.gz").stat().st_size
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - field - warped // 2 - 8192))
        r = _cli("register", str(fixed), str(moving), "-o", str(disk / "f.nii.gz"), "--warped",
                 str(disk / "w.nii.gz"), *FAST, "--quiet")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # all as before: nothing
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_crafted_h5_is_one_error_line_without_a_crash(tmp_path) -> None:
    sitk.WriteTransform(sitk.DisplacementFieldTransform(sitk.Image([4, 5, 6], sitk.sitkVectorFloat64, 3)),
                        str(tmp_path / "zero.h5"))
    with h5py.File(tmp_path / "zero.h5", "r+") as f:
        g = f["TransformGroup/0"]
        fixed = g["TransformFixedParameters"][()]
        fixed[:3] = 0
        del g["TransformFixedParameters"], g["TransformParameters"]
        g["TransformFixedParameters"], g["TransformParameters"] = fixed, np.zeros(0)
    (tmp_path / "p.csv").write_text("x,y,z\n1,2,3\n")
    r = _cli("tre", "--fixed-landmarks", str(tmp_path / "p.csv"), "--moving-landmarks", str(tmp_path / "p.csv"),
             "--field", str(tmp_path / "zero.h5"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "size [0, 0, 0]" in r.stderr or "size [0.0, 0.0, 0.0]" in r.stderr
    sitk.WriteTransform(sitk.AffineTransform(3), str(tmp_path / "affine.h5"))
    r = _cli("tre", "--fixed-landmarks", str(tmp_path / "p.csv"), "--moving-landmarks", str(tmp_path / "p.csv"),
             "--field", str(tmp_path / "affine.h5"))
    assert r.returncode == 2 and "holds an AffineTransform" in r.stderr


def _markups(path: Path, points: list, missing: set[int], labels: list[str]) -> Path:
    cps = [{"label": lab, "position": list(p), "positionStatus": "missing" if i in missing else "defined"}
           for i, (lab, p) in enumerate(zip(labels, points))]
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": cps}]}))
    return path


def test_landmarks_marked_missing_are_skipped_and_paired_by_label(tmp_path) -> None:
    pts = [[10.0, 0, 0], [0, 20.0, 0], [0, 0, 30.0]]
    fixed = _markups(tmp_path / "f.mrk.json", pts + [[687.0, 0, 0]], {3}, ["A", "B", "C", "D"])
    moving = _markups(tmp_path / "m.mrk.json", [pts[2], pts[0], [500.0, 1, 1], pts[1]], {2}, ["C", "A", "D", "B"])
    r = _cli("tre", "--fixed-landmarks", str(fixed), "--moving-landmarks", str(moving), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["n"] == 3 and doc["mean"] == 0.0 and doc["max"] == 0.0
    assert doc["skipped_landmarks"] == 2 and doc["paired_by"] == "label"
    r = _cli("tre", "--fixed-landmarks", str(fixed), "--moving-landmarks", str(moving))
    assert "2 landmark(s) skipped" in r.stdout
