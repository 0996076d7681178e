"""Acceptance evaluation of a trained model on held-out real CTs with known breathing motion.

For every CT (default: the two shared CTs that no shipped model is trained on) and every peak
diaphragm displacement (default 10, 20, 30 mm), the CT is the fixed image and a synthetic
breathing version of it (``MLVIRNETLib.simulation.breathing``: breathing model, lung density change, 10 HU
noise) the moving image. ``register`` is run four ways:

* ``initial``: no registration (the identity);
* ``model``: the model alone (affine pre-alignment + network, ``refinement.iterations=0``);
* ``model+refine``: the default pipeline (model, then the default refinement);
* ``refine``: refinement alone, no model (the pipeline without a trained network).

``--precisions`` runs each variant with a model once per network precision
(``RegistrationOptions.network.precision``: ``float32``, ``float16`` = CUDA's AMP precision,
``bfloat16``; reduced precisions are emulated, and slow, on CPUs without native support).

``--thick-peaks`` (default 30 mm) runs those peaks once more with the fixed scan acquired again
with thick slices and a low dose (``simulate_acquisition``: 1 x 1 x 2.5 mm, 40 HU correlated
noise). ``--identity`` (default on) registers each CT to itself, at its own voxels and resampled
to 3 mm, and to two scans of it that did not move (nearly identical pairs): the CT acquired again
at its own voxels with 10 HU noise, and with 1 x 1 x 2.5 mm voxels and 40 HU low-dose noise. It
runs the model alone and reports the displacement at 300 lung landmarks, of the result and of the
network's own output before the pipeline's check that keeps the identity when it fits the images
better, and the largest over every lung voxel of both.

Reported per run: mean and 95th percentile landmark TRE (fixed -> moving, 100 distinctive lung
points), per cent of lung voxels of the fixed grid with ``det J <= 0`` and the ``register`` time.

    python benchmarks/evaluate_model.py                         # shipped default model
    python benchmarks/evaluate_model.py --model runs/x/model.pt --threads 2
    python benchmarks/evaluate_model.py --variants model --peaks 20 --precisions float32 float16 bfloat16
    python benchmarks/evaluate_model.py --peaks 20 30 --variants model model+refine   # the model card's table
    python benchmarks/evaluate_model.py --peaks 20 30 --variants model --symmetric      # the network both ways
    python benchmarks/evaluate_model.py --peaks 2 5 10 --thick-peaks --variants model --no-identity \
        [--no-both-ways-fallback]                                                      # small motions
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HELD_OUT = ("chest_ct/lungct_0103_0005.nii.gz", "chest_ct/ibsi_nsclc_ct.nii.gz")
VARIANTS = ("model", "model+refine", "refine")


def main() -> int:
    import SimpleITK as sitk
    import torch
    from shared_data import shared_data_dir

    from MLVIRNETLib.core.geometry import ImageGrid
    from MLVIRNETLib.evaluation.metrics import jacobian_stats, tre
    from MLVIRNETLib.io.images import read_image
    from MLVIRNETLib.paths import default_model_path
    from MLVIRNETLib.preprocessing.lungmask import segment_lungs
    from MLVIRNETLib.registration import NETWORK_PRECISIONS, PRESETS, options_for, register
    from MLVIRNETLib.simulation.acquisition import LOW_DOSE_THICK_SLICE, AcquisitionOptions, simulate_acquisition
    from MLVIRNETLib.simulation.breathing import breathing_deformation, make_synthetic_pair, sample_landmarks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model_path(), help="model file (default: shipped)")
    parser.add_argument("--images", nargs="+", type=Path, help="CTs (default: held-out shared CTs)")
    parser.add_argument("--peaks", nargs="+", type=float, default=[10.0, 20.0, 30.0], help="peak motion, mm")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=NETWORK_PRECISIONS,
                        help="network precisions of the variants with a model (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--preset", default="standard", choices=sorted(PRESETS),
                        help="registration preset of every variant (model alone: without its refinement)")
    parser.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                        help="run the network both ways and average (network_symmetric; default: the preset's)")
    parser.add_argument("--both-ways-fallback", action=argparse.BooleanOptionalAction, default=None,
                        help="network alone: run it again with the images swapped where one way fits worse than no "
                             "motion (network_both_ways_fallback; default: the preset's, on)")
    parser.add_argument("--refine-levels", nargs="+", type=int, default=None, metavar="FACTOR",
                        help="override the preset's refinement levels (downsampling factors, coarse to fine)")
    parser.add_argument("--refine-iterations", nargs="+", type=int, default=None, metavar="N",
                        help="override the preset's refinement iterations (one per level)")
    parser.add_argument("--thick-peaks", nargs="*", type=float, default=[30.0],
                        help="peaks also run with a thick-slice low-dose fixed scan (1x1x2.5 mm, 40 HU)")
    parser.add_argument("--identity", action=argparse.BooleanOptionalAction, default=True,
                        help="also register each CT to itself, at its own voxels and at 3 mm")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    runs = [(v, p) for v in args.variants for p in (args.precisions if v != "refine" else ["auto"])]
    identity_rows: list[dict] = []

    overrides: dict = {"network": {"both_ways_fallback": args.both_ways_fallback}, "refinement": {
        "level_factors": None if args.refine_levels is None else tuple(args.refine_levels),
        "iterations": None if args.refine_iterations is None else tuple(args.refine_iterations)}}
    if args.symmetric:  # experimental, no preset: the deprecated keyword (a DeprecationWarning)
        overrides["network_symmetric"] = True

    def _run(fixed, moving, fixed_lungs, variant: str, precision: str):
        opts = options_for(args.preset, **{**overrides, "network": {**overrides["network"], "precision": precision}})
        if variant == "model":
            opts.refinement.iterations = 0
        model = None if variant == "refine" else args.model
        t0 = time.perf_counter()
        result = register(fixed, moving, fixed_lungs, None, model=model, device="cpu", options=opts)
        return result, time.perf_counter() - t0

    def _identity_rows(name: str, ct, lungs) -> list[dict]:
        """The scan (lung mask ``lungs``) against itself (at its own voxels and at 3 mm) and against
        itself acquired again without motion: displacement at 300 lung landmarks and at every lung
        voxel, of the model alone and of the network's own output (before the pipeline's check
        that keeps the identity when it fits better)."""
        own = AcquisitionOptions(spacing_mm=tuple(ct.GetSpacing()), noise_hu=10.0)
        at_3mm = _resampled(ct, 3.0)
        full, coarse = (ct, lungs), (at_3mm, segment_lungs(at_3mm))
        pairs = (("full", full, ct), ("3 mm", coarse, at_3mm),
                 ("full, moving acquired again (10 HU)", full, simulate_acquisition(ct, own, seed=args.seed)),
                 ("full, moving thick low-dose", full, simulate_acquisition(ct, LOW_DOSE_THICK_SLICE, seed=args.seed)))
        out = []
        for voxels, (scan, scan_lungs), moving in pairs:
            pts = torch.as_tensor(sample_landmarks(scan, scan_lungs, n=300, seed=args.seed), dtype=torch.float32)
            lung_arr = torch.as_tensor(sitk.GetArrayFromImage(scan_lungs) > 0)
            result, secs = _run(scan, moving, scan_lungs, "model", "auto")
            moved = (result.deformation.map_points(pts)[0] - pts).norm(dim=-1)
            # the network's composed output on the working grid, in the pre-aligned frame
            raw = result.level_deformations[-1]
            raw_moved = (raw.map_points(pts.to(raw.displacement.device))[0].cpu() - pts).norm(dim=-1)
            # and at every lung voxel (the landmarks sit at distinctive points only)
            voxels_mm = ImageGrid.from_sitk(scan).world_points(dtype=torch.float64)[lung_arr].float()
            raw_all = torch.cat([raw.displacement_at(chunk.to(raw.displacement.device))[0].cpu().norm(dim=-1)
                                 for chunk in voxels_mm.split(200_000)])
            result_all = result.deformation.displacement[0].norm(dim=0)[lung_arr]
            out.append({"image": name, "voxels": voxels, "landmarks": int(pts.shape[0]),
                        "model_mean": float(moved.mean()), "model_max": float(moved.max()),
                        "model_max_lung_voxels": float(result_all.max()),
                        "network_mean": float(raw_moved.mean()), "network_max": float(raw_moved.max()),
                        "network_max_lung_voxels": float(raw_all.max()),
                        "folding_percent": jacobian_stats(result.deformation, lung_arr)["folding_percent"],
                        "time_s": secs})
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        return out
    images = args.images
    if images is None:
        data = shared_data_dir()
        if data is None:
            parser.error("../shared/data is absent: give --images")
        images = [data / p for p in HELD_OUT]

    rows = []
    for path in images:
        ct = read_image(path)
        lungs = segment_lungs(ct)
        grid = ImageGrid.from_sitk(ct)
        for peak in args.peaks:
            truth = breathing_deformation(grid, lungs, peak_mm=peak, seed=args.seed)
            moving, _ = make_synthetic_pair(ct, truth, lungs, noise_hu=10.0, seed=args.seed)
            pts = sample_landmarks(ct, lungs, n=100, seed=args.seed)
            targets = truth.map_points(torch.as_tensor(pts, dtype=torch.float32))[0].double().numpy()
            fixed_scans = [("", ct, lungs)]
            if peak in args.thick_peaks:
                # the fixed scan acquired again with thick slices and a low dose: the truth, a map
                # of world mm, and the landmarks stay valid
                thick = simulate_acquisition(ct, LOW_DOSE_THICK_SLICE, seed=args.seed)
                fixed_scans.append((" thick low-dose fixed", thick, segment_lungs(thick)))
            for label, fixed, fixed_lungs in fixed_scans:
                before = tre(pts, targets)
                rows.append({"image": path.name + label, "peak_mm": peak, "variant": "initial",
                             "tre_mean": before.mean, "tre_p95": before.p95, "folding_percent": 0.0, "time_s": 0.0})
                lung_arr = torch.as_tensor(sitk.GetArrayFromImage(fixed_lungs) > 0)
                for variant, precision in runs:
                    result, secs = _run(fixed, moving, fixed_lungs, variant, precision)
                    after = tre(pts, targets, result.deformation)
                    fold = jacobian_stats(result.deformation, lung_arr)["folding_percent"]
                    name = variant if precision == "auto" else f"{variant} ({precision})"
                    rows.append({"image": path.name + label, "peak_mm": peak, "variant": name,
                                 "tre_mean": after.mean, "tre_p95": after.p95, "folding_percent": fold,
                                 "time_s": secs, "network_s": result.timings.get("network", 0.0)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.identity:
            identity_rows.extend(_identity_rows(path.name, ct, lungs))

    print(f"model: {args.model}, preset: {args.preset}, symmetric network: {bool(args.symmetric)}")
    print("| CT | peak (mm) | variant | mean TRE (mm) | p95 TRE (mm) | folding (% lung) | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['peak_mm']:.0f} | {r['variant']} | {r['tre_mean']:.2f} | {r['tre_p95']:.2f} | "
              f"{r['folding_percent']:.3f} | {r['time_s']:.1f} |")
    if identity_rows:
        print()
        print("| CT | voxels | model alone: mean / max; max over every lung voxel (mm) "
              "| network output: mean / max; max over every lung voxel (mm) | folding (% lung) |")
        print("|---|---|---|---|---|")
        for r in identity_rows:
            print(f"| {r['image']} | {r['voxels']} | {r['model_mean']:.3f} / {r['model_max']:.3f}; "
                  f"{r['model_max_lung_voxels']:.3f} | {r['network_mean']:.3f} / {r['network_max']:.3f}; "
                  f"{r['network_max_lung_voxels']:.3f} | {r['folding_percent']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"registrations": rows, "identity": identity_rows}, indent=1))
    return 0


def _resampled(image, spacing_mm: float):
    """``image`` on a grid of about ``spacing_mm`` voxels over the same box (linear, int16 HU)."""
    import SimpleITK as sitk

    from MLVIRNETLib.core.geometry import ImageGrid

    grid = ImageGrid.from_sitk(image)
    target = grid.resized(tuple(max(1, round(e / spacing_mm)) for e in grid.extent))
    reference = sitk.Image(list(target.size), sitk.sitkInt16)
    target.copy_to_sitk(reference)
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)


if __name__ == "__main__":
    sys.exit(main())
