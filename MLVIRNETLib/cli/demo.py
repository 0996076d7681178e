"""``mlvirnet demo``: register a real chest CT against a synthetic-breathing version of itself.

Argument parsing and printing only; the work is :func:`MLVIRNETLib.evaluation.demo.run_demo`. The
bundled CT (TotalSegmentator test image, Apache-2.0) is the fixed image; a realistic breathing
deformation gives the moving image and the ground truth. The demo registers the pair with the
default settings, prints the landmark TRE before and after and the time taken, and writes the
field, the moving and warped images, an overlay PNG and a JSON report into the output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import CLIError
from .settings import add_model_and_device_arguments, add_preset_argument


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
    add_preset_argument(p)
    add_model_and_device_arguments(p)
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="refinement iterations per level (0 = network only; default: those of the preset)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from ..evaluation.demo import DemoConfig, run_demo
    from .progress import progress_bar

    if args.peak_mm <= 0:
        raise CLIError(f"--peak-mm must be > 0, got {args.peak_mm}")
    if args.refine is not None and args.refine < 0:
        raise CLIError(f"--refine must be >= 0, got {args.refine}")
    if args.landmarks < 1:
        raise CLIError(f"--landmarks must be >= 1, got {args.landmarks}")
    config = DemoConfig(
        image=args.image,
        peak_mm=args.peak_mm,
        seed=args.seed,
        landmarks=args.landmarks,
        model=None if args.model == "none" else args.model,
        device=args.device,
        refine_iterations=args.refine,
        preset=args.preset,
    )
    with progress_bar("register", quiet=args.quiet) as progress:
        result = run_demo(args.output, config, progress=progress)

    if result.overlay_error is not None:
        print(f"mlvirnet demo: no overlay PNG ({result.overlay_error})", file=sys.stderr)
    for msg in result.messages:
        print(f"mlvirnet demo: {msg}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.report))
        return 0
    before, after, timings = result.tre_before, result.tre_after, result.timings_s
    nx, ny, nz = result.size
    print(f"CT {result.image.name}: {nx}x{ny}x{nz} voxels, "
          f"synthetic breathing with {result.peak_displacement_mm:.1f} mm peak displacement")
    print(f"TRE over {before.n} lung landmarks (fixed -> moving), mm: "
          f"before {before.mean:.2f} (sd {before.std:.2f}), after {after.mean:.2f} (sd {after.std:.2f}, "
          f"p95 {after.p95:.2f}, max {after.max:.2f})")
    print(f"folding {result.folding_percent:.3f} % of voxels; registration {timings.get('total', math.nan):.1f} s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in timings.items() if k != 'total')})")
    print(f"model: {result.model_used or 'none (refinement only)'}")
    overlay = "overlay.png, " if result.outputs.get("overlay.png") else ""
    print(f"wrote {args.output}/: field.nii.gz, warped.nii.gz, moving.nii.gz, fixed.nii.gz, {overlay}report.json")
    return 0
