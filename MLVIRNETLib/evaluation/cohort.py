"""Registering a cohort: the pairs of a manifest, resumable, split into shards, every outcome recorded.

The work behind ``mlvirnet batch``.

Manifest
    A CSV file with a header row. Columns ``id``, ``fixed`` and ``moving`` are required;
    ``fixed_mask``, ``moving_mask``, ``fixed_landmarks`` and ``moving_landmarks`` are optional (an
    empty cell means none; landmarks come in pairs). Paths are absolute or relative to the
    manifest's folder. An ``id`` names the pair's output folder: letters, digits, ``.``, ``_`` and
    ``-``, not starting with ``.``, unique. :func:`read_manifest` checks the whole manifest before
    any work and names the line of the first problem.

Outputs (``OUTDIR``)
    ``<id>/field.nii.gz``
        the deformation field (fixed -> moving, LPS mm, on the fixed grid), as ``mlvirnet register``.
    ``<id>/result.json``
        timings, folding and, with landmarks, the TRE before and after; written last, so a pair is
        *done* exactly when its ``result.json`` exists. A pair killed half-way is not done and is
        registered again by the next run; a done pair is never registered again.
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
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.devices import resolve_device
from ..core.progress import CancelFn, Progress, ProgressFn, RegistrationCancelled
from ..io.fields import write_field
from ..io.images import read_image
from ..io.landmarks import landmark_format, read_landmarks
from ..registration.options import RegistrationOptions
from .metrics import TREResult, tre
from .reports import write_csv, write_json, write_text

PathLike = str | os.PathLike

REQUIRED_COLUMNS = ("id", "fixed", "moving")
OPTIONAL_COLUMNS = ("fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks")
FIELD_NAME = "field.nii.gz"
RESULT_NAME = "result.json"
ERROR_NAME = "error.txt"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
BOXPLOT_NAME = "tre_boxplot.png"
SUMMARY_COLUMNS = (
    "id", "status", "seconds", "landmarks", "tre_before_mean", "tre_before_p95", "tre_after_mean", "tre_after_p95",
    "folding_percent", "error",
)
"""Columns of ``summary.csv`` (TRE in mm; empty where a pair has no landmarks or is not done)."""
_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CohortPair:
    """One row of the manifest, paths resolved; ``line`` is its line in the manifest file."""

    id: str
    fixed: Path
    moving: Path
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    fixed_landmarks: Path | None = None
    moving_landmarks: Path | None = None
    line: int = 0

    @property
    def has_landmarks(self) -> bool:
        return self.fixed_landmarks is not None and self.moving_landmarks is not None

    def inputs(self) -> dict[str, Path]:
        """Column name -> path of every input the row names."""
        names = REQUIRED_COLUMNS[1:] + OPTIONAL_COLUMNS
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def read_manifest(path: PathLike) -> list[CohortPair]:
    """Read and check a cohort manifest (module docstring) -> its pairs in file order.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: one message naming the manifest and the line of the first problem: a missing or
            unknown column, a row with too many or too few cells, an empty, unsafe or repeated id,
            a missing required path, an input that does not exist, one landmark file without the
            other, a landmark file of unknown format, or no rows at all.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"manifest {manifest} is not a UTF-8 text file") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        problem = f"missing column(s) {missing}" if missing else f"unknown column(s) {unknown}"
        raise ValueError(f"manifest {manifest}, line 1: {problem}; the columns are {list(REQUIRED_COLUMNS)} and "
                         f"optionally {list(OPTIONAL_COLUMNS)}")
    reader.fieldnames = columns
    pairs: list[CohortPair] = []
    seen: dict[str, int] = {}
    for row in reader:
        pair = _pair_of_row(row, reader.line_num, manifest, seen)
        seen[pair.id] = pair.line
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"manifest {manifest} lists no pairs (a header row and one row per pair are needed)")
    return pairs


def _pair_of_row(row: dict, line: int, manifest: Path, seen: dict[str, int]) -> CohortPair:
    pair_id = (row.get("id") or "").strip()

    def fail(problem: str) -> ValueError:
        where = f"manifest {manifest}, line {line}" + (f" (id {pair_id!r})" if pair_id else "")
        return ValueError(f"{where}: {problem}")

    if None in row or any(v is None for v in row.values()):
        raise fail(f"expected {len(row) - (None in row)} cells, as in the header")
    if not pair_id:
        raise fail("empty id")
    if not _ID.match(pair_id) or pair_id in (".", ".."):
        raise fail("an id may hold only letters, digits, '.', '_' and '-' and must not start with '.'")
    if pair_id in seen:
        raise fail(f"id {pair_id!r} repeats line {seen[pair_id]}")
    paths: dict[str, Path | None] = {}
    for name in REQUIRED_COLUMNS[1:] + OPTIONAL_COLUMNS:
        cell = (row.get(name) or "").strip()
        if not cell:
            if name in REQUIRED_COLUMNS:
                raise fail(f"no {name} image")
            paths[name] = None
            continue
        p = Path(cell).expanduser()
        p = p if p.is_absolute() else manifest.parent / p
        if not p.exists():
            raise fail(f"{name} not found: {p}")
        paths[name] = p
    if (paths["fixed_landmarks"] is None) != (paths["moving_landmarks"] is None):
        raise fail("give both fixed_landmarks and moving_landmarks, or neither")
    for name in ("fixed_landmarks", "moving_landmarks"):
        if paths[name] is not None:
            try:
                landmark_format(paths[name])
            except ValueError as exc:
                raise fail(str(exc)) from None
    return CohortPair(id=pair_id, line=line, **paths)  # type: ignore[arg-type]


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
    """Refuse an output folder that is a file, unwritable, or where an output would replace an input."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    for pair in pairs:
        targets = [out / pair.id / n for n in (FIELD_NAME, RESULT_NAME, ERROR_NAME)]
        targets += [out / n for n in (SUMMARY_CSV, SUMMARY_JSON, BOXPLOT_NAME)]
        for name, src in pair.inputs().items():
            if any(t.resolve() == src.resolve() for t in targets):
                raise ValueError(f"pair {pair.id!r}: the {name} input {src} is where an output goes; "
                                 "choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=out)
    except OSError as exc:
        raise ValueError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def run_cohort(
    pairs: list[CohortPair],
    output_dir: PathLike,
    config: CohortConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> CohortResult:
    """Register the pairs of ``config.shard`` that are not done yet, then write the cohort summary.

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
        RegistrationCancelled: ``cancel()`` returned True (the pair in progress is not done).
    """
    config = config if config is not None else CohortConfig()
    out = Path(output_dir)
    resolve_device(config.device)
    if isinstance(config.model, (str, Path)) and str(config.model) != "default" and not Path(config.model).is_file():
        raise FileNotFoundError(f"model file not found: {config.model}")
    _check_output_dir(pairs, out)
    mine = config.shard.select(pairs)
    outer = Progress(progress, cancel)
    outcomes: list[PairOutcome] = []
    for k, pair in enumerate(mine):
        label = f"{k + 1}/{len(mine)} {pair.id}"
        outer.stage(k / len(mine), 1.0 / len(mine), f"{label}: starting")
        pair_dir = out / pair.id
        if (pair_dir / RESULT_NAME).is_file():
            outcomes.append(PairOutcome(pair.id, "skipped"))
            outer(1.0, f"{label}: done before")
            continue
        outcomes.append(_run_pair(pair, pair_dir, config, lambda f, m, lab=label: outer(f, f"{lab}: {m}"), cancel))
        outer(1.0, f"{label}: {outcomes[-1].status}")
    rows = summary_rows(pairs, out)
    outputs, note = write_summary(rows, pairs, out)
    return CohortResult(outcomes, rows, outputs, note)


def _run_pair(pair: CohortPair, pair_dir: Path, config: CohortConfig, progress: ProgressFn,
              cancel: CancelFn | None) -> PairOutcome:
    """Register one pair and write its field and ``result.json``, or its ``error.txt``."""
    t0 = time.perf_counter()
    pair_dir.mkdir(exist_ok=True)
    for name in (FIELD_NAME, RESULT_NAME, ERROR_NAME):  # temporary folders of writes killed by an earlier run
        for stale in pair_dir.glob(f".{name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        doc = register_pair(pair, pair_dir, config, progress, cancel)
    except RegistrationCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of one pair is recorded and the cohort goes on
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        write_text(message + "\n\n" + traceback.format_exc(), pair_dir / ERROR_NAME)
        return PairOutcome(pair.id, "failed", time.perf_counter() - t0, message)
    (pair_dir / ERROR_NAME).unlink(missing_ok=True)
    return PairOutcome(pair.id, "done", float(doc["seconds"]))


def register_pair(pair: CohortPair, pair_dir: Path, config: CohortConfig, progress: ProgressFn | None = None,
                  cancel: CancelFn | None = None) -> dict[str, Any]:
    """Register one pair; write ``field.nii.gz`` and then ``result.json`` into ``pair_dir``.

    Returns:
        the content of ``result.json``.

    Raises:
        whatever reading, registering or measuring raises (nothing is written then).
    """
    from ..registration.pipeline import register

    t0 = time.perf_counter()
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    fixed_mask = read_image(pair.fixed_mask) if pair.fixed_mask is not None else None
    moving_mask = read_image(pair.moving_mask) if pair.moving_mask is not None else None
    points = None
    if pair.has_landmarks:
        from ..core.geometry import ImageGrid

        points = (read_landmarks(pair.fixed_landmarks, ImageGrid.from_sitk(fixed)),
                  read_landmarks(pair.moving_landmarks, ImageGrid.from_sitk(moving)))
        tre(*points)  # unequal counts fail here, before the registration
    result = register(fixed, moving, fixed_mask, moving_mask, model=config.model, device=config.device,
                      options=config.options, progress=progress, cancel=cancel)
    before = after = None
    if points is not None:
        before, after = tre(*points), tre(*points, result.deformation)
    write_field(result.deformation, pair_dir / FIELD_NAME)
    doc: dict[str, Any] = {
        "id": pair.id,
        "status": "done",
        "seconds": time.perf_counter() - t0,
        "inputs": {k: str(v) for k, v in pair.inputs().items()},
        "field": FIELD_NAME,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "folding_percent": 100.0 * result.folding_fraction,
        "model_used": result.model_used,
        "messages": list(result.messages),
        "tre_before_mm": _tre_doc(before),
        "tre_after_mm": _tre_doc(after),
    }
    write_json(doc, pair_dir / RESULT_NAME)  # last: its presence means "done"
    return doc


def _tre_doc(result: TREResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {**{k: result.to_dict()[k] for k in ("mean", "std", "p95", "max", "n")},
            "per_point": [float(v) for v in result.per_point]}


def summary_rows(pairs: list[CohortPair], output_dir: PathLike) -> list[dict[str, Any]]:
    """One row (:data:`SUMMARY_COLUMNS`) per pair of the manifest, read from its folder in ``output_dir``."""
    out = Path(output_dir)
    rows = []
    for pair in pairs:
        row: dict[str, Any] = {c: None for c in SUMMARY_COLUMNS}
        row.update(id=pair.id, status="pending")
        result, error = out / pair.id / RESULT_NAME, out / pair.id / ERROR_NAME
        if result.is_file():
            doc = json.loads(result.read_text(encoding="utf-8"))
            before, after = doc.get("tre_before_mm"), doc.get("tre_after_mm")
            row.update(status="done", seconds=round(float(doc["seconds"]), 3),
                       folding_percent=doc.get("folding_percent"))
            if before and after:
                row.update(landmarks=before["n"], tre_before_mean=before["mean"], tre_before_p95=before["p95"],
                           tre_after_mean=after["mean"], tre_after_p95=after["p95"])
        elif error.is_file():
            lines = error.read_text(encoding="utf-8").splitlines()
            row.update(status="failed", error=lines[0] if lines else "failed")
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
        doc = json.loads((out / r["id"] / RESULT_NAME).read_text(encoding="utf-8"))
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

