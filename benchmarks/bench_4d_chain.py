"""Direct or chained: registering every phase to the reference, or each phase to its neighbour nearer
the reference and composing the maps (a script, not a test).

A generated 4D-CT with known motion (the bundled CT at about 3 mm and its copies deformed by
synthetic breathing at amplitudes ``peak * (1 - cos(2 pi k / n)) / 2``, 10 phases, 40 landmarks in
the lungs), registered both ways with the chosen preset (or refinement alone on a 32-voxel
working grid with ``--quick``); prints the TRE per phase (mean / p95, mm) of both, the phase's
distance from the reference being its amplitude.

Example::

    python benchmarks/bench_4d_chain.py --peak 12 --quick
    python benchmarks/bench_4d_chain.py --peak 12 --preset fast
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from helpers import breathing_amplitudes, synthetic_4dct  # noqa: E402

from MLVIRNETLib.evaluation.motion import phase_motion  # noqa: E402
from MLVIRNETLib.registration import options_for  # noqa: E402
from MLVIRNETLib.registration.series import register_series  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak", type=float, default=12.0, help="largest breathing amplitude, mm")
    parser.add_argument("--phases", type=int, default=10)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--quick", action="store_true", help="refinement alone (10, 5) on a 32-voxel grid, no model")
    args = parser.parse_args()
    phases, _, lungs, points = synthetic_4dct(args.phases, args.peak, n_landmarks=40)
    if args.quick:
        model, options = None, options_for("standard", refinement={"iterations": (10, 5)}, grid={"max_voxels": 32})
    else:
        model, options = "default", options_for(args.preset)
    amplitudes = breathing_amplitudes(args.phases, args.peak)
    table: dict[int, dict[str, tuple[float, float, float]]] = {}
    for chain in (False, True):
        t0 = time.perf_counter()
        for r in register_series(phases, 0, model=model, device="cpu", options=options, chain=chain,
                                 reference_mask=lungs, phase_masks=False):
            row = phase_motion(r.deformation, lungs, landmarks=(points[0], points[r.index]))
            table.setdefault(r.index, {})["chain" if chain else "direct"] = (row.tre_before_mm, row.tre_mean_mm,
                                                                               row.tre_p95_mm)
        print(f"{'chain' if chain else 'direct'}: {time.perf_counter() - t0:.1f} s", flush=True)
    print("phase | amplitude mm | TRE before | direct mean / p95 | chain mean / p95")
    for k in sorted(table):
        before, dm, dp = table[k]["direct"]
        _, cm, cp = table[k]["chain"]
        print(f"{k} | {amplitudes[k]:.2f} | {before:.2f} | {dm:.2f} / {dp:.2f} | {cm:.2f} / {cp:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
