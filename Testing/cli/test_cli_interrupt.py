"""Ctrl-C: one line ``mlvirnet CMD: interrupted``, exit status 130, no output file and no temporary folder."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

from cohort_data import SHIFTS_MM, write_pair

from MLVIRNETLib.cli.progress import INTERVAL_ENV


def _sigint_default() -> None:
    """A child started from a shell that ignores SIGINT (a background job) would ignore Ctrl-C too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_register_prints_one_line_and_leaves_nothing(tmp_path) -> None:
    fixed, moving, _, _ = write_pair(tmp_path, "p", SHIFTS_MM[0], spacing_mm=7.0)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != INTERVAL_ENV} | {"OMP_NUM_THREADS": "1"}
    # minutes of refinement: the interrupt lands in the middle of the work
    cmd = [sys.executable, "-m", "MLVIRNETLib.cli", "register", str(fixed), str(moving),
           "-o", str(out / "field.nii.gz"), "--warped", str(out / "warped.nii.gz"), "--model", "none", "--no-affine",
           "--refine", "2000", "--grid-size", "32", "32", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_sigint_default)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("register: ") for line in seen) and time.monotonic() < deadline:
            line = lines.get(timeout=300)
            assert line is not None, f"register ended before any progress: {seen}"
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (line := lines.get(timeout=60)) is not None:
        seen.append(line)
    assert proc.returncode == 130, seen
    after = [line for line in seen if not line.startswith("register: ")]
    assert after == ["mlvirnet register: interrupted"], seen
    assert not any("Traceback" in line for line in seen)
    assert proc.stdout.read() == ""
    assert list(out.iterdir()) == []  # neither the field, nor the warped image, nor a hidden temporary folder
