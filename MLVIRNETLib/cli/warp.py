"""``mlvirnet warp``: resample a moving image through a deformation field onto the field's (fixed) grid."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..core.devices import resolve_device
from ..io.fields import read_field
from ..io.images import image_to_tensor, read_image, tensor_to_image, write_image
from . import CLIError, check_output


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "warp",
        help="warp a moving image (or label map) with a deformation field",
        description=(
            "Resample MOVING at y(x) = x + u(x) for every voxel x of the field's grid (the fixed grid); "
            "the output has the field's geometry and MOVING's pixel type."
        ),
    )
    p.add_argument("moving", type=Path, metavar="MOVING", help="moving image (file or DICOM folder)")
    p.add_argument("field", type=Path, nargs="+", metavar="FIELD",
                   help="deformation field fixed -> moving (.nii.gz, .nrrd, .mha, .h5, .tfm, an ANTs Composite.h5), "
                        "or several transforms in antsApplyTransforms -t order (e.g. 1Warp.nii.gz 0GenericAffine.mat)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="output image file")
    p.add_argument("--label", action="store_true", help="MOVING is a label map: nearest-neighbour, 0 outside")
    p.add_argument(
        "--padding",
        choices=("border", "zeros"),
        default="border",
        help="value outside MOVING for intensity images: nearest border value (default) or 0",
    )
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="compute device: cpu (default), auto, cuda or cuda:N")
    return p


def run(args) -> int:
    out: Path = args.output
    for path, name in ((args.moving, "MOVING"), *((f, "FIELD") for f in args.field)):
        if not path.exists():
            raise FileNotFoundError(f"{name} not found: {path}")
    check_output(out, {"MOVING": args.moving, **{f"FIELD {f}": f for f in args.field}}, "output")
    device = resolve_device(args.device)  # a CUDA request without a GPU fails here, before reading anything
    moving_image = read_image(args.moving)
    if moving_image.GetNumberOfComponentsPerPixel() != 1:
        raise CLIError(f"{args.moving} has {moving_image.GetNumberOfComponentsPerPixel()} components per voxel; "
                       "warp needs a scalar image")
    deformation = read_field(args.field[0] if len(args.field) == 1 else args.field, device=device)
    pixel_type = moving_image.GetPixelID()
    if args.label:
        values, grid = image_to_tensor(moving_image, dtype=torch.float64, device=device)
        if not torch.equal(values, values.round()):
            raise CLIError(f"--label needs an integer label map, but {args.moving} holds non-integer values")
        labels = values.to(torch.int64)
        warped = deformation.warp_labels(labels, grid, mode="nearest")
    else:
        image, grid = image_to_tensor(moving_image, dtype=torch.float32, device=device)
        warped = deformation.warp(image, grid, mode="bilinear", padding_mode=args.padding)
    result = tensor_to_image(warped, deformation.grid, pixel_type=pixel_type)
    write_image(result, out)
    print(f"wrote {out} ({deformation.grid.describe()})")
    return 0
