"""Acceptance evaluation of a trained model on held-out real CTs with known breathing motion.

For every CT (default: the two shared CTs that no shipped model is trained on) and every peak
diaphragm displacement (default 10, 20, 30 mm), the CT is the fixed image and a synthetic
breathing version of it (``MLVIRNETLib.simulation.breathing``: breathing model, lung density change, 10 HU
noise) the moving image. ``register`` is run four ways:

* ``initial``: no registration (the identity);
* ``model``: the model alone (affine pre-alignment + network, ``refine_iterations=0``);
* ``model+refine``: the default pipeline (model, then the default refinement);
* ``refine``: refinement alone, no model (the pipeline without a trained network).

``--precisions`` runs each variant with a model once per network precision
(``RegistrationOptions.network_precision``: ``float32``, ``float16`` = CUDA's AMP precision,
``bfloat16``; reduced precisions are emulated, and slow, on CPUs without native support).

Reported per run: mean and 95th percentile landmark TRE (fixed -> moving, 100 distinctive lung
points), per cent of lung voxels of the fixed grid with ``det J <= 0`` and the ``register`` time.

    python benchmarks/evaluate_model.py                         # shipped default model
    python benchmarks/evaluate_model.py --model runs/x/model.pt --threads 2
    python benchmarks/evaluate_model.py --variants model --peaks 20 --precisions float32 float16 bfloat16
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
    from MLVIRNETLib.registration import NETWORK_PRECISIONS, RegistrationOptions, register
    from MLVIRNETLib.simulation.breathing import breathing_deformation, make_synthetic_pair, sample_landmarks

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model_path(), help="model file (default: shipped)")
    parser.add_argument("--images", nargs="+", type=Path, help="CTs (default: held-out shared CTs)")
    parser.add_argument("--peaks", nargs="+", type=float, default=[10.0, 20.0, 30.0], help="peak motion, mm")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=NETWORK_PRECISIONS,
                        help="network precisions of the variants with a model (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    images = args.images
    if images is None:
        data = shared_data_dir()
        if data is None:
            parser.error("../shared/data is absent: give --images")
        images = [data / p for p in HELD_OUT]

    rows = []
    for path in images:
        fixed = read_image(path)
        lungs = segment_lungs(fixed)
        grid = ImageGrid.from_sitk(fixed)
        lung_arr = torch.as_tensor(sitk.GetArrayFromImage(lungs) > 0)
        for peak in args.peaks:
            truth = breathing_deformation(grid, lungs, peak_mm=peak, seed=args.seed)
            moving, _ = make_synthetic_pair(fixed, truth, lungs, noise_hu=10.0, seed=args.seed)
            pts = sample_landmarks(fixed, lungs, n=100, seed=args.seed)
            targets = truth.map_points(torch.as_tensor(pts, dtype=torch.float32))[0].double().numpy()
            before = tre(pts, targets)
            rows.append({"image": path.name, "peak_mm": peak, "variant": "initial", "tre_mean": before.mean,
                         "tre_p95": before.p95, "folding_percent": 0.0, "time_s": 0.0})
            runs = [(v, p) for v in args.variants for p in (args.precisions if v != "refine" else ["auto"])]
            for variant, precision in runs:
                opts = RegistrationOptions(network_precision=precision)
                if variant == "model":
                    opts.refine_iterations = 0
                model = None if variant == "refine" else args.model
                t0 = time.perf_counter()
                result = register(fixed, moving, lungs, None, model=model, device="cpu", options=opts)
                secs = time.perf_counter() - t0
                after = tre(pts, targets, result.deformation)
                fold = jacobian_stats(result.deformation, lung_arr)["folding_percent"]
                name = variant if precision == "auto" else f"{variant} ({precision})"
                rows.append({"image": path.name, "peak_mm": peak, "variant": name, "tre_mean": after.mean,
                             "tre_p95": after.p95, "folding_percent": fold, "time_s": secs,
                             "network_s": result.timings.get("network", 0.0)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    print(f"model: {args.model}")
    print("| CT | peak (mm) | variant | mean TRE (mm) | p95 TRE (mm) | folding (% lung) | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['peak_mm']:.0f} | {r['variant']} | {r['tre_mean']:.2f} | {r['tre_p95']:.2f} | "
              f"{r['folding_percent']:.3f} | {r['time_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
