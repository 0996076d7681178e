"""A 4D-CT end to end: ``mlvirnet register-4d`` in one process against one ``mlvirnet register``
process per phase (a script, not a test).

Runs, each as a fresh process under ``/usr/bin/time -v`` (wall time and peak resident memory):

1. ``mlvirnet register-4d PHASES -o OUT`` on every phase of ``--series`` (reference: the first);
2. with ``--memory-check``, the same on the first 4 phases only (peak memory must not grow with
   the number of phases);
3. ``mlvirnet register REFERENCE PHASE -o FIELD`` for every other phase, one process each.

and prints the times, the ratio ``series / sum of the single pairs`` (the target is at most 0.8),
the peak memory of each run, and the mean stage times per phase inside the series (from each
phase's ``result.json``: what one-time work per series could still save).

Example::

    python benchmarks/bench_4d.py --preset standard --device cpu --memory-check
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import shared_data_dir  # noqa: E402

CLI = [sys.executable, "-m", "MLVIRNETLib.cli"]


def timed(command: list[str]) -> tuple[float, float, str]:
    """``(wall s, peak RSS MiB, stdout)`` of ``command`` run under ``/usr/bin/time -v``.

    Raises:
        RuntimeError: the command failed (its stderr is shown).
    """
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return wall, (int(rss.group(1)) / 1024.0 if rss else float("nan")), done.stdout


def mean_stages(timings: list[dict[str, float]]) -> str:
    """The mean of each stage time over ``timings`` (one dict per registration), as one line."""
    keys = list(dict.fromkeys(k for t in timings for k in t))
    return ", ".join(f"{k} {sum(t.get(k, 0.0) for t in timings) / len(timings):.2f}" for k in keys)


def main() -> int:
    default = shared_data_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=Path,
                        default=default / "4dct" / "tcia4dlung_117" if default is not None else None,
                        help="folder of the phase images (default: the shared tcia4dlung_117)")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-check", action="store_true", help="also run the series on its first 4 phases")
    args = parser.parse_args()
    if args.series is None or not args.series.is_dir():
        print("no series folder (pass --series)", file=sys.stderr)
        return 2
    phases = sorted(p for p in args.series.iterdir() if p.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")))
    common = ["--preset", args.preset, "--device", args.device, "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "series"
        series_s, series_mib, _ = timed([*CLI, "register-4d", *map(str, phases), "-o", str(out), *common])
        print(f"register-4d, {len(phases)} phases: {series_s:.1f} s, peak RSS {series_mib:.0f} MiB")
        series_stages = [json.loads((out / p.name.split(".")[0] / "result.json").read_text()).get("timings_s") or {}
                         for p in phases[1:]]
        print(f"  mean stage times per registered phase (s): {mean_stages(series_stages)}")
        if args.memory_check:
            few_s, few_mib, _ = timed([*CLI, "register-4d", *map(str, phases[:4]), "-o", str(Path(tmp) / "few"), *common])
            print(f"register-4d, 4 phases: {few_s:.1f} s, peak RSS {few_mib:.0f} MiB")
        pair_s, pair_mib, pair_stages = [], [], []
        for k, p in enumerate(phases[1:], start=1):
            s, mib, stdout = timed([*CLI, "register", str(phases[0]), str(p), "-o", str(Path(tmp) / f"pair{k}.nii.gz"),
                                    "--json", *common])
            pair_s.append(s)
            pair_mib.append(mib)
            pair_stages.append(json.loads(stdout).get("timings") or {})
            print(f"register {phases[0].name} {p.name}: {s:.1f} s, peak RSS {mib:.0f} MiB", flush=True)
    total = sum(pair_s)
    print(f"{len(pair_s)} single-pair processes: {total:.1f} s in all ({total / len(pair_s):.1f} s each), "
          f"peak RSS up to {max(pair_mib):.0f} MiB")
    print(f"  mean stage times per single pair (s): {mean_stages(pair_stages)}")
    print(f"series / single pairs: {series_s / total:.2f} (target <= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
