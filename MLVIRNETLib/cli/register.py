"""``mlvirnet register``: register a moving CT to a fixed CT and write the deformation field.

The field (``-o``) is written with :func:`MLVIRNETLib.io.fields.write_field`: an ITK displacement
field on the fixed grid in LPS mm with ``x_moving = x_fixed + u(x_fixed)`` (resample the moving
image with it, e.g. ``mlvirnet warp``). Every input and output path is checked before any
computation; outputs are written atomically, so an error leaves no partial file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import CLIError, check_output, same_file
from .progress import progress_bar
from .settings import add_output_arguments, add_registration_arguments, check_registration_arguments, registration_settings

EPILOG = """\
presets (held-out CTs with 20 / 30 mm synthetic breathing, the shipped model, 2-core CPU; docs/performance.md):
  fast      affine + network: TRE 0.693-0.753 / 1.157-1.472 mm, 3.7-4.8 s (512x512x126 CT: 9.3 s)
  standard  + preconditioned refinement, 224 per axis: TRE 0.184-0.241 / 0.222-0.283 mm, 9.0-14.0 s (18.3 s)
  accurate  + finer refinement (288 per axis): TRE 0.161-0.234 / 0.183-0.260 mm, 14.7-19.1 s (30.9 s)

prints: 'wrote FIELD' on stdout (one JSON object with --json: outputs, timings, quality, messages);
notes and the quality warning (lung NCC or Dice below what real pairs reach) on stderr.

exit status: 0 when the field (and --warped) are written, 2 for bad input or a failed write (every
output is then as before: all are written to temporaries and published together), 130 after Ctrl-C.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "register",
        help="register MOVING to FIXED and write the deformation field",
        description=(
            "Register the MOVING CT to the FIXED CT (affine pre-alignment, mlVIRNET network, variational "
            "refinement) and write the displacement field on the fixed grid (LPS mm, x_moving = x_fixed + u)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("fixed", type=Path, metavar="FIXED", help="fixed CT in HU (file or DICOM folder)")
    p.add_argument("moving", type=Path, metavar="MOVING", help="moving CT in HU (file or DICOM folder)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="FIELD",
                   help="output displacement field (.nii.gz, .nrrd, .mha, .h5, .tfm)")
    p.add_argument("--warped", type=Path, metavar="OUT",
                   help="also write the moving image warped onto the fixed grid, in MOVING's pixel type (an "
                        "integer CT is rounded to whole HU and clipped to the type's range); see --warped-float32")
    p.add_argument("--warped-float32", action="store_true",
                   help="write --warped as float32 (no rounding) instead of in MOVING's pixel type")
    p.add_argument("--field-compression", type=int, default=None, choices=range(10), metavar="0-9",
                   help="gzip level of a .nii.gz field (default 0: stored, not compressed; a float field shrinks "
                        "by about 9 %% at level 1 and takes many seconds more)")
    p.add_argument("--fixed-mask", type=Path, metavar="M", help="lung mask of FIXED (same grid); default: automatic")
    p.add_argument("--moving-mask", type=Path, metavar="M", help="lung mask of MOVING (same grid)")
    add_registration_arguments(p)
    add_output_arguments(p, json_help="print one JSON object with timings and diagnostics on stdout")
    return p


def _check_inputs(args) -> None:
    for label in ("fixed", "moving", "fixed_mask", "moving_mask"):
        p = getattr(args, label)
        if p is not None and not p.exists():
            raise FileNotFoundError(f"{label.replace('_', ' ')} not found: {p}")
    check_registration_arguments(args)
    if args.warped_float32 and args.warped is None:
        raise CLIError("--warped-float32 needs --warped")


def run(args) -> int:
    import SimpleITK as sitk

    from ..io.atomic import atomic_outputs
    from ..io.fields import IMAGE_SUFFIXES, field_format, write_field
    from ..io.images import read_image, write_image
    from ..registration.pipeline import register
    from ..registration.warp import warp_image

    _check_inputs(args)
    inputs = {"FIXED": args.fixed, "MOVING": args.moving, "fixed mask": args.fixed_mask,
              "moving mask": args.moving_mask}
    if args.model not in ("default", "none"):
        inputs["model"] = Path(args.model)
    check_output(args.output, inputs, "output field")
    field_format(args.output)  # ValueError for an unsupported suffix, before any work
    if args.warped is not None:
        if not str(args.warped.name).lower().endswith(IMAGE_SUFFIXES):
            raise CLIError(f"--warped {args.warped}: use an image suffix ({', '.join(IMAGE_SUFFIXES)})")
        check_output(args.warped, {**inputs, "output field": args.output}, "warped output")
        if same_file(args.warped, args.output):
            raise CLIError("--warped and -o name the same file")

    from ..core.devices import resolve_device
    resolve_device(args.device)  # a CUDA request without a GPU fails here, before reading anything
    options, model = registration_settings(args)

    fixed = read_image(args.fixed)
    moving = read_image(args.moving)
    fixed_mask = read_image(args.fixed_mask) if args.fixed_mask is not None else None
    moving_mask = read_image(args.moving_mask) if args.moving_mask is not None else None

    with progress_bar("register", quiet=args.quiet) as progress:
        result = register(fixed, moving, fixed_mask, moving_mask, model=model, device=args.device,
                          options=options, progress=progress)
    targets = [args.output] + ([args.warped] if args.warped is not None else [])
    with atomic_outputs(targets) as tmp:  # all new or all as before
        level = {} if args.field_compression is None else {"compress_level": args.field_compression}
        write_field(result.deformation, tmp[0], **level)
        if args.warped is not None:
            pixel_type = sitk.sitkFloat32 if args.warped_float32 else None  # None: MOVING's pixel type
            write_image(warp_image(moving, result.deformation, padding_value=-1024.0, pixel_type=pixel_type), tmp[1])
    for msg in result.messages:
        print(f"mlvirnet register: {msg}", file=sys.stderr)
    if args.json:
        info = {
            "field": str(args.output),
            "warped": str(args.warped) if args.warped is not None else None,
            "timings": {k: round(v, 4) for k, v in result.timings.items()},
            "folding_fraction": result.folding_fraction,
            "model_used": result.model_used,
            "affine": result.affine.tolist() if result.affine is not None else None,
            "network_grid": list(result.network_grid.size) if result.network_grid is not None else None,
            "quality": result.quality.to_dict() if result.quality is not None else None,
            "messages": result.messages,
        }
        print(json.dumps(info))
    else:
        print(f"wrote {args.output}")
    return 0
