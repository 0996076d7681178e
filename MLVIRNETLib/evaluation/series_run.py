"""Registering a 4D-CT on disk: every phase to a reference phase, resumable, with the motion summary.

The work behind ``mlvirnet register-4d``.

Phases
    Image files, a folder, a glob, a 4-D image or a DICOM folder of several phases: see
    :mod:`MLVIRNETLib.io.phases` (:func:`~MLVIRNETLib.io.phases.find_phases`).

Outputs (``OUTDIR``)
    ``<phase>/field.nii.gz``
        the map reference -> phase on the reference grid (LPS mm, ``x_phase = x_ref + u``), as
        ``mlvirnet register REFERENCE PHASE`` writes it; the identity (zero) for the reference.
    ``<phase>/result.json``
        the inputs (path, size, modification time), the settings, the phase's motion row
        (:class:`~MLVIRNETLib.evaluation.motion.PhaseMotion`), timings and messages; written last.
        A phase is done when it parses, matches the current inputs and settings and its field
        exists (:mod:`MLVIRNETLib.evaluation.pair_state`): a rerun skips it. Landmarks are not
        part of that check: when a done phase's landmark files changed (added, removed, edited),
        its TRE and trajectory are taken again from its stored field, without registering.
    ``summary.csv``, ``summary.json``, ``motion.png``, ``report.json``
        the motion summary of every phase (:mod:`MLVIRNETLib.evaluation.motion`), its plot, and
        the run (phases, reference, end-inhale / end-exhale, flagged phases, what this run did).

While a run works on ``OUTDIR`` it holds a lock on it (``flock``): a second run on the same folder
stops with an error instead of registering phases twice. An error in a phase stops the run;
phases done before it stay done and a rerun goes on from there. A reference phase in which no lungs
are found stops the run before any phase is registered (the motion summary is measured in the
reference's lungs; the Slicer module, which makes transforms rather than a summary, registers such a
series without the summary).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.progress import CancelFn, Progress, ProgressFn
from ..io.atomic import remove_stale_temporaries
from ..io.phases import PhaseInput, find_phases
from ..registration.options import RegistrationOptions
from .motion import SUMMARY_COLUMNS, PhaseMotion, SeriesSummary, motion_plot, phase_motion, summarize_series
from .pair_state import PairLock, file_stamp, pair_status, settings_record
from .reports import write_csv, write_json

PathLike = str | os.PathLike

FIELD_NAME = "field.nii.gz"
RESULT_NAME = "result.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
PLOT_NAME = "motion.png"
REPORT_NAME = "report.json"

__all__ = ["PhaseInput", "SeriesConfig", "SeriesRunResult", "find_phases", "phase_landmarks", "resolve_reference",
           "run_series"]


def resolve_reference(phases: Sequence[PhaseInput], reference: int | str) -> int:
    """The index of the reference phase: a phase's name, else an index into ``phases`` (from 0).

    A name is matched first, so that ``"50"`` is the phase named ``50`` where there is one.

    Raises:
        ValueError: an index out of range or an unknown name (the message lists the phases).
    """
    names = [p.name for p in phases]
    text = str(reference).strip()
    if text in names:
        return names.index(text)
    if re.fullmatch(r"-?\d+", text):
        k = int(text)
        if not 0 <= k < len(phases):
            raise ValueError(f"reference {k} is out of range: there are {len(phases)} phases, numbered 0..{len(phases) - 1}")
        return k
    if text not in names:
        raise ValueError(f"reference {text!r} is not a phase; the phases are {', '.join(names)}")
    return names.index(text)


TAG_PATTERN = r"(?<![0-9])T[0-9]0(?![0-9])"
"""A DIR-LAB phase tag (``T00`` ... ``T90``) in a phase name, as :func:`phase_landmarks` looks for it."""


def phase_landmarks(phases: Sequence[PhaseInput], landmarks: Sequence[PathLike],
                    notes: list[str] | None = None) -> dict[int, Path]:
    """Which landmark file belongs to which phase.

    ``landmarks`` is either one folder of DIR-LAB 4D-75 files (``caseN_4D-75_T00.txt`` ...), or
    one landmark file per phase, in phase order (any format of :mod:`MLVIRNETLib.io.landmarks`;
    DIR-LAB voxel indices refer to that phase's grid).

    A 4D-75 file goes to the phase whose name holds its tag (``T10``, case-insensitive). When no
    phase name holds a tag at all, the files go by position instead (``T10`` -> the second phase);
    when some do, a file whose tag no phase holds is left out, with a note appended to ``notes``
    (a position would give it to a phase of another tag).

    Raises:
        FileNotFoundError: a missing file or folder, a folder without 4D-75 files.
        ValueError: a count of files other than the number of phases, a tag beyond the phases
            (by position), a tag held by several phase names.
    """
    from ..io.dirlab import find_dirlab_4d75_files

    paths = [Path(p) for p in landmarks]
    if len(paths) == 1 and paths[0].is_dir():
        found = find_dirlab_4d75_files(paths[0])
        by_name = any(re.search(TAG_PATTERN, p.name, re.IGNORECASE) for p in phases)
        out: dict[int, Path] = {}
        for tag, path in found.items():
            if not by_name:
                k = int(tag[1:]) // 10
                if k >= len(phases):
                    raise ValueError(f"4D-75 landmarks of phase {tag} ({path}) but only {len(phases)} phases")
                out[k] = path
                continue
            named = [i for i, p in enumerate(phases) if re.search(rf"(?<![0-9]){tag}(?![0-9])", p.name, re.IGNORECASE)]
            if len(named) > 1:
                raise ValueError(f"4D-75 landmarks of phase {tag} ({path}): the phases "
                                 f"{', '.join(phases[i].name for i in named)} all hold that tag")
            if not named:
                if notes is not None:
                    notes.append(f"4D-75 landmarks of phase {tag} ({path}) left out: no phase is named with {tag}")
                continue
            out[named[0]] = path
        return out
    if len(paths) != len(phases):
        raise ValueError(f"{len(paths)} landmark files for {len(phases)} phases: give one per phase, in phase order, "
                         "or one folder of DIR-LAB 4D-75 files")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"landmark file not found: {p}")
    return dict(enumerate(paths))


@dataclass
class SeriesConfig:
    """Settings of :func:`run_series`.

    Attributes:
        options: the registration options of every phase.
        model: ``"default"``, a model file or ``None``, as for ``register``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        reference: the reference phase: its index (from 0) or its name.
        landmarks: landmark files or a 4D-75 folder (:func:`phase_landmarks`), or empty.
    """

    options: RegistrationOptions = field(default_factory=RegistrationOptions)
    model: str | Path | None = "default"
    device: str = "auto"
    reference: int | str = 0
    landmarks: Sequence[PathLike] = ()


@dataclass
class SeriesRunResult:
    """Output of :func:`run_series`: what this run registered and skipped, the summary, the files,
    and notes on the inputs (4D-75 landmark files left out)."""

    registered: list[str]
    skipped: list[str]
    redone: dict[str, str]
    summary: SeriesSummary
    outputs: dict[str, Path | None]
    plot_note: str | None = None
    notes: list[str] = field(default_factory=list)


def _check_output(phases: Sequence[PhaseInput], landmarks: dict[int, Path], out: Path) -> None:
    """Refuse, before anything is written, an output folder that is a file, a phase folder that is
    a file, an input inside a phase folder or where a summary file goes, an unwritable place."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    inputs = [p.path for p in phases] + list(landmarks.values())
    for src in inputs:
        resolved = src.resolve()
        for name in (SUMMARY_CSV, SUMMARY_JSON, PLOT_NAME, REPORT_NAME):
            if resolved == (out / name).resolve():
                raise ValueError(f"the input {src} is where the output {name} goes; choose another output folder")
        for p in phases:
            folder = (out / p.name).resolve()
            if resolved == folder or folder in resolved.parents:
                raise ValueError(f"the input {src} lies in the output folder of phase {p.name} ({out / p.name}); "
                                 "choose another output folder")
    for p in phases:
        if (out / p.name).exists() and not (out / p.name).is_dir():
            raise ValueError(f"{out / p.name} exists and is not a folder; phase {p.name}'s outputs go there")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out} cannot be created or written ({existing} is not writable)")


def _read_all_points(phases: Sequence[PhaseInput], ref: int, landmarks: dict[int, Path]) -> dict[int, np.ndarray]:
    """Every phase's landmarks (LPS mm; voxel indices on that phase's grid), read and checked
    before any phase is registered.

    Raises:
        ValueError: a file that cannot be read as landmarks, a phase whose count differs from the
            reference phase's (TRE pairs the points in order).
        FileNotFoundError: a missing file.
    """
    from ..io.landmarks import read_landmarks

    points: dict[int, np.ndarray] = {}
    if not landmarks:
        return points
    for i in [ref] + sorted(set(landmarks) - {ref}):
        try:
            points[i] = np.asarray(read_landmarks(landmarks[i], phases[i].grid()), dtype=float)
        except ValueError as exc:
            raise ValueError(f"landmarks of phase {phases[i].name} ({landmarks[i]}): {exc}") from None
        if len(points[i]) != len(points[ref]):
            raise ValueError(f"landmarks of phase {phases[i].name} ({landmarks[i]}): {len(points[i])} points, but the "
                             f"reference phase {phases[ref].name} has {len(points[ref])}; TRE pairs them in order")
    return points


def run_series(
    items: Sequence[PathLike] | Sequence[PhaseInput],
    output_dir: PathLike,
    config: SeriesConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> SeriesRunResult:
    """Register the phases that are not done yet to the reference; write their fields, then the summary.

    Every argument, input and output is checked before anything is written.

    Args:
        items: the phases (:func:`find_phases` of them), or :class:`PhaseInput` s.
        output_dir: ``OUTDIR`` (created); see the module docstring.
        config: :class:`SeriesConfig`.
        progress: ``(fraction, message)`` over the run; messages name the phase.
        cancel: polled often; returning True raises ``RegistrationCancelled``.

    Raises:
        ValueError: bad phases, reference, landmarks or output folder, an unusable device, another
            run working on ``OUTDIR``, a reference phase without lungs (found before any phase is
            registered: the motion summary is measured in its lungs), a phase that cannot be registered.
        FileNotFoundError: a missing phase, landmark file or model file.
        RegistrationCancelled: ``cancel()`` returned True (phases finished so far stay done).
    """
    from ..core.devices import resolve_device

    config = config if config is not None else SeriesConfig()
    phases = list(items) if items and all(isinstance(p, PhaseInput) for p in items) else find_phases(items)
    ref = resolve_reference(phases, config.reference)
    notes: list[str] = []
    landmarks = phase_landmarks(phases, config.landmarks, notes) if config.landmarks else {}
    if landmarks and ref not in landmarks:
        raise ValueError(f"the reference phase {phases[ref].name} has no landmarks: TRE needs its points")
    points = _read_all_points(phases, ref, landmarks)
    resolve_device(config.device)
    if isinstance(config.model, (str, Path)) and str(config.model) != "default" and not Path(config.model).is_file():
        raise FileNotFoundError(f"model file not found: {config.model}")
    out = Path(output_dir)
    _check_output(phases, landmarks, out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with PairLock(out) as locked:
            if not locked:
                raise ValueError(f"another register-4d run is working on {out}; wait for it or choose another output folder")
            result = _run_locked(phases, ref, landmarks, points, out, config, Progress(progress, cancel), cancel)
            result.notes[:0] = notes
            return result
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # stopped before anything was written: leave no empty output folder behind
        raise


def _stamps(phases: Sequence[PhaseInput], i: int, ref: int) -> dict[str, Any]:
    """The inputs of phase ``i``'s registration (its done-check; landmarks are not among them)."""
    return {"reference": phases[ref].stamp(), "phase": phases[i].stamp()}


def _landmark_stamps(landmarks: dict[int, Path], i: int, ref: int) -> dict[str, Any] | None:
    """The landmark files of phase ``i``'s motion row, or ``None`` when it has none."""
    if i not in landmarks:
        return None
    return {"reference": file_stamp(landmarks[ref]), "phase": file_stamp(landmarks[i])}


def _update_landmarks(path: Path, i: int, ref: int, landmarks: dict[int, Path], points: dict[int, np.ndarray]) -> bool:
    """Bring a done phase's motion row up to the current landmarks, from its stored field (no
    registration); True when it changed.

    Raises:
        ValueError: a ``result.json`` or field that cannot be read back.
    """
    import json

    from ..io.fields import read_field
    from .motion import landmark_motion

    current = _landmark_stamps(landmarks, i, ref)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("landmarks") == current:
            return False
        row = PhaseMotion.from_dict(doc["motion"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} cannot be read back ({type(exc).__name__}: {exc})") from None
    pairs = (points[ref], points[i]) if i in points else None
    field_path = path.parent / FIELD_NAME
    try:
        deformation = read_field(field_path) if pairs is not None else None
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{field_path} cannot be read back ({type(exc).__name__}: {exc})") from None
    landmark_motion(row, deformation, pairs)
    doc["motion"], doc["landmarks"] = row.to_dict(), current
    write_json(doc, path)
    return True


def _run_locked(phases: list[PhaseInput], ref: int, landmarks: dict[int, Path], points: dict[int, np.ndarray],
                out: Path, config: SeriesConfig, outer: Progress, cancel: CancelFn | None) -> SeriesRunResult:
    from ..io.fields import write_field
    from ..registration.series import register_series

    settings = settings_record(config.options, config.model)
    settings["series"] = {"reference": phases[ref].name}
    todo: list[int] = []
    skipped: list[str] = []
    redone: dict[str, str] = {}
    relandmarked: list[str] = []
    for i, phase in enumerate(phases):
        done, why = pair_status(out / phase.name / RESULT_NAME, _stamps(phases, i, ref), settings)
        if done:
            skipped.append(phase.name)
            if _update_landmarks(out / phase.name / RESULT_NAME, i, ref, landmarks, points):
                relandmarked.append(phase.name)
            continue
        todo.append(i)
        if why is not None:
            redone[phase.name] = why
            outer(0.0, f"{phase.name}: {why}", force=True)
    if todo:
        reference_image, reference_mask = _reference_lungs(phases[ref], config.options, outer)
    for i in todo:
        folder = out / phases[i].name
        if folder.is_dir():
            remove_stale_temporaries(folder)
            (folder / RESULT_NAME).unlink(missing_ok=True)  # not done until the new one is written
    registered: list[str] = []
    if todo:
        sources: list[Any] = [p.load for p in phases]
        sources[ref] = reference_image
        series = register_series(
            sources, ref, reference_mask=reference_mask, names=[p.name for p in phases], which=todo, model=config.model,
            device=config.device, options=config.options, progress=outer, cancel=cancel,
        )
        for item in series:
            t0 = time.perf_counter()
            phase = phases[item.index]
            result = item.result
            row = phase_motion(item.deformation, item.reference_mask, item.phase_mask, index=item.index,
                               phase=item.name, reference=item.is_reference,
                               quality=result.quality if result is not None else None,
                               landmarks=(points[ref], points[item.index]) if item.index in points else None)
            folder = out / phase.name
            folder.mkdir(exist_ok=True)
            write_field(item.deformation, folder / FIELD_NAME)
            row.seconds = item.seconds + time.perf_counter() - t0
            doc = {
                "phase": phase.name,
                "index": item.index,
                "status": "done",
                "seconds": row.seconds,
                "inputs": _stamps(phases, item.index, ref),
                "landmarks": _landmark_stamps(landmarks, item.index, ref),
                "settings": settings,
                "outputs": [FIELD_NAME],
                "field": FIELD_NAME,
                "reference": item.is_reference,
                "motion": row.to_dict(),
                "timings_s": {k: round(v, 3) for k, v in result.timings.items()} if result is not None else None,
                "quality": result.quality.to_dict() if result is not None and result.quality is not None else None,
                "model_used": result.model_used if result is not None else None,
                "messages": list(item.messages),
            }
            write_json(doc, folder / RESULT_NAME)  # last: its presence means "done"
            registered.append(phase.name)
            del item, result
    summary = summarize_series([_read_motion(out / p.name / RESULT_NAME) for p in phases])
    outputs, note = _write_summary(summary, phases, ref, out, registered, skipped, redone, config)
    notes = [f"{name}: TRE from its stored field with the current landmarks (not registered again)" for name in relandmarked]
    return SeriesRunResult(registered, skipped, redone, summary, outputs, note, notes)


def _reference_lungs(phase: PhaseInput, options: RegistrationOptions, outer: Progress) -> tuple[Any, Any]:
    """The reference phase's image and its automatic lung mask, made before any phase is registered.

    Raises:
        ValueError: no lungs found in the reference phase (the motion summary is measured in its
            lungs), or a reference image that cannot be read.
    """
    from ..preprocessing.lungmask import segment_lungs

    label = f"{phase.name} (reference): lung mask"
    image = phase.load()
    try:
        mask = segment_lungs(image, options.lung_mask, progress=lambda f, m: outer(0.0, label))
    except ValueError as exc:
        raise ValueError(f"reference phase {phase.name}: {exc}; the motion summary is measured in "
                         "the reference phase's lungs: choose another reference phase") from exc
    return image, mask


def _read_motion(path: Path) -> PhaseMotion:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return PhaseMotion.from_dict(doc["motion"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} cannot be read back ({type(exc).__name__}: {exc})") from None


def _write_summary(summary: SeriesSummary, phases: Sequence[PhaseInput], ref: int, out: Path, registered: list[str],
                   skipped: list[str], redone: dict[str, str], config: SeriesConfig) -> tuple[dict[str, Path | None], str | None]:
    outputs: dict[str, Path | None] = {
        SUMMARY_CSV: write_csv([{k: _rounded(v) for k, v in r.row().items()} for r in summary.rows], out / SUMMARY_CSV,
                               columns=SUMMARY_COLUMNS),
        SUMMARY_JSON: write_json(summary.to_dict(), out / SUMMARY_JSON),
        PLOT_NAME: None,
    }
    note = None
    try:
        outputs[PLOT_NAME] = motion_plot(summary, out / PLOT_NAME)
    except ImportError as exc:  # matplotlib is optional
        note = str(exc)
    report = {
        "phases": [{"name": p.name, "path": str(p.path.absolute()), "volume": p.volume,
                    "field": str(Path(p.name) / FIELD_NAME)} for p in phases],
        "reference": phases[ref].name,
        "reference_field": "identity (zero displacement)",
        "end_inhale": summary.end_inhale,
        "end_exhale": summary.end_exhale,
        "flagged": summary.flagged,
        "direction": "reference -> phase on the reference grid (x_phase = x_reference + u, LPS mm)",
        "run": {"registered": registered, "done_before": skipped, "redone": redone},
        "settings": settings_record(config.options, config.model),
        "outputs": [name for name, path in outputs.items() if path is not None] + [REPORT_NAME],
    }
    outputs[REPORT_NAME] = write_json(report, out / REPORT_NAME)
    return outputs, note


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and np.isfinite(value) else value
