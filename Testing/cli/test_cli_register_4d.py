"""``mlvirnet register-4d``: a generated 4-phase 4D-CT end to end with landmarks, resume (a rerun redoes
nothing), a 4-D NIfTI, bad input (one error, exit 2, nothing written), and the real 4D-CT."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MLVIRNETLib.cli import main
from MLVIRNETLib.io.fields import read_field
from MLVIRNETLib.io.landmarks import write_landmarks

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
QUICK = ["--model", "none", "--refine", "8", "--grid-size", "32", "32", "32", "--quiet"]
"""Refinement alone on a 32-voxel working grid: a quick registration of the 3 mm CT."""
NAMES = ["phase00", "phase01", "phase02", "phase03"]


@pytest.fixture(scope="module")
def series(synthetic_4dct_3mm, tmp_path_factory) -> tuple[Path, list[Path], np.ndarray]:
    """The generated 4D-CT as ``phaseNN.nii.gz`` files with one landmark CSV per phase."""
    phases, _, _, points = synthetic_4dct_3mm
    folder = tmp_path_factory.mktemp("fourd")
    (folder / "ct").mkdir()
    marks = []
    for name, image, pts in zip(NAMES, phases, points):
        sitk.WriteImage(image, str(folder / "ct" / f"{name}.nii.gz"))
        marks.append(write_landmarks(pts, folder / f"{name}.csv"))
    return folder / "ct", marks, np.asarray(points)


@pytest.fixture(scope="module")
def done(series, tmp_path_factory) -> tuple[Path, dict, str]:
    folder, marks, _ = series
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["register-4d", str(folder), "-o", str(out), *QUICK, "--json", "--landmarks", *map(str, marks)]
    return out, argv, _run(argv)


def _run(argv) -> dict:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(argv) == 0
    return json.loads(buf.getvalue())


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return {row["phase"]: row for row in csv.DictReader(fh)}


def test_every_phase_gets_a_field_and_the_summary_reads_the_motion(done, series) -> None:
    out, _, info = done
    assert info["registered"] == NAMES and info["done_before"] == [] and info["reference"] == "phase00"
    for name in NAMES:
        assert (out / name / "field.nii.gz").is_file() and (out / name / "result.json").is_file()
    identity = read_field(out / "phase00" / "field.nii.gz")
    assert float(identity.displacement.abs().max()) == 0.0
    rows = _summary(out)
    assert list(rows) == NAMES
    # the cycle: 0, 3, 6, 3 mm of inhalation; phases 1 and 3 are the same image
    assert (info["end_inhale"], info["end_exhale"]) == ("phase02", "phase00")
    volume = {n: float(rows[n]["lung_volume_jacobian_ml"]) for n in NAMES}
    assert volume["phase00"] < volume["phase01"] < volume["phase02"] and volume["phase03"] == volume["phase01"]
    for name in NAMES[1:]:
        row = rows[name]
        assert float(row["tre_mean_mm"]) < 0.7 * float(row["tre_before_mm"]) and row["landmarks"] == "20"
        assert float(row["lung_dice"]) > 0.95 and float(row["si_excursion_mm"]) < 0
        assert row["flagged"] == "False"
    report = json.loads((out / "report.json").read_text())
    assert report["reference_field"].startswith("identity") and report["end_inhale"] == "phase02"
    assert [p["name"] for p in report["phases"]] == NAMES
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["phases"][2]["trajectory"]["true"]) == 20
    assert (out / "motion.png").is_file() == HAVE_MATPLOTLIB


def test_a_rerun_redoes_nothing_and_a_changed_phase_is_redone(done, series, capsys) -> None:
    out, argv, _ = done
    stamps = {n: (out / n / "field.nii.gz").stat().st_mtime_ns for n in NAMES}
    info = _run(argv)
    assert info["registered"] == [] and info["done_before"] == NAMES
    assert {n: (out / n / "field.nii.gz").stat().st_mtime_ns for n in NAMES} == stamps
    changed = series[0] / "phase03.nii.gz"
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    info = _run(argv)
    assert info["registered"] == ["phase03"] and "phase03" in info["redone"]
    assert "the input(s) phase changed since" in capsys.readouterr().err


def test_a_4d_nifti_is_split_into_phases(synthetic_4dct_3mm, tmp_path) -> None:
    phases = synthetic_4dct_3mm[0][:3]
    four_d = sitk.JoinSeries(phases)
    sitk.WriteImage(four_d, str(tmp_path / "fourd.nii.gz"))
    out = tmp_path / "out"
    info = _run(["register-4d", str(tmp_path / "fourd.nii.gz"), "-o", str(out), "--reference", "1", "--model",
                 "none", "--refine", "2", "--grid-size", "16", "16", "16", "--quiet", "--json"])
    assert info["reference"] == "phase01" and info["registered"] == ["phase00", "phase01", "phase02"]
    assert read_field(out / "phase00" / "field.nii.gz").grid.size == phases[1].GetSize()


@pytest.mark.parametrize("case", ["one phase", "2-D phase", "reference out of range", "unknown reference",
                                  "landmark count", "last phase's landmarks unreadable", "last phase's point count"])
def test_bad_input_gives_one_error_and_writes_nothing(series, tmp_path, capsys, case) -> None:
    folder, marks, points = series
    files = [str(folder / f"{n}.nii.gz") for n in NAMES]
    extra: list[str] = []
    if case == "one phase":
        files, message = files[:1], "a 4D-CT needs at least 2 phases, got 1"
    elif case == "2-D phase":
        flat = tmp_path / "flat.nii.gz"
        sitk.WriteImage(sitk.Image(20, 20, sitk.sitkInt16), str(flat))
        files, message = files[:2] + [str(flat)], "flat.nii.gz is a 2-D image"
    elif case == "reference out of range":
        extra, message = ["--reference", "4"], "reference 4 is out of range: there are 4 phases, numbered 0..3"
    elif case == "unknown reference":
        extra, message = ["--reference", "T50"], "reference 'T50' is not a phase; the phases are phase00, phase01"
    elif case == "landmark count":
        extra, message = ["--landmarks", *map(str, marks[:3])], "3 landmark files for 4 phases"
    elif case == "last phase's landmarks unreadable":
        bad = tmp_path / "phase03.csv"
        bad.write_text("not,a\nlandmark,file\n", encoding="utf-8")
        extra, message = ["--landmarks", *map(str, marks[:3]), str(bad)], f"landmarks of phase phase03 ({bad}): "
    else:
        few = write_landmarks(points[3][:5], tmp_path / "phase03.csv")
        extra = ["--landmarks", *map(str, marks[:3]), str(few)]
        message = f"landmarks of phase phase03 ({few}): 5 points, but the reference phase phase00 has 20"
    out = tmp_path / "out"
    assert main(["register-4d", *files, "-o", str(out), *QUICK, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlvirnet register-4d: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_reference_without_lungs_gives_one_error_before_any_registration(tmp_path, capsys) -> None:
    z, y, x = np.mgrid[:20, :24, :24]
    files = []
    for k in range(2):  # a soft-tissue cylinder in air: a body without lungs
        body = np.where((y - 12) ** 2 + (x - 12) ** 2 < 81, 40, -1000) + 10 * np.random.default_rng(k).standard_normal(x.shape)
        image = sitk.GetImageFromArray(body.astype(np.int16))
        image.SetSpacing((8.0, 8.0, 8.0))
        files.append(str(tmp_path / f"soft{k}.nii.gz"))
        sitk.WriteImage(image, files[-1])
    out = tmp_path / "out"
    assert main(["register-4d", *files, "-o", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlvirnet register-4d: error: reference phase soft0: no lung found") and len(err.splitlines()) == 1
    assert "the motion summary is measured in the reference phase's lungs" in err and not out.exists()


def test_the_real_4dct_breathes(shared_data, tmp_path) -> None:
    folder = shared_data / "4dct" / "tcia4dlung_117"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    out = tmp_path / "out"
    info = _run(["register-4d", str(folder / "phase0[13579].nii.gz"), "-o", str(out), *QUICK, "--json"])
    assert info["registered"] == ["phase01", "phase03", "phase05", "phase07", "phase09"]
    rows = _summary(out)
    volume = [float(rows[n]["lung_volume_jacobian_ml"]) for n in info["registered"]]
    # exhaling from phase01, then inhaling again: the curve falls and rises
    assert min(volume) < volume[0] - 20 and min(volume) < volume[-1] - 10 and int(np.argmin(volume)) in (1, 2, 3)
    assert all(float(rows[n]["lung_dice"]) > 0.9 for n in info["registered"])


TINY = ["--model", "none", "--no-affine", "--refine", "2", "--grid-size", "16", "16", "16", "--quiet"]


def test_a_phase_that_fails_stops_the_run_and_a_rerun_goes_on(synthetic_4dct_3mm, tmp_path, capsys) -> None:
    phases = synthetic_4dct_3mm[0][:3]
    folder = tmp_path / "ct"
    folder.mkdir()
    for name, image in zip(NAMES, phases):
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    far = sitk.Image(phases[2])
    far.SetOrigin(tuple(v + 2000.0 for v in far.GetOrigin()))  # nowhere near the reference
    sitk.WriteImage(far, str(folder / "phase02.nii.gz"))
    out = tmp_path / "out"
    assert main(["register-4d", str(folder), "-o", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlvirnet register-4d: error: phase phase02: the images do not overlap")
    assert (out / "phase01" / "result.json").is_file() and not (out / "phase02" / "result.json").exists()
    assert not (out / "summary.csv").exists()
    sitk.WriteImage(phases[2], str(folder / "phase02.nii.gz"))
    info = _run(["register-4d", str(folder), "-o", str(out), *TINY, "--json"])
    assert info["registered"] == ["phase02"] and info["done_before"] == ["phase00", "phase01"]


def test_new_landmarks_give_done_phases_their_tre_without_registering_again(synthetic_4dct_3mm, tmp_path, capsys) -> None:
    from MLVIRNETLib.evaluation.metrics import tre

    phases, _, _, points = synthetic_4dct_3mm
    files = []
    for name, image in zip(NAMES[:3], phases):
        files.append(str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(image, files[-1])
    marks = [str(write_landmarks(p, tmp_path / f"{n}.csv")) for n, p in zip(NAMES, points)]
    out = tmp_path / "out"
    assert _run(["register-4d", *files, "-o", str(out), *TINY, "--json"])["registered"] == NAMES[:3]
    assert _summary(out)["phase02"]["tre_mean_mm"] == ""
    field_time = (out / "phase02" / "field.nii.gz").stat().st_mtime_ns
    info = _run(["register-4d", *files, "-o", str(out), *TINY, "--json", "--landmarks", *marks[:3]])
    assert info["registered"] == [] and info["done_before"] == NAMES[:3]
    assert "phase02: TRE from its stored field" in capsys.readouterr().err
    assert (out / "phase02" / "field.nii.gz").stat().st_mtime_ns == field_time
    expected = tre(points[0], points[2], read_field(out / "phase02" / "field.nii.gz"))
    row = _summary(out)["phase02"]
    assert row["landmarks"] == "20" and float(row["tre_mean_mm"]) == pytest.approx(expected.mean, abs=1e-4)
    info = _run(["register-4d", *files, "-o", str(out), *TINY, "--json"])  # landmarks taken away again
    assert info["registered"] == [] and _summary(out)["phase02"]["tre_mean_mm"] == ""


def test_4d75_tags_no_phase_holds_are_left_out_with_a_note(synthetic_4dct_3mm, tmp_path, capsys) -> None:
    files = []
    for tag, image in zip(("T00", "T20", "T40"), synthetic_4dct_3mm[0]):
        files.append(str(tmp_path / f"case1_{tag}.nii.gz"))
        sitk.WriteImage(image, files[-1])
    marks = tmp_path / "Sampled4D"
    marks.mkdir()
    for k in range(6):  # DIR-LAB voxel indices (1-based), inside the 3 mm CT
        rows = [(20 + 3 * p, 25 + 2 * p, 30 + p + k) for p in range(5)]
        (marks / f"case1_4D-75_T{10 * k:02d}.txt").write_text("".join(f"{x}\t{y}\t{z}\t\n" for x, y, z in rows))
    out = tmp_path / "out"
    info = _run(["register-4d", *files, "-o", str(out), *TINY, "--json", "--landmarks", str(marks)])
    assert info["registered"] == ["case1_T00", "case1_T20", "case1_T40"]
    err = capsys.readouterr().err
    assert [line.split()[6] for line in err.splitlines() if "left out" in line] == ["T10", "T30", "T50"]
    assert {n: row["landmarks"] for n, row in _summary(out).items()} == {"case1_T00": "5", "case1_T20": "5",
                                                                        "case1_T40": "5"}


def test_4d75_files_go_to_the_phase_named_by_their_tag_else_by_position(tmp_path) -> None:
    from MLVIRNETLib.evaluation.series_run import phase_landmarks
    from MLVIRNETLib.io.phases import PhaseInput

    marks = tmp_path / "Sampled4D"
    marks.mkdir()
    for tag in ("T00", "T10", "T50"):
        (marks / f"case2_4D-75_{tag}.txt").write_text("1\t1\t1\n")
    by_name = [PhaseInput(f"case2_{tag}", tmp_path / f"{tag}.nii.gz") for tag in ("T50", "T00", "T10")]
    assert {by_name[k].name: p.name for k, p in phase_landmarks(by_name, [marks]).items()} == {
        "case2_T00": "case2_4D-75_T00.txt", "case2_T10": "case2_4D-75_T10.txt", "case2_T50": "case2_4D-75_T50.txt"}
    by_position = [PhaseInput(f"phase{k:02d}", tmp_path / f"{k}.nii.gz") for k in range(10)]
    assert {k: p.name[-7:-4] for k, p in phase_landmarks(by_position, [marks]).items()} == {0: "T00", 1: "T10",
                                                                                             5: "T50"}
    with pytest.raises(ValueError, match="4D-75 landmarks of phase T50 .* but only 3 phases"):
        phase_landmarks(by_position[:3], [marks])
    for tag in ("T20", "T30", "T40"):
        (marks / f"case2_4D-75_{tag}.txt").write_text("1\t1\t1\n")
    some_named = [PhaseInput(tag, tmp_path / f"{tag}.nii.gz") for tag in ("T00", "T20", "T40", "T60", "T70", "T80")]
    notes: list[str] = []
    assert {some_named[k].name: p.name[-7:-4] for k, p in phase_landmarks(some_named, [marks], notes).items()} == {
        "T00": "T00", "T20": "T20", "T40": "T40"}  # T30 and T50 go to no phase by position
    assert [n.split()[4] for n in notes] == ["T10", "T30", "T50"] and "left out: no phase is named with T30" in notes[1]
