"""``mlvirnet evaluate-dirlab``: the landmark protocol of the mlVIRNET paper's Table 1 on DIR-LAB.

Per case: the 300 expert landmark pairs, converted to mm with the case's geometry
(:func:`MLVIRNETLib.io.dirlab.dirlab_grid`); the initial error ``|fixed - moving|`` and, with
precomputed fields (``--fields``) or a registration run now on the raw images (``--register``),
the registered error ``|y(fixed) - moving|``; mean and population sd per case and pooled over all
points. The direction is stated in every output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..core.deformation import Deformation
from ..evaluation.metrics import TREResult, tre
from ..evaluation.reports import tre_markdown, tre_table, write_tre_report
from ..io.dirlab import (
    DATASETS,
    DirlabCaseFiles,
    all_cases,
    dirlab_grid,
    find_dirlab_case_files,
    list_files,
    parse_case,
    read_dirlab_image,
)
from ..io.fields import IMAGE_SUFFIXES, TRANSFORM_SUFFIXES, read_field, write_field
from ..io.landmarks import read_landmarks
from . import CLIError


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
        help="cases: '4dct' (all 4D-CT cases found), 'copd' (all COPD cases found), or '4dct:N' / 'copd:N' (default 4dct)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--fields", type=Path, metavar="FIELDDIR", help="folder with one precomputed deformation field per case")
    source.add_argument(
        "--register",
        action="store_true",
        help="register each case now (raw DIR-LAB .img images below --root) with MLVIRNETLib.registration.pipeline.register",
    )
    p.add_argument(
        "--fixed-phase",
        choices=("inhale", "exhale"),
        default="inhale",
        help="which phase is the fixed image (default inhale: T00/iBH fixed, T50/eBH moving)",
    )
    p.add_argument("--snap-to-voxel", action="store_true", help="round mapped points to moving voxel centres (DIR-LAB protocol)")
    p.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="write dirlab_tre.json, .csv and .md here")
    reg = p.add_argument_group("with --register")
    reg.add_argument("--model", default="default", help="model file, 'default' (shipped model) or 'none' (refinement only)")
    reg.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    reg.add_argument("--network-size", type=int, metavar="N", help="network grid N^3 (default: the registration default)")
    reg.add_argument("--refine-iterations", type=int, metavar="N", help="refinement iterations per level (default: registration default)")
    reg.add_argument("--no-affine", action="store_true", help="skip the affine pre-alignment")
    reg.add_argument("--save-fields", type=Path, metavar="DIR", help="also write each case's field as DIR/<case>.nii.gz")
    return p


def resolve_cases(tokens: list[str], files: list[Path], root: Path) -> tuple[list[str], list[str]]:
    """Expand case tokens -> (cases to evaluate, cases of a group skipped because their files are absent)."""
    cases: list[str] = []
    skipped: list[str] = []
    for token in tokens:
        key = token.strip().lower()
        if key in DATASETS:
            found = []
            for case in all_cases(key):
                try:
                    find_dirlab_case_files(root, case, files=files)
                    found.append(case)
                except FileNotFoundError:
                    skipped.append(case)
            if not found:
                raise FileNotFoundError(f"no {key} landmark files found under {root}")
            cases.extend(c for c in found if c not in cases)
        else:
            name = parse_case(key).name
            if name not in cases:
                cases.append(name)
    return cases, skipped


def _field_stems(case: str) -> set[str]:
    c = parse_case(case)
    short = f"case{c.number}" if c.dataset == "4dct" else f"copd{c.number}"
    return {c.slug, f"{c.dataset}_{c.number}", f"{c.dataset}-{c.number}", short, f"{c.dataset}_{short}"}


def find_field(field_dir: Path, case: str) -> Path:
    """The single field file for ``case`` in ``field_dir`` (see :func:`_field_stems` for accepted names)."""
    if not field_dir.is_dir():
        raise FileNotFoundError(f"field folder not found: {field_dir}")
    stems = _field_stems(case)
    hits = []
    for p in sorted(field_dir.iterdir()):
        name = p.name.lower()
        for suffix in sorted(IMAGE_SUFFIXES + TRANSFORM_SUFFIXES, key=len, reverse=True):
            if name.endswith(suffix):
                if name[: -len(suffix)] in stems:
                    hits.append(p)
                break
    if not hits:
        raise FileNotFoundError(f"no deformation field for case {case} in {field_dir} (expected e.g. {parse_case(case).slug}.nii.gz)")
    if len(hits) > 1:
        raise ValueError(f"several fields for case {case} in {field_dir}: {', '.join(p.name for p in hits)}")
    return hits[0]


def register_case(found: DirlabCaseFiles, fixed_phase: str, args) -> tuple[Deformation, dict]:
    """Run :func:`MLVIRNETLib.registration.pipeline.register` on the raw images of one case -> (deformation, details)."""
    from ..registration.options import RegistrationOptions
    from ..registration.pipeline import register

    c = parse_case(found.case)
    phases = ("inhale", "exhale") if fixed_phase == "inhale" else ("exhale", "inhale")
    fixed, moving = (read_dirlab_image(getattr(found, f"{ph}_image"), c) for ph in phases)
    overrides: dict = {}
    if args.network_size is not None:
        overrides["network_size"] = (args.network_size,) * 3
    if args.refine_iterations is not None:
        overrides["refine_iterations"] = args.refine_iterations
    if args.no_affine:
        overrides["affine"] = False
    model = None if str(args.model).lower() == "none" else args.model
    result = register(fixed, moving, model=model, device=args.device, options=RegistrationOptions(**overrides))
    details = {
        "fixed_image": str(getattr(found, f"{phases[0]}_image")),
        "moving_image": str(getattr(found, f"{phases[1]}_image")),
        "model_used": result.model_used,
        "timings_s": dict(result.timings),
        "folding_fraction": result.folding_fraction,
        "messages": list(result.messages),
    }
    return result.deformation, details


def evaluate_case(
    case: str, root: Path, files: list[Path], fixed_phase: str, field_path: Path | None, snap: bool, args=None
) -> tuple[dict[str, TREResult], dict]:
    """Initial (and registered) TRE of one case -> (results, details).

    With ``args.register`` the case is registered now (see :func:`register_case`); otherwise the
    field at ``field_path`` (if any) is used.
    """
    c = parse_case(case)
    grid = dirlab_grid(c)
    registering = args is not None and getattr(args, "register", False)
    found = find_dirlab_case_files(root, c, files=files, require_images=registering)
    inhale = read_landmarks(found.inhale_landmarks, grid, fmt="dirlab")
    exhale = read_landmarks(found.exhale_landmarks, grid, fmt="dirlab")
    if fixed_phase == "inhale":
        fixed, moving, fixed_tag, moving_tag = inhale, exhale, c.inhale_tag, c.exhale_tag
        fixed_file, moving_file = found.inhale_landmarks, found.exhale_landmarks
    else:
        fixed, moving, fixed_tag, moving_tag = exhale, inhale, c.exhale_tag, c.inhale_tag
        fixed_file, moving_file = found.exhale_landmarks, found.inhale_landmarks
    snap_grid = grid if snap else None
    results = {"initial": tre(fixed, moving, snap_grid=snap_grid)}
    details = {
        "fixed": fixed_tag,
        "moving": moving_tag,
        "fixed_landmarks": str(fixed_file),
        "moving_landmarks": str(moving_file),
        "spacing_mm": list(grid.spacing),
        "size": list(grid.size),
    }
    deformation = None
    if registering:
        deformation, reg_details = register_case(found, fixed_phase, args)
        details["registration"] = reg_details
        if args.save_fields is not None:
            details["field"] = str(write_field(deformation, args.save_fields / f"{c.slug}.nii.gz"))
        source = "registration"
    elif field_path is not None:
        deformation = read_field(field_path, dtype=torch.float64)
        details["field"] = str(field_path)
        source = f"field {field_path}"
    if deformation is not None:
        try:
            results["registered"] = tre(fixed, moving, deformation, snap_grid=snap_grid)
        except ValueError as exc:
            raise ValueError(f"case {c.name}, {source}: {exc}") from None
        details["field_grid_matches_dirlab"] = deformation.grid.is_close(grid, tol_mm=1e-3)
    return results, details


def run(args) -> int:
    root: Path = args.root
    files = list_files(root)
    cases, skipped = resolve_cases(args.cases, files, root)
    field_paths = {case: find_field(args.fields, case) for case in cases} if args.fields is not None else {}
    if args.register:
        for case in cases:  # fail before the first (long) registration if an image is missing
            find_dirlab_case_files(root, case, files=files, require_images=True)
        if args.save_fields is not None and not args.save_fields.is_dir():
            raise FileNotFoundError(f"--save-fields folder does not exist: {args.save_fields}")
    elif args.save_fields is not None:
        raise CLIError("--save-fields needs --register")
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise CLIError(f"output {args.output} exists and is not a folder")

    results: dict[str, dict[str, TREResult]] = {}
    details: dict[str, dict] = {}
    for case in cases:
        results[case], details[case] = evaluate_case(
            case, root, files, args.fixed_phase, field_paths.get(case), args.snap_to_voxel, args
        )
    tags = sorted({(d["fixed"], d["moving"]) for d in details.values()})
    direction = "fixed -> moving: " + ", ".join(f"{f} fixed, {m} moving" for f, m in tags)
    if field_paths or args.register:
        direction += " (fixed landmarks mapped through the field, x_moving = x_fixed + u(x_fixed))"
    datasets = sorted({parse_case(c).dataset for c in cases})
    groups = {ds: [c for c in cases if parse_case(c).dataset == ds] for ds in datasets} if len(datasets) > 1 else None
    table = tre_table(results, groups)
    title = "DIR-LAB landmark error"
    print(tre_markdown(table, title=title, note=f"Direction: {direction}." + (" Snapped to voxels." if args.snap_to_voxel else "")))
    if skipped:
        print(f"not found under {root} (skipped): {', '.join(skipped)}", file=sys.stderr)
    if args.output is not None:
        metadata = {
            "protocol": (
                "DIR-LAB expert landmarks (1-based voxel indices) converted to mm with the DIR-LAB voxel "
                "spacing; TRE = |y(fixed) - moving| (initial: |fixed - moving|); mean and population sd per "
                "case; total pools every point"
            ),
            "fixed_phase": args.fixed_phase,
            "registered_from": "register" if args.register else ("fields" if field_paths else None),
            "snap_to_voxel": bool(args.snap_to_voxel),
            "skipped_cases": skipped,
            "case_details": details,
        }
        paths = write_tre_report(
            results, args.output, stem="dirlab_tre", title=title, direction=direction, metadata=metadata, groups=groups
        )
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
