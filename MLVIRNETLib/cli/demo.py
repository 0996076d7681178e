"""``mlvirnet demo``: register a real chest CT against a synthetic-breathing version of itself.

The bundled CT (TotalSegmentator test image, Apache-2.0) is the fixed image; a realistic breathing
deformation (diaphragm-dominated, decaying toward the apex, sliding at the chest wall) gives the
moving image and the ground truth. The demo registers the pair with the default settings, prints the
landmark TRE before and after and the time taken, and writes the field, the moving and warped
images, an overlay PNG and a JSON report into the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import CLIError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="register the bundled CT against a synthetic-breathing version of itself",
        description=(
            "Registers a real chest CT (default: the bundled one) against a synthetic-breathing deformation of "
            "itself with known ground truth; prints TRE and time; writes field, warped image and overlay PNG."
        ),
    )
    p.add_argument("-o", "--output", type=Path, default=Path("mlvirnet_demo"), metavar="DIR",
                   help="output folder (created; default ./mlvirnet_demo)")
    p.add_argument("--image", type=Path, default=None, help="CT in HU to use instead of the bundled one")
    p.add_argument("--peak-mm", type=float, default=20.0, help="peak breathing displacement in mm (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic deformation and noise")
    p.add_argument("--landmarks", type=int, default=100, help="number of evaluation landmarks (default 100)")
    p.add_argument("--model", default="default", metavar="PATH",
                   help="model file, 'default' (shipped model) or 'none' (refinement only)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="refinement iterations per level (0 = network only; default: library default)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from ..core.devices import resolve_device
    from ..evaluation.metrics import tre
    from ..io.fields import write_field
    from ..io.images import read_image, write_image
    from ..paths import bundled_ct_path
    from ..preprocessing.lungmask import segment_lungs
    from ..registration.options import RegistrationOptions
    from ..registration.pipeline import register
    from ..registration.warp import warp_image
    from ..simulation.breathing import breathing_deformation, make_synthetic_pair, sample_landmarks
    from .progress import progress_bar

    if args.peak_mm <= 0:
        raise CLIError(f"--peak-mm must be > 0, got {args.peak_mm}")
    if args.refine is not None and args.refine < 0:
        raise CLIError(f"--refine must be >= 0, got {args.refine}")
    if args.output.exists() and not args.output.is_dir():
        raise CLIError(f"output {args.output} exists and is not a folder")
    resolve_device(args.device)
    image_path = args.image if args.image is not None else bundled_ct_path()
    if not image_path.exists():
        raise FileNotFoundError(f"CT not found: {image_path}")
    out = {name: args.output / name for name in ("fixed.nii.gz", "moving.nii.gz", "warped.nii.gz",
                                                 "field.nii.gz", "overlay.png", "report.json")}
    if any(p.resolve() == image_path.resolve() for p in out.values()):
        raise CLIError(f"the output folder {args.output} would overwrite the input {image_path}")

    fixed = read_image(image_path)
    from ..core.geometry import ImageGrid

    grid = ImageGrid.from_sitk(fixed)
    t0 = time.perf_counter()
    lungs = segment_lungs(fixed)
    truth = breathing_deformation(grid, lungs, peak_mm=args.peak_mm, seed=args.seed)
    moving, _ = make_synthetic_pair(fixed, truth, lungs, noise_hu=10.0, seed=args.seed)
    fixed_points = sample_landmarks(fixed, lungs, n=args.landmarks, seed=args.seed)
    import torch

    moving_points = truth.map_points(torch.as_tensor(fixed_points, dtype=torch.float32))[0].double().numpy()
    synth_time = time.perf_counter() - t0

    options = RegistrationOptions()
    if args.refine is not None:
        options.refine_iterations = int(args.refine)
    model = None if args.model == "none" else args.model
    with progress_bar("register", quiet=args.quiet) as progress:
        result = register(fixed, moving, lungs, None, model=model, device=args.device, options=options,
                          progress=progress)

    before = tre(fixed_points, moving_points)
    after = tre(fixed_points, moving_points, result.deformation)
    warped = warp_image(moving, result.deformation, padding_value=-1024.0)

    args.output.mkdir(parents=True, exist_ok=True)
    write_image(fixed, out["fixed.nii.gz"])
    write_image(moving, out["moving.nii.gz"])
    write_image(warped, out["warped.nii.gz"])
    write_field(result.deformation, out["field.nii.gz"])
    overlay = None
    try:
        from ..evaluation.plots import overlay_png

        overlay_png(fixed, moving, warped, out["overlay.png"])
        overlay = str(out["overlay.png"])
    except ImportError as exc:  # matplotlib is optional
        print(f"mlvirnet demo: no overlay PNG ({exc})", file=sys.stderr)

    report = {
        "image": str(image_path),
        "peak_displacement_mm": float(truth.displacement.norm(dim=1).max()),
        "landmarks": int(before.n),
        "tre_before_mm": {k: before.to_dict()[k] for k in ("mean", "std", "p95", "max")},
        "tre_after_mm": {k: after.to_dict()[k] for k in ("mean", "std", "p95", "max")},
        "direction": "fixed -> moving (fixed = bundled CT, moving = synthetic breathing)",
        "folding_percent": 100.0 * result.folding_fraction,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "synthesis_s": round(synth_time, 3),
        "model_used": result.model_used,
        "messages": result.messages,
        "outputs": {k: str(v) for k, v in out.items() if k != "overlay.png"} | {"overlay.png": overlay},
    }
    from ..evaluation.reports import write_json

    write_json(report, out["report.json"])
    for msg in result.messages:
        print(f"mlvirnet demo: {msg}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"CT {image_path.name}: {grid.size[0]}x{grid.size[1]}x{grid.size[2]} voxels, "
              f"synthetic breathing with {report['peak_displacement_mm']:.1f} mm peak displacement")
        print(f"TRE over {before.n} lung landmarks (fixed -> moving), mm: "
              f"before {before.mean:.2f} (sd {before.std:.2f}), after {after.mean:.2f} (sd {after.std:.2f}, "
              f"p95 {after.p95:.2f}, max {after.max:.2f})")
        print(f"folding {report['folding_percent']:.3f} % of voxels; registration {result.timings.get('total', np.nan):.1f} s "
              f"({', '.join(f'{k} {v:.1f}' for k, v in result.timings.items() if k != 'total')})")
        print(f"model: {result.model_used or 'none (refinement only)'}")
        print(f"wrote {args.output}/: field.nii.gz, warped.nii.gz, moving.nii.gz, fixed.nii.gz, "
              f"{'overlay.png, ' if overlay else ''}report.json")
    return 0
