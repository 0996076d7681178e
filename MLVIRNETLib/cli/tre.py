"""``mlvirnet tre``: target registration error between two landmark files, fixed -> moving."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..core.geometry import ImageGrid
from ..evaluation.metrics import tre
from ..io.dirlab import dirlab_grid
from ..io.fields import read_field
from ..io.images import read_image_grid
from ..io.landmarks import landmark_format, read_landmark_pairs
from . import CLIError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tre",
        help="landmark error (TRE) fixed -> moving, initial or through a deformation field",
        description=(
            "Target registration error in mm. Fixed landmarks are mapped through the field "
            "(x_moving = x_fixed + u(x_fixed)) and compared with the moving landmarks; without --field "
            "the initial error |fixed - moving| is reported. Landmark files: DIR-LAB .txt (1-based voxel "
            "indices; needs --dirlab-case or the images), Slicer .mrk.json/.fcsv, or .csv in LPS mm."
        ),
    )
    p.add_argument("--fixed-landmarks", required=True, type=Path, metavar="FILE", help="landmarks in the fixed image")
    p.add_argument("--moving-landmarks", required=True, type=Path, metavar="FILE", help="corresponding landmarks in the moving image")
    p.add_argument("--field", type=Path, nargs="+", metavar="FILE",
                   help="deformation field on the fixed grid (fixed -> moving), or several transforms in "
                        "antsApplyTransforms -t order (e.g. 1Warp.nii.gz 0GenericAffine.mat)")
    p.add_argument("--dirlab-case", metavar="CASE", help="DIR-LAB case ('4dct:N' or 'copd:N') giving the geometry of voxel-index files")
    p.add_argument("--fixed-image", type=Path, metavar="IMAGE", help="fixed image (its grid converts voxel-index landmarks)")
    p.add_argument("--moving-image", type=Path, metavar="IMAGE", help="moving image (its grid converts voxel-index landmarks and is the snap grid)")
    p.add_argument(
        "--snap-to-voxel",
        action="store_true",
        help="round each mapped point to the nearest voxel centre of the moving grid before measuring (DIR-LAB protocol)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a readable summary")
    p.add_argument("--per-point", action="store_true", help="with --json: include the error of every point")
    return p


def _grids(args) -> tuple[ImageGrid | None, ImageGrid | None]:
    fixed_grid = moving_grid = None
    if args.dirlab_case:
        fixed_grid = moving_grid = dirlab_grid(args.dirlab_case)
    if args.fixed_image is not None:
        fixed_grid = read_image_grid(args.fixed_image)
    if args.moving_image is not None:
        moving_grid = read_image_grid(args.moving_image)
    return fixed_grid, moving_grid


def _needs_grid(path: Path) -> bool:
    return landmark_format(path) == "dirlab"


def run(args) -> int:
    fixed_grid, moving_grid = _grids(args)
    for path, grid, role in ((args.fixed_landmarks, fixed_grid, "fixed"), (args.moving_landmarks, moving_grid, "moving")):
        if _needs_grid(path) and grid is None:
            raise CLIError(
                f"{path} holds voxel indices: give --dirlab-case 4dct:N|copd:N or --{role}-image so they can be converted to mm"
            )
    if args.snap_to_voxel and moving_grid is None:
        raise CLIError("--snap-to-voxel needs the moving grid: give --dirlab-case or --moving-image")
    pairs = read_landmark_pairs(args.fixed_landmarks, args.moving_landmarks, fixed_grid, moving_grid)
    fixed, moving = pairs.fixed, pairs.moving
    fields = args.field[0] if args.field is not None and len(args.field) == 1 else args.field
    deformation = read_field(fields, dtype=torch.float64) if fields is not None else None
    result = tre(fixed, moving, deformation, snap_grid=moving_grid if args.snap_to_voxel else None)
    kind = "registered" if deformation is not None else "initial"
    if args.json:
        doc = {"kind": kind, **result.to_dict(include_points=args.per_point), "units": "mm", "std_definition": "population"}
        doc["skipped_landmarks"] = pairs.skipped
        doc["paired_by"] = "label" if pairs.labels is not None else "position"
        doc["fixed_landmarks"] = str(args.fixed_landmarks)
        doc["moving_landmarks"] = str(args.moving_landmarks)
        doc["field"] = None if fields is None else str(fields) if len(args.field) == 1 else [str(f) for f in fields]
        print(json.dumps(doc))
    else:
        what = f"through {' + '.join(str(f) for f in args.field)}" if deformation is not None else "initial (no field)"
        print(f"TRE {what}, direction fixed -> moving ({args.fixed_landmarks.name} -> {args.moving_landmarks.name})")
        print(f"  n = {result.n} landmarks{', snapped to moving voxels' if result.snapped else ''}")
        if pairs.note is not None:
            print(f"  {pairs.note}")
        print(f"  mean {result.mean:.2f} mm, sd {result.std:.2f} mm (population), p95 {result.p95:.2f} mm, max {result.max:.2f} mm")
    return 0
