"""``mlvirnet evaluate-dirlab``: the landmark protocol of the mlVIRNET paper's Table 1 on DIR-LAB.

Argument parsing and printing only; the work is
:func:`MLVIRNETLib.evaluation.dirlab_evaluation.evaluate_dirlab` (initial and registered TRE per
case and pooled, with the direction stated in every output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation.dirlab_evaluation import DirlabEvaluationConfig, DirlabRegistrationSettings, evaluate_dirlab
from . import CLIError
from .settings import add_registration_arguments


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate-dirlab",
        help="DIR-LAB landmark evaluation (initial and registered TRE per case and in total)",
        description=(
            "Evaluate on DIR-LAB 4D-CT / COPDgene landmarks found below --root (any folder layout, "
            "known file-name variants). Without --fields only the initial error is reported. Fields "
            "map fixed -> moving on the fixed DIR-LAB grid and are found in FIELDDIR by case name, "
            "e.g. 4dct_case1.nii.gz, case1.h5, copd_case2.mha."
        ),
    )
    p.add_argument("--root", required=True, type=Path, metavar="DIR", help="folder holding the DIR-LAB landmark files")
    p.add_argument(
        "--cases",
        nargs="+",
        default=["4dct"],
        metavar="CASE",
        help="cases: '4dct' (all 4D-CT cases found), 'copd' (all COPD cases found), "
        "or '4dct:N' / 'copd:N' (default 4dct)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--fields", type=Path, metavar="FIELDDIR",
                        help="folder with one precomputed deformation field per case")
    source.add_argument(
        "--register",
        action="store_true",
        help="register each case now (raw DIR-LAB .img images below --root) "
        "with MLVIRNETLib.registration.pipeline.register",
    )
    p.add_argument(
        "--fixed-phase",
        choices=("inhale", "exhale"),
        default="inhale",
        help="which phase is the fixed image (default inhale: T00/iBH fixed, T50/eBH moving)",
    )
    p.add_argument("--snap-to-voxel", action="store_true",
                   help="round mapped points to moving voxel centres (DIR-LAB protocol)")
    p.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="write dirlab_tre.json, .csv and .md here")
    reg = p.add_argument_group("with --register")
    add_registration_arguments(reg)
    reg.add_argument("--save-fields", type=Path, metavar="DIR",
                     help="also write each case's field as DIR/<case>.nii.gz")
    return p


def _registration(args) -> DirlabRegistrationSettings | None:
    if not args.register:
        if args.save_fields is not None:
            raise CLIError("--save-fields needs --register")
        return None
    if args.save_fields is not None and not args.save_fields.is_dir():
        raise FileNotFoundError(f"--save-fields folder does not exist: {args.save_fields}")
    return DirlabRegistrationSettings(
        model=None if str(args.model).lower() == "none" else args.model,
        device=args.device,
        grid_size=tuple(args.grid_size) if args.grid_size is not None else None,
        refine_iterations=args.refine,
        preset=args.preset,
        affine=not args.no_affine,
        save_fields=args.save_fields,
    )


def run(args) -> int:
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise CLIError(f"output {args.output} exists and is not a folder")
    config = DirlabEvaluationConfig(
        root=args.root,
        cases=list(args.cases),
        fields=args.fields,
        registration=_registration(args),
        fixed_phase=args.fixed_phase,
        snap_to_voxel=args.snap_to_voxel,
    )
    evaluation = evaluate_dirlab(config, output_dir=args.output)
    print(evaluation.markdown())
    if evaluation.skipped:
        print(f"not found under {args.root} (skipped): {', '.join(evaluation.skipped)}", file=sys.stderr)
    if evaluation.outputs:
        print("wrote " + ", ".join(str(p) for p in evaluation.outputs.values()))
    return 0
