"""Registering a cohort: the pairs of a manifest, resumable, split into shards, every outcome recorded.

The work behind ``mlvirnet batch``.

Manifest
    See :mod:`MLVIRNETLib.evaluation.manifest`: :func:`read_manifest` checks the whole manifest
    before any work and names the line of the first problem. No output may replace an input of the
    run (the manifest included); :func:`run_cohort` refuses that before any work.

Outputs (``OUTDIR``)
    ``<id>/field.nii.gz``
        the deformation field (fixed -> moving, LPS mm, on the fixed grid), as ``mlvirnet register``.
    ``<id>/result.json``
        the inputs (absolute and manifest paths, size, modification time), the settings, timings,
        folding, the quality check and, with landmarks, the TRE before and after; written last. A
        pair is *done* when its ``result.json`` parses, matches the current inputs and settings and
        its outputs exist (:mod:`MLVIRNETLib.evaluation.pair_state`); otherwise it is registered
        again, and the run says why. A pair killed half-way is not done.
    ``<id>/`` itself is locked (``flock``) while a run works on the pair: two runs on one folder
        never register a pair twice, and a killed run's lock is released by the kernel.
    ``<id>/error.txt``
        why the pair failed (first line: the error; then the traceback). The run goes on with the
        next pair; a later run tries the pair again and removes the file when it succeeds.
    ``summary.csv``, ``summary.json``, ``tre_boxplot.png``
        one row per pair of the *whole* manifest (``done``, ``failed`` or ``pending``), read back
        from the pair folders at the end of every run, so that the last shard to finish writes the
        complete summary. The box plot (TRE before and after per pair with landmarks) needs
        matplotlib.

Shards
    :class:`Shard` ``(index, count)``, 1-based: shard ``i`` of ``n`` takes the pairs at positions
    ``i, i + n, i + 2n, ...`` (1-based, manifest order), so ``n`` array jobs (Slurm
    ``--array=1-n`` with ``$SLURM_ARRAY_TASK_ID``, SGE ``-t 1-n`` with ``$SGE_TASK_ID``) cover every
    pair exactly once. Shards write to disjoint pair folders; every file is written atomically.

A full disk (or quota, or file size limit) stops the run at once with an ``OSError``: every later
pair would fail to write as well.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.devices import resolve_device
from ..io.atomic import same_file
from ..core.progress import CancelFn, Progress, ProgressFn, RegistrationCancelled
from ..io.fields import write_field
from ..io.images import read_image
from ..io.atomic import remove_stale_temporaries
from ..io.integrity import IncompleteWriteError
from ..io.landmarks import read_landmark_pairs
from ..registration.options import RegistrationOptions
from .manifest import (  # noqa: F401 - the manifest's names stay importable from here
    BOXPLOT_NAME, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, SUMMARY_CSV, SUMMARY_JSON, CohortPair, read_manifest)
from .metrics import TREResult, tre
from .pair_state import PairLock, file_stamp, pair_status, settings_record
from .reports import write_csv, write_json, write_text

PathLike = str | os.PathLike
__all__ = ["BOXPLOT_NAME", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "SUMMARY_CSV", "SUMMARY_JSON", "CohortConfig",
           "CohortPair", "CohortResult", "PairOutcome", "Shard", "read_manifest", "register_pair", "run_cohort",
           "summary_rows", "write_summary"]

FIELD_NAME = "field.nii.gz"
RESULT_NAME = "result.json"
ERROR_NAME = "error.txt"
SUMMARY_COLUMNS = (
    "id", "status", "seconds", "landmarks", "tre_before_mean", "tre_before_p95", "tre_after_mean", "tre_after_p95",
    "folding_percent", "quality_ncc", "quality_ok", "error",
)
"""Columns of ``summary.csv`` (TRE in mm; empty where a pair has no landmarks or is not done)."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based): the pairs at positions ``index, index + count, ...``."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 1 <= I <= N (shards count from 1)")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"I/N"`` (1-based, e.g. ``"2/4"``) -> ``Shard(2, 4)``.

        Raises:
            ValueError: not two integers ``I/N`` with ``1 <= I <= N``.
        """
        m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", str(text))
        if not m:
            raise ValueError(f"shard {text!r}: expected I/N, e.g. 1/4 (shards count from 1)")
        return cls(int(m.group(1)), int(m.group(2)))

    def select(self, pairs: list[CohortPair]) -> list[CohortPair]:
        return list(pairs[self.index - 1:: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class CohortConfig:
    """Settings of :func:`run_cohort`: the registration of every pair, and the shard to run.

    Attributes:
        options: :class:`RegistrationOptions` of every pair.
        model: ``"default"``, a model file or ``None`` (no network), as for ``register``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        shard: the part of the manifest this run registers.
    """

    options: RegistrationOptions = field(default_factory=RegistrationOptions)
    model: str | Path | None = "default"
    device: str = "auto"
    shard: Shard = field(default_factory=Shard)


@dataclass
class PairOutcome:
    """What this run did with one pair: ``status`` ``"done"`` (registered now), ``"skipped"`` (done
    before) or ``"failed"``; ``error`` the first line of ``error.txt``."""

    id: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None


@dataclass
class CohortResult:
    """Output of :func:`run_cohort`.

    Attributes:
        outcomes: one per pair of this run's shard, in manifest order.
        rows: the summary rows of every pair of the manifest (:data:`SUMMARY_COLUMNS`).
        outputs: ``summary.csv``, ``summary.json`` and ``tre_boxplot.png`` -> path (``None``: not drawn).
        plot_note: why there is no box plot (no landmarks, matplotlib missing), else ``None``.
    """

    outcomes: list[PairOutcome]
    rows: list[dict[str, Any]]
    outputs: dict[str, Path | None]
    plot_note: str | None = None

    def count(self, status: str) -> int:
        """Pairs of this run with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[PairOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _check_output_dir(pairs: list[CohortPair], out: Path) -> None:
    """Refuse, before any work, an output folder that is a file or unwritable, a pair id that names a
    file there, and any output that would replace an input of the run (the manifest included)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    inputs = [("manifest", m) for m in {p.manifest for p in pairs if p.manifest is not None}]
    inputs += [(f"pair {p.id!r} {name}", src) for p in pairs for name, src in p.inputs().items()]
    for name in (SUMMARY_CSV, SUMMARY_JSON, BOXPLOT_NAME):
        for label, src in inputs:
            if same_file(out / name, src):
                raise ValueError(f"the {label} {src} is where the output {name} goes; refusing to overwrite an "
                                 "input: choose another output folder")
    for pair in pairs:
        folder = out / pair.id
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"pair {pair.id!r}: {folder} exists and is not a folder; its outputs go in a folder "
                             "of that name (rename the file or the id)")
        for label, src in inputs:
            if src.resolve() == folder.resolve() or folder.resolve() in src.resolve().parents:
                raise ValueError(f"the {label} {src} lies in the output folder of pair {pair.id!r}, where an output goes; "
                                 "choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=out)
    except OSError as exc:
        raise ValueError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def _stamps(pair: CohortPair) -> dict[str, dict[str, Any]]:
    """Column -> :func:`file_stamp` of every input of ``pair``, with the path as the manifest wrote it."""
    out = {}
    for name, path in pair.inputs().items():
        stamp = file_stamp(path)
        if pair.cells is not None and name in pair.cells:
            stamp["manifest_path"] = pair.cells[name]
        out[name] = stamp
    return out


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_full(exc: BaseException) -> bool:
    """True for a full disk, quota or file size limit (the writes of every later pair would fail too)."""
    return isinstance(exc, IncompleteWriteError) or (isinstance(exc, OSError) and exc.errno in _DISK_FULL)


def run_cohort(
    pairs: list[CohortPair],
    output_dir: PathLike,
    config: CohortConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> CohortResult:
    """Register the pairs of ``config.shard`` that are not done yet, then write the cohort summary.

    A pair another run is working on (its lock is held) is put off until the others are done; then
    this run waits for the lock and registers the pair unless the other run finished it.

    Args:
        pairs: the manifest's pairs (:func:`read_manifest`), all of them (the shard is chosen here).
        output_dir: ``OUTDIR`` (created); see the module docstring for what is written.
        config: :class:`CohortConfig`.
        progress: ``(fraction, message)`` over the whole shard, one call per pair and stage.
        cancel: polled often; returning True raises :class:`RegistrationCancelled`.

    Returns:
        :class:`CohortResult`. A pair that fails is recorded there and in its ``error.txt``; the
        run goes on.

    Raises:
        ValueError: a bad output folder, an input where an output goes, an unusable device.
        FileNotFoundError: a model file that does not exist.
        OSError: the disk is full (or a quota or file size limit is reached): the run stops at once.
        RegistrationCancelled: ``cancel()`` returned True (the pair in progress is not done).
    """
    config = config if config is not None else CohortConfig()
    out = Path(output_dir)
    resolve_device(config.device)
    if isinstance(config.model, (str, Path)) and str(config.model) != "default" and not Path(config.model).is_file():
        raise FileNotFoundError(f"model file not found: {config.model}")
    _check_output_dir(pairs, out)
    settings = settings_record(config.options, config.model)
    mine = config.shard.select(pairs)
    outer = Progress(progress, cancel)
    outcomes: dict[str, PairOutcome] = {}
    queue = [(pair, False) for pair in mine]
    while queue:
        pair, wait = queue.pop(0)
        k = mine.index(pair)
        label = f"{k + 1}/{len(mine)} {pair.id}"
        outer.stage(k / len(mine), 1.0 / len(mine), f"{label}: starting")
        pair_dir = out / pair.id
        pair_dir.mkdir(exist_ok=True)
        with PairLock(pair_dir, wait=wait) as locked:
            if not locked:
                outer(0.0, f"{label}: another run is registering it; coming back to it at the end", force=True)
                queue.append((pair, True))
                continue
            done, why = pair_status(pair_dir / RESULT_NAME, _stamps(pair), settings)
            if done:
                outcomes[pair.id] = PairOutcome(pair.id, "skipped")
                outer(1.0, f"{label}: done before")
                continue
            if why is not None:
                outer(0.0, f"{label}: {why}", force=True)
            outcome = _run_pair(pair, pair_dir, config, settings, lambda f, m, lab=label: outer(f, f"{lab}: {m}"),
                                cancel)
            outcome.note = why
            outcomes[pair.id] = outcome
            outer(1.0, f"{label}: {outcome.status}")
    rows = summary_rows(pairs, out)
    outputs, note = write_summary(rows, pairs, out)
    return CohortResult([outcomes[p.id] for p in mine], rows, outputs, note)


def _run_pair(pair: CohortPair, pair_dir: Path, config: CohortConfig, settings: dict[str, Any],
              progress: ProgressFn, cancel: CancelFn | None) -> PairOutcome:
    """Register one pair (its lock held) and write its field and ``result.json``, or its ``error.txt``.

    Raises:
        OSError: the disk is full: the cohort stops.
    """
    t0 = time.perf_counter()
    remove_stale_temporaries(pair_dir)  # of killed writers only: a live writer's temporaries stay
    (pair_dir / RESULT_NAME).unlink(missing_ok=True)  # not done until the new one is written
    try:
        doc = register_pair(pair, pair_dir, config, progress, cancel, settings)
    except RegistrationCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of one pair is recorded and the cohort goes on
        if _disk_full(exc):
            raise
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        write_text(message + "\n\n" + traceback.format_exc(), pair_dir / ERROR_NAME)
        return PairOutcome(pair.id, "failed", time.perf_counter() - t0, message)
    (pair_dir / ERROR_NAME).unlink(missing_ok=True)
    return PairOutcome(pair.id, "done", float(doc["seconds"]))


def register_pair(pair: CohortPair, pair_dir: Path, config: CohortConfig, progress: ProgressFn | None = None,
                  cancel: CancelFn | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register one pair; write ``field.nii.gz`` and then ``result.json`` into ``pair_dir``.

    Returns:
        the content of ``result.json``.

    Raises:
        whatever reading, registering or measuring raises (nothing is written then).
    """
    from ..registration.pipeline import register

    t0 = time.perf_counter()
    stamps = _stamps(pair)
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    fixed_mask = read_image(pair.fixed_mask) if pair.fixed_mask is not None else None
    moving_mask = read_image(pair.moving_mask) if pair.moving_mask is not None else None
    points = None
    skipped = None
    if pair.has_landmarks:
        from ..core.geometry import ImageGrid

        found = read_landmark_pairs(pair.fixed_landmarks, pair.moving_landmarks, ImageGrid.from_sitk(fixed),
                                    ImageGrid.from_sitk(moving))
        points, skipped = (found.fixed, found.moving), found.skipped
    result = register(fixed, moving, fixed_mask, moving_mask, model=config.model, device=config.device,
                      options=config.options, progress=progress, cancel=cancel)
    before = after = None
    if points is not None:
        before, after = tre(*points), tre(*points, result.deformation)
    write_field(result.deformation, pair_dir / FIELD_NAME)
    quality = getattr(result, "quality", None)
    doc: dict[str, Any] = {
        "id": pair.id,
        "status": "done",
        "seconds": time.perf_counter() - t0,
        "manifest": str(pair.manifest.absolute()) if pair.manifest is not None else None,
        "inputs": stamps,
        "settings": settings if settings is not None else settings_record(config.options, config.model),
        "outputs": [FIELD_NAME],
        "field": FIELD_NAME,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "folding_percent": 100.0 * result.folding_fraction,
        "model_used": result.model_used,
        "quality": quality.to_dict() if quality is not None else None,
        "messages": list(result.messages),
        "landmarks_skipped": skipped,
        "tre_before_mm": _tre_doc(before),
        "tre_after_mm": _tre_doc(after),
        "pid": os.getpid(),
    }
    write_json(doc, pair_dir / RESULT_NAME)  # last: its presence means "done"
    return doc


def _tre_doc(result: TREResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {**{k: result.to_dict()[k] for k in ("mean", "std", "p95", "max", "n")},
            "per_point": [float(v) for v in result.per_point]}


def _read_result(path: Path) -> dict[str, Any] | None:
    """The parsed ``result.json`` with the fields the summary needs, or ``None`` when damaged."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        float(doc["seconds"])
        return doc
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def summary_rows(pairs: list[CohortPair], output_dir: PathLike) -> list[dict[str, Any]]:
    """One row (:data:`SUMMARY_COLUMNS`) per pair of the manifest, read from its folder in ``output_dir``;
    a damaged ``result.json`` makes its pair ``pending`` with the reason in ``error``."""
    out = Path(output_dir)
    rows = []
    for pair in pairs:
        row: dict[str, Any] = {c: None for c in SUMMARY_COLUMNS}
        row.update(id=pair.id, status="pending")
        result, error = out / pair.id / RESULT_NAME, out / pair.id / ERROR_NAME
        doc = _read_result(result) if result.is_file() else None
        if doc is not None:
            before, after = doc.get("tre_before_mm"), doc.get("tre_after_mm")
            quality = doc.get("quality") or {}
            row.update(status="done", seconds=round(float(doc["seconds"]), 3),
                       folding_percent=doc.get("folding_percent"), quality_ncc=quality.get("ncc"),
                       quality_ok=quality.get("ok"))
            if before and after:
                row.update(landmarks=before["n"], tre_before_mean=before["mean"], tre_before_p95=before["p95"],
                           tre_after_mean=after["mean"], tre_after_p95=after["p95"])
        elif error.is_file():
            lines = error.read_text(encoding="utf-8").splitlines()
            row.update(status="failed", error=lines[0] if lines else "failed")
        elif result.is_file():
            row.update(error=f"{result} is damaged")
        rows.append(row)
    return rows


def write_summary(rows: list[dict[str, Any]], pairs: list[CohortPair],
                  output_dir: PathLike) -> tuple[dict[str, Path | None], str | None]:
    """Write ``summary.csv``, ``summary.json`` and (when possible) ``tre_boxplot.png``.

    Returns:
        ``({file name: path or None}, why there is no box plot or None)``.
    """
    out = Path(output_dir)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending")}
    done = [r for r in rows if r["status"] == "done" and r["tre_after_mean"] is not None]
    pooled: dict[str, dict[str, Any]] = {}
    per_case: dict[str, dict[str, np.ndarray]] = {}
    for r in done:
        doc = _read_result(out / r["id"] / RESULT_NAME)
        if doc is None or not doc.get("tre_before_mm") or not doc.get("tre_after_mm"):
            continue
        per_case[r["id"]] = {"before": np.asarray(doc["tre_before_mm"]["per_point"]),
                             "after": np.asarray(doc["tre_after_mm"]["per_point"])}
    for when in ("before", "after"):
        if per_case:
            p = TREResult.from_errors(np.concatenate([c[when] for c in per_case.values()]))
            pooled[when] = {k: p.to_dict()[k] for k in ("mean", "std", "p95", "max", "n")}
    summary = {"pairs": len(rows), "counts": counts, "tre_pooled_mm": pooled or None,
               "direction": "fixed -> moving", "rows": rows}
    outputs: dict[str, Path | None] = {
        SUMMARY_CSV: write_csv([{k: _rounded(v) for k, v in r.items()} for r in rows], out / SUMMARY_CSV,
                               columns=SUMMARY_COLUMNS),
        SUMMARY_JSON: write_json(summary, out / SUMMARY_JSON),
        BOXPLOT_NAME: None,
    }
    note = None
    if not per_case:
        note = "no done pair has landmarks"
    else:
        try:
            from .plots import tre_boxplot

            outputs[BOXPLOT_NAME] = tre_boxplot(per_case, out / BOXPLOT_NAME, title="TRE per pair (fixed -> moving)")
        except ImportError as exc:  # matplotlib is optional
            note = str(exc)
    return outputs, note


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value

