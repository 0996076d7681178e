"""Registering a 4D-CT on disk: every phase to a reference phase, resumable, with the motion summary.

The work behind ``mlvirnet register-4d``.

Phases (:func:`find_phases`)
    Files (one 3-D image per phase, or one DICOM folder per phase), a folder of image files, a glob
    pattern, or one 4-D image (NIfTI, NRRD, MetaImage: its volumes, along the 4th axis, are the
    phases). Files from a folder or a glob are taken in natural order (``phase2`` before
    ``phase10``); files named one by one in the order given. A phase is named after its file
    (``phase05.nii.gz`` -> ``phase05``), a volume of a 4-D image ``phase00``, ``phase01``, ...
    A DICOM folder holding several series or temporal positions is not split into phases.

Outputs (``OUTDIR``)
    ``<phase>/field.nii.gz``
        the map reference -> phase on the reference grid (LPS mm, ``x_phase = x_ref + u``), as
        ``mlvirnet register REFERENCE PHASE`` writes it; the identity (zero) for the reference.
    ``<phase>/result.json``
        the inputs (path, size, modification time), the settings, the phase's motion row
        (:class:`~MLVIRNETLib.evaluation.motion.PhaseMotion`), timings and messages; written last.
        A phase is done when it parses, matches the current inputs and settings and its field
        exists (:mod:`MLVIRNETLib.evaluation.pair_state`): a rerun skips it.
    ``summary.csv``, ``summary.json``, ``motion.png``, ``report.json``
        the motion summary of every phase (:mod:`MLVIRNETLib.evaluation.motion`), its plot, and
        the run (phases, reference, end-inhale / end-exhale, flagged phases, what this run did).

While a run works on ``OUTDIR`` it holds a lock on it (``flock``): a second run on the same folder
stops with an error instead of registering phases twice. An error in a phase stops the run;
phases done before it stay done and a rerun goes on from there.
"""

from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid
from ..core.progress import CancelFn, Progress, ProgressFn
from ..io.atomic import remove_stale_temporaries
from ..io.fields import IMAGE_SUFFIXES
from ..io.images import read_image, read_image_grid
from ..io.integrity import check_input
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


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


@dataclass(frozen=True)
class PhaseInput:
    """One phase on disk: ``path`` (a 3-D image file or DICOM folder, or a 4-D image with ``volume``)."""

    name: str
    path: Path
    volume: int | None = None

    def load(self) -> sitk.Image:
        """The phase's image (a 4-D image's volume is read alone).

        Raises:
            ValueError: an unreadable file (see :func:`~MLVIRNETLib.io.images.read_image`).
        """
        if self.volume is None:
            return read_image(self.path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(self.path))
        reader.ReadImageInformation()
        size = list(reader.GetSize())
        reader.SetExtractIndex([0, 0, 0, self.volume])
        reader.SetExtractSize(size[:3] + [0])
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise ValueError(f"cannot read volume {self.volume} of {self.path}: {exc}") from None

    def grid(self) -> ImageGrid:
        """The phase's grid, from the header where possible.

        Raises:
            ValueError: not a 3-D image (2-D, a single slice).
        """
        if self.volume is None:
            return read_image_grid(self.path)
        return ImageGrid.from_sitk(self.load())

    def stamp(self) -> dict[str, Any]:
        """:func:`~MLVIRNETLib.evaluation.pair_state.file_stamp` of its file, with the volume."""
        out = file_stamp(self.path)
        if self.volume is not None:
            out["volume"] = self.volume
        return out


def _four_d(path: Path) -> list[PhaseInput] | None:
    """The volumes of a 4-D image file as phases, or ``None`` when ``path`` is not 4-D."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ValueError(f"cannot read image header of {path}") from None
    if reader.GetDimension() != 4 or reader.GetSize()[3] < 2:
        return None
    check_input(path)
    return [PhaseInput(f"phase{v:02d}", path, v) for v in range(reader.GetSize()[3])]


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def find_phases(items: Sequence[PathLike]) -> list[PhaseInput]:
    """The phases named by ``items`` (module docstring), checked: at least 2, each a 3-D image,
    names unique.

    Raises:
        FileNotFoundError: a file, folder or glob that matches nothing.
        ValueError: fewer than 2 phases, a phase that is not 3-D (2-D, a single slice), two
            phases of the same name, a DICOM folder with several series, a folder without images.
    """
    if not items:
        raise ValueError("no phases given")
    phases: list[PhaseInput] = []
    for item in items:
        p = Path(item)
        if not p.exists() and any(ch in str(item) for ch in "*?["):
            matches = sorted((Path(m) for m in glob.glob(str(item))), key=_natural_key)
            files = [m for m in matches if _is_image_file(m) or m.is_dir()]
            if not files:
                raise FileNotFoundError(f"no phase image matches {item}")
            phases += [PhaseInput(_stem(m), m) for m in files]
        elif not p.exists():
            raise FileNotFoundError(f"phase not found: {p}")
        elif p.is_dir():
            files = sorted((f for f in p.iterdir() if _is_image_file(f)), key=_natural_key)
            if files:
                phases += [PhaseInput(_stem(f), f) for f in files]
            else:
                ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
                if len(ids) > 1:
                    raise ValueError(f"{p} holds {len(ids)} DICOM series: splitting one DICOM folder into phases is "
                                     "not supported; give one folder (or file) per phase")
                if not ids:
                    raise ValueError(f"{p} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series")
                phases.append(PhaseInput(p.name, p))
        else:
            volumes = _four_d(p)
            phases += volumes if volumes is not None else [PhaseInput(_stem(p), p)]
    if len(phases) < 2:
        raise ValueError(f"a 4D-CT needs at least 2 phases, got {len(phases)} ({', '.join(str(q.path) for q in phases)})")
    names = [q.name for q in phases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"several phases are named {', '.join(twice)} (the output folders are named after them); "
                         "rename the files")
    for q in phases:
        if q.volume is None:
            grid = q.grid()  # a 2-D image or a single slice: ValueError naming the file
            if min(grid.size) < 2:
                raise ValueError(f"{q.path} has size {grid.size}; a 3-D volume is required")
    return phases


def resolve_reference(phases: Sequence[PhaseInput], reference: int | str) -> int:
    """The index of the reference phase: an index into ``phases`` (from 0) or a phase's name.

    Raises:
        ValueError: an index out of range or an unknown name (the message lists the phases).
    """
    names = [p.name for p in phases]
    text = str(reference).strip()
    if re.fullmatch(r"-?\d+", text):
        k = int(text)
        if not 0 <= k < len(phases):
            raise ValueError(f"reference {k} is out of range: there are {len(phases)} phases, numbered 0..{len(phases) - 1}")
        return k
    if text not in names:
        raise ValueError(f"reference {text!r} is not a phase; the phases are {', '.join(names)}")
    return names.index(text)


def phase_landmarks(phases: Sequence[PhaseInput], landmarks: Sequence[PathLike]) -> dict[int, Path]:
    """Which landmark file belongs to which phase.

    ``landmarks`` is either one folder of DIR-LAB 4D-75 files (``caseN_4D-75_T00.txt`` ...; a
    file goes to the phase whose name holds its tag, e.g. ``T10``, else to the phase at the
    tag's position, ``T10`` -> the second phase), or one landmark file per phase, in phase order
    (any format of :mod:`MLVIRNETLib.io.landmarks`; DIR-LAB voxel indices refer to that phase's grid).

    Raises:
        FileNotFoundError: a missing file or folder, a folder without 4D-75 files.
        ValueError: a count of files other than the number of phases, a tag beyond the phases.
    """
    from ..io.dirlab import find_dirlab_4d75_files

    paths = [Path(p) for p in landmarks]
    if len(paths) == 1 and paths[0].is_dir():
        found = find_dirlab_4d75_files(paths[0])
        out: dict[int, Path] = {}
        for tag, path in found.items():
            named = [i for i, p in enumerate(phases) if re.search(rf"(?<![0-9]){tag}(?![0-9])", p.name, re.IGNORECASE)]
            k = named[0] if len(named) == 1 else int(tag[1:]) // 10
            if k >= len(phases):
                raise ValueError(f"4D-75 landmarks of phase {tag} ({path}) but only {len(phases)} phases")
            out[k] = path
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
    """Output of :func:`run_series`: what this run registered and skipped, the summary, the files."""

    registered: list[str]
    skipped: list[str]
    redone: dict[str, str]
    summary: SeriesSummary
    outputs: dict[str, Path | None]
    plot_note: str | None = None


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


def _read_points(path: Path, grid: ImageGrid) -> np.ndarray:
    from ..io.landmarks import read_landmarks

    return read_landmarks(path, grid)


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
            run working on ``OUTDIR``, a phase that cannot be registered.
        FileNotFoundError: a missing phase, landmark file or model file.
        RegistrationCancelled: ``cancel()`` returned True (phases finished so far stay done).
    """
    from ..core.devices import resolve_device

    config = config if config is not None else SeriesConfig()
    phases = list(items) if items and all(isinstance(p, PhaseInput) for p in items) else find_phases(items)
    ref = resolve_reference(phases, config.reference)
    landmarks = phase_landmarks(phases, config.landmarks) if config.landmarks else {}
    if landmarks and ref not in landmarks:
        raise ValueError(f"the reference phase {phases[ref].name} has no landmarks: TRE needs its points")
    resolve_device(config.device)
    if isinstance(config.model, (str, Path)) and str(config.model) != "default" and not Path(config.model).is_file():
        raise FileNotFoundError(f"model file not found: {config.model}")
    out = Path(output_dir)
    _check_output(phases, landmarks, out)
    out.mkdir(parents=True, exist_ok=True)
    with PairLock(out) as locked:
        if not locked:
            raise ValueError(f"another register-4d run is working on {out}; wait for it or choose another output folder")
        return _run_locked(phases, ref, landmarks, out, config, Progress(progress, cancel), cancel)


def _stamps(phases: Sequence[PhaseInput], i: int, ref: int, landmarks: dict[int, Path]) -> dict[str, Any]:
    stamps = {"reference": phases[ref].stamp(), "phase": phases[i].stamp()}
    if i in landmarks:
        stamps["reference_landmarks"] = file_stamp(landmarks[ref])
        stamps["phase_landmarks"] = file_stamp(landmarks[i])
    return stamps


def _run_locked(phases: list[PhaseInput], ref: int, landmarks: dict[int, Path], out: Path, config: SeriesConfig,
                outer: Progress, cancel: CancelFn | None) -> SeriesRunResult:
    from ..io.fields import write_field
    from ..registration.series import register_series

    settings = settings_record(config.options, config.model)
    settings["series"] = {"reference": phases[ref].name}
    todo: list[int] = []
    skipped: list[str] = []
    redone: dict[str, str] = {}
    for i, phase in enumerate(phases):
        done, why = pair_status(out / phase.name / RESULT_NAME, _stamps(phases, i, ref, landmarks), settings)
        if done:
            skipped.append(phase.name)
            continue
        todo.append(i)
        if why is not None:
            redone[phase.name] = why
            outer(0.0, f"{phase.name}: {why}", force=True)
    ref_grid = phases[ref].grid() if landmarks and todo else None
    ref_points = _read_points(landmarks[ref], ref_grid) if ref_grid is not None else None
    for i in todo:
        folder = out / phases[i].name
        if folder.is_dir():
            remove_stale_temporaries(folder)
            (folder / RESULT_NAME).unlink(missing_ok=True)  # not done until the new one is written
    registered: list[str] = []
    if todo:
        series = register_series(
            [p.load for p in phases], ref, names=[p.name for p in phases], which=todo, model=config.model,
            device=config.device, options=config.options, progress=outer, cancel=cancel,
        )
        for item in series:
            t0 = time.perf_counter()
            phase = phases[item.index]
            points = None
            if item.index in landmarks:
                grid = phase.grid() if not item.is_reference else ref_grid
                points = (ref_points, _read_points(landmarks[item.index], grid))
            result = item.result
            row = phase_motion(item.deformation, item.reference_mask, item.phase_mask, index=item.index,
                               phase=item.name, reference=item.is_reference,
                               quality=result.quality if result is not None else None, landmarks=points)
            folder = out / phase.name
            folder.mkdir(exist_ok=True)
            write_field(item.deformation, folder / FIELD_NAME)
            row.seconds = item.seconds + time.perf_counter() - t0
            doc = {
                "phase": phase.name,
                "index": item.index,
                "status": "done",
                "seconds": row.seconds,
                "inputs": _stamps(phases, item.index, ref, landmarks),
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
    return SeriesRunResult(registered, skipped, redone, summary, outputs, note)


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
