"""The landmark protocol of the mlVIRNET paper's Table 1 on DIR-LAB (4D-CT and COPDgene).

Per case: the 300 expert landmark pairs, converted to mm with the case's geometry
(:func:`MLVIRNETLib.io.dirlab.dirlab_grid`); the initial error ``|fixed - moving|`` and, with
precomputed fields (:attr:`DirlabEvaluationConfig.fields`) or a registration run now on the raw
images (:attr:`DirlabEvaluationConfig.registration`), the registered error ``|y(fixed) - moving|``;
mean and population sd per case and pooled over all points. The direction is stated in every output.

:func:`evaluate_dirlab` does the whole evaluation (and writes ``dirlab_tre.json``, ``.csv`` and
``.md`` only after every case succeeded); ``mlvirnet evaluate-dirlab`` is a thin wrapper around it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.deformation import Deformation
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
from .metrics import TREResult, tre
from .reports import tre_markdown, tre_table, write_tre_report

PathLike = str | os.PathLike

TITLE = "DIR-LAB landmark error"
REPORT_STEM = "dirlab_tre"
FIXED_PHASES = ("inhale", "exhale")
PROTOCOL = (
    "DIR-LAB expert landmarks (1-based voxel indices) converted to mm with the DIR-LAB voxel "
    "spacing; TRE = |y(fixed) - moving| (initial: |fixed - moving|); mean and population sd per "
    "case; total pools every point"
)


@dataclass
class DirlabRegistrationSettings:
    """How :func:`evaluate_dirlab` registers each case (raw ``.img`` images below the root).

    Attributes:
        model: model file, ``"default"`` (the shipped model) or ``None`` (refinement only).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        grid_size: working grid ``N`` (``N^3``) or ``(NX, NY, NZ)``; ``None`` = the preset's.
        refine_iterations: refinement iterations per level; ``None`` = the registration default.
        preset: a preset name (``fast``, ``standard``, ``accurate``) the other settings override;
            ``None`` = the default options.
        affine: run the affine pre-alignment.
        save_fields: existing folder where each case's field is written as ``<case slug>.nii.gz``.
    """

    model: str | Path | None = "default"
    device: str = "auto"
    grid_size: int | tuple[int, int, int] | None = None
    refine_iterations: int | None = None
    preset: str | None = None
    affine: bool = True
    save_fields: Path | None = None


@dataclass
class DirlabEvaluationConfig:
    """Settings of :func:`evaluate_dirlab`.

    Attributes:
        root: folder holding the DIR-LAB landmark (and, to register, image) files, any layout.
        cases: ``"4dct"`` / ``"copd"`` (every case of the dataset found below ``root``) or single
            cases ``"4dct:N"`` / ``"copd:N"``.
        fields: folder with one precomputed field per case (fixed -> moving on the fixed DIR-LAB
            grid), found by case name (see :func:`find_field`).
        registration: register each case now with these settings (exclusive with ``fields``).
        fixed_phase: ``"inhale"`` (T00 / iBH fixed, T50 / eBH moving) or ``"exhale"``.
        snap_to_voxel: round mapped points to moving voxel centres (the DIR-LAB protocol).
    """

    root: Path
    cases: Sequence[str] = ("4dct",)
    fields: Path | None = None
    registration: DirlabRegistrationSettings | None = None
    fixed_phase: str = "inhale"
    snap_to_voxel: bool = False


@dataclass
class DirlabEvaluation:
    """Result of :func:`evaluate_dirlab`.

    Attributes:
        results: ``{case: {"initial": TREResult, "registered": TREResult}}`` (``registered`` only
            with fields or a registration).
        details: per case: phases, landmark files, geometry, field file, registration details.
        skipped: cases of a dataset token whose files are absent below the root.
        direction: the mapping direction, stated in every output.
        groups: ``{dataset: [case, ...]}`` when several datasets were evaluated, else ``None``.
        metadata: the extra fields of the JSON report (protocol, settings, case details).
        outputs: ``{"json" | "csv" | "markdown": path}`` when a report was written, else empty.
    """

    results: dict[str, dict[str, TREResult]]
    details: dict[str, dict[str, Any]]
    skipped: list[str]
    direction: str
    groups: dict[str, list[str]] | None
    snap_to_voxel: bool
    metadata: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)

    def table(self) -> dict[str, dict[str, TREResult]]:
        """The per-case rows plus the pooled ``total`` rows (see :func:`~MLVIRNETLib.evaluation.reports.tre_table`)."""
        return tre_table(self.results, self.groups)

    def markdown(self) -> str:
        """The table as Markdown, titled, with the direction stated."""
        note = f"Direction: {self.direction}." + (" Snapped to voxels." if self.snap_to_voxel else "")
        return tre_markdown(self.table(), title=TITLE, note=note)


def resolve_cases(tokens: Sequence[str], files: list[Path], root: Path) -> tuple[list[str], list[str]]:
    """Expand case tokens -> (cases to evaluate, cases of a dataset token skipped because their files are absent).

    Raises:
        FileNotFoundError: a dataset token matches no case below ``root``.
        ValueError: a token is neither a dataset nor a case name.
    """
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
    """The single field file for ``case`` in ``field_dir``.

    Accepted names (any field suffix, case-insensitive), e.g. for ``4dct:1``: ``4dct_case1``,
    ``4dct_1``, ``4dct-1``, ``case1``, ``4dct_case1``; for ``copd:2``: ``copd_case2``, ``copd2``, ...

    Raises:
        FileNotFoundError: the folder or the case's field is missing.
        ValueError: several fields match the case.
    """
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
        raise FileNotFoundError(
            f"no deformation field for case {case} in {field_dir} (expected e.g. {parse_case(case).slug}.nii.gz)"
        )
    if len(hits) > 1:
        raise ValueError(f"several fields for case {case} in {field_dir}: {', '.join(p.name for p in hits)}")
    return hits[0]


def register_case(
    found: DirlabCaseFiles, fixed_phase: str, settings: DirlabRegistrationSettings
) -> tuple[Deformation, dict[str, Any]]:
    """Run :func:`MLVIRNETLib.registration.pipeline.register` on the raw images of one case.

    Returns:
        ``(deformation fixed -> moving on the fixed DIR-LAB grid, details)``.
    """
    from ..registration.pipeline import register
    from ..registration.presets import options_for

    c = parse_case(found.case)
    phases = ("inhale", "exhale") if fixed_phase == "inhale" else ("exhale", "inhale")
    fixed, moving = (read_dirlab_image(getattr(found, f"{ph}_image"), c) for ph in phases)
    size = settings.grid_size
    options = options_for(
        settings.preset or "standard",
        grid={"size": None if size is None else ((size,) * 3 if isinstance(size, int) else tuple(size))},
        refinement={"iterations": settings.refine_iterations},
        **({} if settings.affine else {"affine": None}),
    )
    result = register(fixed, moving, model=settings.model, device=settings.device, options=options)
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
    case: str,
    root: Path,
    files: list[Path],
    fixed_phase: str = "inhale",
    field_path: Path | None = None,
    snap: bool = False,
    registration: DirlabRegistrationSettings | None = None,
) -> tuple[dict[str, TREResult], dict[str, Any]]:
    """Initial (and registered) TRE of one case -> (results, details).

    With ``registration`` the case is registered now (see :func:`register_case`); otherwise the
    field at ``field_path`` (if any) is used.

    Raises:
        FileNotFoundError: a landmark file (or, to register, an image) of the case is missing.
        ValueError: malformed landmarks, or landmarks outside the field's grid.
    """
    c = parse_case(case)
    grid = dirlab_grid(c)
    found = find_dirlab_case_files(root, c, files=files, require_images=registration is not None)
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
    details: dict[str, Any] = {
        "fixed": fixed_tag,
        "moving": moving_tag,
        "fixed_landmarks": str(fixed_file),
        "moving_landmarks": str(moving_file),
        "spacing_mm": list(grid.spacing),
        "size": list(grid.size),
    }
    deformation = None
    if registration is not None:
        deformation, reg_details = register_case(found, fixed_phase, registration)
        details["registration"] = reg_details
        if registration.save_fields is not None:
            details["field"] = str(write_field(deformation, registration.save_fields / f"{c.slug}.nii.gz"))
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


def _check(config: DirlabEvaluationConfig, output_dir: Path | None) -> None:
    if config.fixed_phase not in FIXED_PHASES:
        raise ValueError(f"fixed_phase must be one of {FIXED_PHASES}, got {config.fixed_phase!r}")
    if config.fields is not None and config.registration is not None:
        raise ValueError("give precomputed fields or registration settings, not both")
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output {output_dir} exists and is not a folder")


def evaluate_dirlab(config: DirlabEvaluationConfig, output_dir: PathLike | None = None) -> DirlabEvaluation:
    """Evaluate the DIR-LAB landmark error of every case in ``config``; optionally write the report.

    Every input is checked before the first case is evaluated (fields found, images present for a
    registration, the output folder usable), and the report files (``dirlab_tre.json``, ``.csv``,
    ``.md`` in ``output_dir``) are written only after every case succeeded.

    Returns:
        :class:`DirlabEvaluation`; its ``outputs`` name the written files.

    Raises:
        FileNotFoundError: the root, a case's landmarks or field, an image to register, or the
            ``save_fields`` folder is missing; a dataset token matches no case.
        ValueError: inconsistent settings, an output path that is a file, several fields for one
            case, malformed landmarks, or landmarks outside a field's grid.
    """
    out = Path(output_dir) if output_dir is not None else None
    _check(config, out)
    root = Path(config.root)
    files = list_files(root)
    cases, skipped = resolve_cases(config.cases, files, root)
    field_paths = {case: find_field(Path(config.fields), case) for case in cases} if config.fields is not None else {}
    reg = config.registration
    if reg is not None:
        for case in cases:  # fail before the first (long) registration if an image is missing
            find_dirlab_case_files(root, case, files=files, require_images=True)
        if reg.save_fields is not None and not Path(reg.save_fields).is_dir():
            raise FileNotFoundError(f"save_fields folder does not exist: {reg.save_fields}")

    results: dict[str, dict[str, TREResult]] = {}
    details: dict[str, dict[str, Any]] = {}
    for case in cases:
        results[case], details[case] = evaluate_case(
            case, root, files, config.fixed_phase, field_paths.get(case), config.snap_to_voxel, reg
        )
    tags = sorted({(d["fixed"], d["moving"]) for d in details.values()})
    direction = "fixed -> moving: " + ", ".join(f"{f} fixed, {m} moving" for f, m in tags)
    if field_paths or reg is not None:
        direction += " (fixed landmarks mapped through the field, x_moving = x_fixed + u(x_fixed))"
    datasets = sorted({parse_case(c).dataset for c in cases})
    groups = {ds: [c for c in cases if parse_case(c).dataset == ds] for ds in datasets} if len(datasets) > 1 else None
    metadata = {
        "protocol": PROTOCOL,
        "fixed_phase": config.fixed_phase,
        "registered_from": "register" if reg is not None else ("fields" if field_paths else None),
        "snap_to_voxel": bool(config.snap_to_voxel),
        "skipped_cases": skipped,
        "case_details": details,
    }
    evaluation = DirlabEvaluation(results, details, skipped, direction, groups, bool(config.snap_to_voxel), metadata)
    if out is not None:
        evaluation.outputs = write_tre_report(
            results, out, stem=REPORT_STEM, title=TITLE, direction=direction, metadata=metadata, groups=groups
        )
    return evaluation
