"""``mlvirnet batch``: a cohort with a failing pair, resume after SIGKILL, shards, summaries, bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cohort_data import FAST, SHIFTS_MM, write_cohort, write_pair

from MLVIRNETLib.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """The manifest of three registrable pairs with landmarks."""
    return write_cohort(tmp_path_factory.mktemp("cohort") / "good")


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/result.json")}


def test_a_failing_pair_is_recorded_and_the_others_are_done(tmp_path, capsys) -> None:
    manifest = write_cohort(tmp_path / "cohort", broken=True)
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "-o", str(out), *FAST, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "pair p2 failed" in captured.err and "Traceback" not in captured.err
    assert "2 registered, 0 done before, 1 failed" in captured.out
    for pid in ("p0", "p1"):
        assert (out / pid / "field.nii.gz").is_file() and (out / pid / "result.json").is_file()
    assert (out / "p2" / "error.txt").is_file() and not (out / "p2" / "result.json").exists()
    rows = _summary(out)
    assert [(r["id"], r["status"]) for r in rows.values()] == [("p0", "done"), ("p1", "done"), ("p2", "failed")]
    for k, pid in enumerate(("p0", "p1")):  # every landmark moved by the same shift: TRE before = |shift|
        assert float(rows[pid]["tre_before_mean"]) == pytest.approx(math.dist(SHIFTS_MM[k], (0, 0, 0)), abs=1e-3)
        assert math.isfinite(float(rows[pid]["tre_after_mean"])) and float(rows[pid]["seconds"]) > 0
        assert rows[pid]["landmarks"] == "5" and float(rows[pid]["folding_percent"]) >= 0.0
    assert rows["p2"]["error"] and rows["p2"]["tre_after_mean"] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "failed": 1, "pending": 0}
    assert summary["tre_pooled_mm"]["before"]["n"] == 10
    assert (out / "tre_boxplot.png").is_file() == HAVE_MATPLOTLIB
    result = json.loads((out / "p0" / "result.json").read_text())
    assert result["tre_after_mm"]["n"] == 5 and set(result["timings_s"]) >= {"refine", "field", "total"}

    # again: the done pairs are not redone; the broken one is tried again, fixed, then done
    before = _mtimes(out)
    assert main(["batch", str(manifest), "-o", str(out), *FAST, "--quiet"]) == 1
    assert "0 registered, 2 done before, 1 failed" in capsys.readouterr().out
    assert _mtimes(out) == before
    write_pair(manifest.parent, "p2", SHIFTS_MM[2])
    assert main(["batch", str(manifest), "-o", str(out), *FAST, "--quiet"]) == 0
    assert "1 registered, 2 done before, 0 failed" in capsys.readouterr().out
    assert not (out / "p2" / "error.txt").exists() and _summary(out)["p2"]["status"] == "done"
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_a_killed_run_resumes_without_redoing_done_pairs(good, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "MLVIRNETLib.cli", "batch", str(good), "-o", str(out), *FAST,
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 600
        while not (out / "p0" / "result.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert (out / "p0" / "result.json").is_file()
    before = _mtimes(out)
    assert main(["batch", str(good), "-o", str(out), *FAST, "--quiet"]) == 0
    assert f"{3 - len(before)} registered, {len(before)} done before, 0 failed" in capsys.readouterr().out
    after = _mtimes(out)
    assert set(after) == {"p0", "p1", "p2"}
    assert all(after[pid] == t for pid, t in before.items())
    assert {r["status"] for r in _summary(out).values()} == {"done"}


def test_shards_cover_every_pair_once_and_progress_is_plain_lines(good, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["batch", str(good), "-o", str(out), "--shard", "1/2", *FAST]) == 0
    captured = capsys.readouterr()
    assert "shard 1/2: 2 pairs: 2 registered" in captured.out
    assert {k: r["status"] for k, r in _summary(out).items()} == {"p0": "done", "p1": "pending", "p2": "done"}
    progress = [line for line in captured.err.splitlines() if line.startswith("batch: ")]
    assert progress and progress[-1].startswith("batch: 100% 2/2 p2")  # stderr is not a terminal: plain lines
    assert all(len(line) <= 200 for line in captured.err.splitlines()) and "\r" not in captured.err
    first = _mtimes(out)
    assert main(["batch", str(good), "-o", str(out), "--shard", "2/2", *FAST, "--quiet", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["run"] == {"done": 1, "skipped": 0, "failed": 0}
    assert info["cohort"] == {"done": 3, "failed": 0, "pending": 0}
    assert all(_mtimes(out)[pid] == t for pid, t in first.items())


def _fails(args: list[str], capsys, match: str) -> None:
    assert main(["batch", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlvirnet batch: error:") and match in err[0], err


def test_bad_input_is_one_line_and_writes_nothing(good, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    for shard in ("0/2", "3/2", "1/0", "one/two"):
        _fails([str(good), "-o", str(out), "--shard", shard, *FAST], capsys, "shard")
    _fails([str(tmp_path / "missing.csv"), "-o", str(out), *FAST], capsys, "manifest not found")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,fixed,moving\na,{good.parent / 'p0_fixed.nii.gz'},{good.parent / 'p0_moving.nii.gz'}\n"
                   f"b,{good.parent / 'p1_fixed.nii.gz'},{tmp_path / 'nowhere.nii.gz'}\n")
    _fails([str(bad), "-o", str(out), *FAST], capsys, "line 3 (id 'b'): moving not found")
    _fails([str(good), "-o", str(out), "--refine=-1", *FAST[:3]], capsys, "--refine")
    assert not out.exists()
    afile = tmp_path / "a_file"
    afile.write_text("x")
    _fails([str(good), "-o", str(afile), *FAST], capsys, "not a folder")
    if not __import__("torch").cuda.is_available():
        _fails([str(good), "-o", str(out), *FAST, "--device", "cuda"], capsys, "no CUDA GPU")
    assert not out.exists()
