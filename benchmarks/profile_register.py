"""Profile of ``mlvirnet register`` end to end: per stage and per hot function (cProfile).

The pair is a shared CT (default: the 512 x 512 x 99 CPTAC CT) and the same CT moved by 20 mm
synthetic breathing; ``--thick`` makes the fixed scan the 1 x 1 x 2.5 mm low-dose acquisition
(``MLVIRNETLib.simulation.acquisition.LOW_DOSE_THICK_SLICE``). The command runs in this process
under cProfile, from the argument parsing until the field is written. Making the pair imports
torch first, so the import of torch itself (about 2 s) is not in the profile; ``bench_register.py``
measures whole processes.

Printed: the wall time, the ``register()`` stage times, the time outside ``register()`` (imports,
reading, writing), and the functions with the most own time.

    python benchmarks/profile_register.py                 # the CPTAC CT, clean pair
    python benchmarks/profile_register.py --thick         # its thick-slice low-dose variant
    python benchmarks/profile_register.py --preset fast --top 30
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _pair(ct: Path, folder: Path, thick: bool) -> tuple[Path, Path]:
    import SimpleITK as sitk

    from MLVIRNETLib.io.images import read_image, write_image
    from MLVIRNETLib.simulation.acquisition import LOW_DOSE_THICK_SLICE, simulate_acquisition
    from MLVIRNETLib.simulation.cases import synthetic_breathing_case

    fixed = read_image(ct)
    case = synthetic_breathing_case(fixed, peak_mm=20.0, seed=0, n_landmarks=10)
    moving_path, fixed_path = folder / "moving.nii.gz", folder / "fixed.nii.gz"
    write_image(sitk.Cast(sitk.Round(case.moving), sitk.sitkInt16), moving_path)
    if thick:
        fixed = sitk.Cast(sitk.Round(simulate_acquisition(fixed, LOW_DOSE_THICK_SLICE, seed=1)), sitk.sitkInt16)
    write_image(fixed, fixed_path)
    return fixed_path, moving_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=Path, default=None, help="fixed CT (default: the shared CPTAC CT)")
    parser.add_argument("--thick", action="store_true", help="fixed scan at 1 x 1 x 2.5 mm with low-dose noise")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--top", type=int, default=20, help="functions to list")
    args = parser.parse_args(argv)
    from shared_data import chest_ct_or_default

    ct = chest_ct_or_default(args.ct, "cptac_c3n00247_chest_ct.nii.gz", "--ct")
    if ct is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="profile_register_") as tmp:
        fixed, moving = _pair(ct, Path(tmp), args.thick)
        command = ["register", str(fixed), str(moving), "-o", str(Path(tmp) / "field.nii.gz"), "--json", "--quiet",
                   "--preset", args.preset]
        from MLVIRNETLib.cli import main as cli

        profile = cProfile.Profile()
        captured = io.StringIO()
        t0 = time.perf_counter()
        with redirect_stdout(captured):
            rc = profile.runcall(cli, command)
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"mlvirnet register failed ({rc})", file=sys.stderr)
            return rc
    info = json.loads(captured.getvalue().strip().splitlines()[-1])
    timings = info["timings"]
    print(f"pair: {ct.name}{' (thick-slice low-dose fixed)' if args.thick else ''}, preset {args.preset}, "
          f"working grid {info['network_grid']}")
    print(f"wall {wall:.2f} s under cProfile; register() {timings['total']:.2f} s; outside register() "
          f"{wall - timings['total']:.2f} s (imports, reading, writing)")
    print("stages: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total"))
    stats = io.StringIO()
    pstats.Stats(profile, stream=stats).sort_stats("tottime").print_stats(args.top)
    print(stats.getvalue().split("\n\n", 1)[-1].strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
