"""Calibrate the quality check of MLVIRNETLib.registration.quality on the shared real data.

Registers every real pair of ../shared/data (the 4D-CT phases 02..10 to phase 01 of both patients;
each chest CT to its synthetic breathing partner, 10 mm peak) and the demo pair, each once with its
correct header and once with x and y swapped in the moving image's direction matrix, and prints
the lung NCC and Dice of every registration and the extremes of both groups.

    PYTHONPATH=. python benchmarks/calibrate_quality.py --preset fast
    PYTHONPATH=. python benchmarks/calibrate_quality.py --preset standard --limit-4dct 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import shared_data_dir  # noqa: E402

from MLVIRNETLib.paths import bundled_ct_path  # noqa: E402
from MLVIRNETLib.registration import preset_options, register  # noqa: E402
from MLVIRNETLib.simulation.cases import synthetic_breathing_case  # noqa: E402


def swapped_xy(image: sitk.Image) -> sitk.Image:
    """The same voxels with the first two columns of the direction matrix swapped (a wrong header),
    the origin moved so that the image centre stays where it was (the images still overlap)."""
    out = sitk.Image(image)
    d = list(image.GetDirection())
    centre = [(s - 1) / 2.0 for s in image.GetSize()]
    before = image.TransformContinuousIndexToPhysicalPoint(centre)
    out.SetDirection((d[1], d[0], d[2], d[4], d[3], d[5], d[7], d[6], d[8]))
    after = out.TransformContinuousIndexToPhysicalPoint(centre)
    out.SetOrigin(tuple(o + b - a for o, b, a in zip(image.GetOrigin(), before, after)))
    return out


def pairs(shared: Path, limit_4dct: int):
    for patient in ("tcia4dlung_117", "tcia4dlung_118"):
        folder = shared / "4dct" / patient
        fixed = sitk.ReadImage(str(folder / "phase01.nii.gz"))
        for k in range(2, 2 + limit_4dct):
            yield f"{patient} phase{k:02d}->01", fixed, sitk.ReadImage(str(folder / f"phase{k:02d}.nii.gz"))
    for name in ("totalseg_chest_ct", "cptac_c3n00247_chest_ct", "ibsi_nsclc_ct", "lungct_0001_0005",
                 "lungct_0103_0005", "lungdx_a0002_chest_ct_8mm", "tcga_de_a4ma_chest_ct"):
        ct = sitk.ReadImage(str(shared / "chest_ct" / f"{name}.nii.gz"))
        case = synthetic_breathing_case(ct, peak_mm=10.0, seed=0)
        yield f"{name} breathing 10 mm", case.fixed, case.moving
    demo = sitk.ReadImage(str(bundled_ct_path()))
    case = synthetic_breathing_case(demo, peak_mm=10.0, seed=0)
    yield "demo (bundled CT, 10 mm)", case.fixed, case.moving


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--limit-4dct", type=int, default=9, help="phases per patient (at most 9)")
    args = parser.parse_args()
    shared = shared_data_dir()
    if shared is None:
        print("shared data not found (../shared/data)", file=sys.stderr)
        return 2
    options = preset_options(args.preset)
    good: list[tuple[str, float, float | None]] = []
    bad: list[tuple[str, float, float | None]] = []
    print(f"{'pair':44s} {'header':8s} {'ncc':>6s} {'dice':>6s} {'quality s':>9s} {'total s':>8s}")
    for name, fixed, moving in pairs(shared, min(args.limit_4dct, 9)):
        for header, m in (("correct", moving), ("x<->y", swapped_xy(moving))):
            t0 = time.perf_counter()
            try:
                r = register(fixed, m, options=options)
            except ValueError as exc:
                print(f"{name:44s} {header:8s} refused: {str(exc)[:80]}", flush=True)
                continue
            q = r.quality
            dice = "" if q.lung_dice is None else f"{q.lung_dice:.3f}"
            print(f"{name:44s} {header:8s} {q.ncc:6.3f} {dice:>6s} {r.timings['quality']:9.3f} "
                  f"{time.perf_counter() - t0:8.1f}", flush=True)
            (good if header == "correct" else bad).append((name, q.ncc, q.lung_dice))
    print(f"correct headers: lowest NCC {min(g[1] for g in good):.3f} ({min(good, key=lambda g: g[1])[0]})")
    print(f"x<->y swapped:   highest NCC {max(b[1] for b in bad):.3f} ({max(bad, key=lambda b: b[1])[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
