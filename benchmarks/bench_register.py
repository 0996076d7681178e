"""The benchmark of ``mlvirnet register`` for the README and the docs: every preset, end to end.

Each pair is a shared chest CT (fixed) and the same CT moved by synthetic breathing
(``MLVIRNETLib.simulation.cases.synthetic_breathing_case``: breathing motion with sliding at the
pleura, lung density change, 10 HU noise; 100 landmarks that follow the motion). Two variants:

* ``clean``: that pair as it is;
* ``thick``: the fixed scan acquired again with 1 x 1 x 2.5 mm voxels and low-dose noise
  (``MLVIRNETLib.simulation.acquisition.LOW_DOSE_THICK_SLICE``, the COPDGene exhale protocol);
  the landmarks are world points, so the ground truth is unchanged.

For every pair and preset, ``mlvirnet register FIXED MOVING -o field.nii.gz --preset P --json`` runs
in a fresh process. Reported: the wall time from process start until the field is written
(``wall``), the stage times inside ``register()``, the peak RSS of that process, and the TRE
(mean and 95th percentile, mm) of the written field at the landmarks, read back from the file.

Defaults: the two held-out CTs (``lungct_0103_0005``, the IBSI CT; no shipped model was trained
on them) at 20 and 30 mm, and the 512 x 512 x 126 TCGA CT at 20 mm for the time target.

    python benchmarks/bench_register.py                              # everything (about 20 min)
    python benchmarks/bench_register.py --cases tcga:20 --presets fast standard
    python benchmarks/bench_register.py --cache /tmp/bench_cases     # keep the generated pairs
    python benchmarks/bench_register.py --small                      # also a 100 x 100 x 50 pair

To compare with another version of MLVIRNET in the same run (the same machine, the same pairs),
give its checkout with ``--previous DIR`` (for example ``git worktree add /tmp/previous <commit>``)
and the presets to run from it with ``--previous-presets``; its rows say ``P (previous)``. The
landmarks and the TRE are computed by this script for both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CTS = {
    "lungct": "chest_ct/lungct_0103_0005.nii.gz",
    "ibsi": "chest_ct/ibsi_nsclc_ct.nii.gz",
    "tcga": "chest_ct/tcga_de_a4ma_chest_ct.nii.gz",
}
DEFAULT_CASES = ["lungct:20", "lungct:30", "ibsi:20", "ibsi:30", "tcga:20"]
PRESETS = ("fast", "standard", "accurate")
STAGES = ("lung_mask", "affine", "preprocess", "network", "refine", "field")

_CLI = (
    "import json, sys\n"
    "from MLVIRNETLib.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    # VmHWM is this process's own peak; ru_maxrss would include the parent's size at fork (Linux keeps
    # the larger of the two across exec), and the parent holds the generated pairs
    "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM:')][0].split()[1]\n"
    "print(json.dumps({'peak_rss_mb': int(hwm) / 1024.0}), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _small_ct(folder: Path) -> Path:
    """The bundled CT resampled to 100 x 100 x 50 voxels (about 1.8 x 1.9 x 4.9 mm), int16."""
    import SimpleITK as sitk

    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.paths import bundled_ct_path

    ct = sitk.ReadImage(str(bundled_ct_path()))
    grid = ImageGrid.from_sitk(ct).resized((100, 100, 50))
    reference = sitk.Image(list(grid.size), sitk.sitkInt16)
    grid.copy_to_sitk(reference)
    path = folder / "small_ct_100x100x50.nii.gz"
    sitk.WriteImage(sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16), str(path))
    return path


def _prepare(ct_path: Path, name: str, peak: float, folder: Path) -> dict:
    """The clean and thick pairs of one CT and peak, with landmarks, written to ``folder`` (reused)."""
    import numpy as np
    import SimpleITK as sitk

    from MLVIRNETLib.io.images import read_image, write_image
    from MLVIRNETLib.simulation.acquisition import LOW_DOSE_THICK_SLICE, simulate_acquisition
    from MLVIRNETLib.simulation.cases import synthetic_breathing_case

    stem = folder / f"{name}_{peak:g}mm"
    files = {k: Path(f"{stem}_{k}") for k in ("fixed.nii.gz", "thick.nii.gz", "moving.nii.gz", "points.npz")}
    if not all(p.exists() for p in files.values()):
        fixed = read_image(ct_path)
        case = synthetic_breathing_case(fixed, peak_mm=peak, seed=0, n_landmarks=100)
        write_image(fixed, files["fixed.nii.gz"])
        write_image(sitk.Cast(sitk.Round(case.moving), sitk.sitkInt16), files["moving.nii.gz"])
        thick = simulate_acquisition(fixed, LOW_DOSE_THICK_SLICE, seed=1)
        write_image(sitk.Cast(sitk.Round(thick), sitk.sitkInt16), files["thick.nii.gz"])
        np.savez(files["points.npz"], fixed=case.fixed_points, moving=case.moving_points)
    return {"clean": files["fixed.nii.gz"], "thick": files["thick.nii.gz"], "moving": files["moving.nii.gz"],
            "points": files["points.npz"]}


def _tre(field: Path, points: Path) -> tuple[float, float, float]:
    """(mean, p95, initial mean) TRE in mm of ``field`` at the landmarks."""
    import numpy as np
    import torch

    from MLVIRNETLib.io.fields import read_field

    pts = np.load(points)
    mapped = read_field(field).map_points(torch.as_tensor(pts["fixed"], dtype=torch.float32))[0].double().numpy()
    err = np.linalg.norm(mapped - pts["moving"], axis=1)
    initial = np.linalg.norm(pts["fixed"] - pts["moving"], axis=1)
    return float(err.mean()), float(np.quantile(err, 0.95)), float(initial.mean())


def _run(fixed: Path, moving: Path, preset: str, workdir: Path, device: str, root: Path = ROOT) -> dict:
    """``mlvirnet register`` end to end in a fresh process, with the library of the checkout ``root``."""
    field = workdir / "field.nii.gz"
    cmd = [sys.executable, "-c", _CLI, "register", str(fixed.resolve()), str(moving.resolve()), "-o",
           str(field.resolve()), "--preset", preset, "--json", "--quiet", "--device", device]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    # ``python -c`` puts the working folder first on sys.path: run in ``root`` so that its library is the one imported
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=root)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mlvirnet register failed: {proc.stderr.strip()[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = json.loads(proc.stderr.strip().splitlines()[-1])["peak_rss_mb"]
    return {"wall_s": wall, "timings": info["timings"], "peak_rss_mb": rss, "field": field,
            "grid": info["network_grid"], "folding": info["folding_fraction"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES, metavar="CT:PEAK",
                        help=f"CT name ({', '.join(CTS)}) and peak breathing motion in mm (default {DEFAULT_CASES})")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--variants", nargs="+", default=["clean", "thick"], choices=("clean", "thick"))
    parser.add_argument("--small", action="store_true", help="also the bundled CT at 100 x 100 x 50 voxels, 15 mm")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the median wall time is reported")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the generated pairs (kept)")
    parser.add_argument("--device", default="cpu", help="passed to mlvirnet register --device")
    parser.add_argument("--previous", type=Path, default=None, metavar="DIR",
                        help="a checkout of another MLVIRNET version to run in the same run (rows 'P (previous)')")
    parser.add_argument("--previous-presets", nargs="+", default=["standard", "accurate"], metavar="P",
                        help="the presets to run from --previous (default: standard accurate)")
    args = parser.parse_args(argv)
    if args.previous is not None and not (args.previous / "MLVIRNETLib").is_dir():
        parser.error(f"--previous: {args.previous} is not an MLVIRNET checkout (no MLVIRNETLib folder)")
    runs_of = [(preset, preset, ROOT) for preset in args.presets]
    if args.previous is not None:
        runs_of = [(f"{p} (previous)", p, args.previous.resolve()) for p in args.previous_presets] + runs_of
    from shared_data import shared_data_dir

    shared = shared_data_dir()
    cases = []
    for spec in args.cases:
        name, _, peak = spec.partition(":")
        if name not in CTS or not peak:
            parser.error(f"--cases: expected CT:PEAK with CT one of {sorted(CTS)}, got {spec!r}")
        cases.append((name, float(peak)))
    if cases and shared is None:
        print("shared data not found (../shared/data); use --cases with --small only", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_register_") as tmp:
        folder = args.cache if args.cache is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        inputs = [(name, peak, shared / CTS[name]) for name, peak in cases]
        if args.small:
            inputs.append(("small", 15.0, _small_ct(folder)))
        print(f"{os.cpu_count()} CPUs, torch threads: default; load average {os.getloadavg()}", flush=True)
        print("| CT | motion | variant | preset | wall s | " + " | ".join(STAGES) + " | peak RSS MB | TRE mean (p95) mm |"
              " grid |")
        print("|" + "---|" * (8 + len(STAGES)))
        for name, peak, ct_path in inputs:
            pair = _prepare(ct_path, name, peak, folder)
            for variant in args.variants:
                for label, preset, root in runs_of:
                    runs = [_run(pair[variant], pair["moving"], preset, Path(tmp), args.device, root)
                            for _ in range(args.repeats)]
                    run = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
                    mean, p95, initial = _tre(run["field"], pair["points"])
                    stages = " | ".join(f"{run['timings'].get(s, 0.0):.2f}" for s in STAGES)
                    wall = statistics.median(r["wall_s"] for r in runs)
                    print(f"| {name} | {peak:g} mm ({initial:.2f}) | {variant} | {label} | {wall:.1f} | {stages} | "
                          f"{run['peak_rss_mb']:.0f} | {mean:.3f} ({p95:.2f}) | {'x'.join(map(str, run['grid']))} |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
