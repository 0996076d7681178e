"""Progress on stderr: a tqdm bar on a terminal, a few short plain lines in a log, nothing with --quiet."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk
from cohort_data import FAST, SHIFTS_MM, write_pair
from helpers import bundled_ct_3mm

from MLVIRNETLib.cli.progress import INTERVAL_ENV, LOG_INTERVAL_S, progress_bar


def test_a_log_gets_at_most_one_line_per_interval_and_a_final_line(monkeypatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    log = io.StringIO()  # not a terminal
    with progress_bar("work", stream=log) as progress:
        for i in range(500):
            progress(i / 500, f"step {i}")
        progress(1.0, "done")
    assert log.getvalue().splitlines()[0].startswith("work: 0% step 0 (")
    assert log.getvalue().splitlines()[1].startswith("work: 100% done (")
    assert len(log.getvalue().splitlines()) == 2

    monkeypatch.setenv(INTERVAL_ENV, "0")
    log = io.StringIO()
    with progress_bar("work", stream=log) as progress:
        for i in range(5):
            progress(i / 4, "x" * 500)  # long messages are cut
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and all(len(line) < 130 for line in lines)


def test_no_final_line_after_an_error_and_nothing_when_quiet(monkeypatch) -> None:
    log = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with progress_bar("work", stream=log) as progress:
            progress(0.1, "a")
            progress(0.2, "b")
            raise KeyboardInterrupt
    assert log.getvalue().splitlines() == [line for line in log.getvalue().splitlines() if "10%" in line]
    log = io.StringIO()
    with progress_bar("work", quiet=True, stream=log) as progress:
        progress(0.5, "half")
    assert log.getvalue() == ""
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        with progress_bar("work", stream=io.StringIO()):
            pass


def _terminal_output(work) -> str:
    """What ``work(terminal)`` writes to a pseudo-terminal."""
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        work(terminal)
        terminal.flush()
    chunks = []  # a terminal may hand the output over in several reads (seen under load)
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the writing side is closed: nothing more
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def test_a_terminal_gets_a_tqdm_bar() -> None:
    pytest.importorskip("tqdm")

    def work(terminal) -> None:
        with progress_bar("work", stream=terminal) as progress:
            progress(0.5, "half")

    shown = _terminal_output(work)
    assert "work:" in shown and "50%" in shown and "\r" in shown and "|" in shown


def _timed_work(sleep_s: float = 0.6):
    """Work that waits before its first report and after its last (reading, writing outputs) and
    spends ``sleep_s`` between them."""
    def work(stream) -> None:
        with progress_bar("work", stream=stream) as progress:
            time.sleep(sleep_s)
            progress(0.0, "start")
            time.sleep(sleep_s)
            progress(1.0, "end")
            time.sleep(sleep_s)
    return work


def test_the_bar_and_the_log_time_the_reports_only() -> None:
    pytest.importorskip("tqdm")
    shown = _terminal_output(_timed_work())
    times = [float(t) for t in re.findall(r"\|, ([0-9.]+) s end", shown)]
    assert times and 0.55 <= times[-1] < 1.0, shown  # not the 1.8 s the context lasted
    log = io.StringIO()
    _timed_work()(log)
    lines = log.getvalue().splitlines()
    assert lines[0] == "work: 0% start (0.0 s)" and re.fullmatch(r"work: 100% end \(0\.[6-9] s\)", lines[1]), lines


def test_the_demo_prints_the_time_its_progress_shows(tmp_path) -> None:
    sitk.WriteImage(bundled_ct_3mm(), str(tmp_path / "ct.nii.gz"))
    env = {**os.environ, INTERVAL_ENV: "0", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "MLVIRNETLib.cli", "demo", "--image", str(tmp_path / "ct.nii.gz"),
                          "-o", str(tmp_path / "demo"), "--preset", "fast", "--peak-mm", "10", "--landmarks", "20"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    shown = float(re.findall(r"^register: 100% .*\(([0-9.]+) s\)$", run.stderr, re.M)[-1])
    printed = float(re.search(r"registration ([0-9.]+) s", run.stdout).group(1))
    assert abs(shown - printed) <= 0.15, (run.stderr, run.stdout)  # one clock (each rounded to 0.1 s)


def test_register_in_a_log_prints_few_short_lines(tmp_path) -> None:
    fixed, moving, _, _ = write_pair(tmp_path, "p", SHIFTS_MM[0])
    env = {k: v for k, v in os.environ.items() if k != INTERVAL_ENV} | {"OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "MLVIRNETLib.cli", "register", str(fixed), str(moving), "-o",
                          str(tmp_path / "field.nii.gz"), *FAST], capture_output=True, text=True, env=env, timeout=600)
    elapsed = time.monotonic() - t0
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    progress = [line for line in lines if line.startswith("register: ")]
    assert 2 <= len(progress) <= elapsed / LOG_INTERVAL_S + 2, lines
    assert progress[0].startswith("register: 0% ") and progress[-1].startswith("register: 100% ")
    assert all(len(line) <= 200 for line in lines) and "\r" not in run.stderr
