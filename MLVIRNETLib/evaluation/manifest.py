"""The cohort manifest of ``mlvirnet batch``: reading it and checking every row before any work.

A CSV file with a header row. Columns ``id``, ``fixed`` and ``moving`` are required;
``fixed_mask``, ``moving_mask``, ``fixed_landmarks`` and ``moving_landmarks`` are optional (an
empty cell means none; landmarks come in pairs). Column names are lower case, cells are separated
by commas, and every column appears once. Paths are absolute or relative to the manifest's folder.
An ``id`` names the pair's output folder: letters, digits, ``.``, ``_`` and ``-``, not starting
with ``.``, unique (also ignoring case), at most :data:`MAX_ID_BYTES` bytes, and none of the
cohort-wide output names (:data:`RESERVED_NAMES`).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..io.landmarks import landmark_format

PathLike = str | os.PathLike

REQUIRED_COLUMNS = ("id", "fixed", "moving")
OPTIONAL_COLUMNS = ("fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks")
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
BOXPLOT_NAME = "tre_boxplot.png"
RESERVED_NAMES = (SUMMARY_CSV, SUMMARY_JSON, BOXPLOT_NAME)
"""The names of the cohort-wide outputs in ``OUTDIR``: no pair id may take one of them."""
MAX_ID_BYTES = 200
"""Longest id in UTF-8 bytes: a pair folder's name, with room below the file systems' 255-byte
NAME_MAX for the hidden temporary and lock names made from it."""
_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CohortPair:
    """One row of the manifest, paths resolved; ``line`` is its line in ``manifest``, ``cells`` the
    paths as the manifest writes them (column -> cell)."""

    id: str
    fixed: Path
    moving: Path
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    fixed_landmarks: Path | None = None
    moving_landmarks: Path | None = None
    line: int = 0
    manifest: Path | None = None
    cells: dict[str, str] | None = None

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
    if manifest.is_dir():
        raise ValueError(f"manifest {manifest} is a folder; give the CSV file (e.g. {manifest / 'manifest.csv'})")
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"manifest {manifest} is not a UTF-8 text file") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    problem = _header_problem(columns, manifest)
    if problem is not None:
        raise ValueError(f"manifest {manifest}, line 1: {problem}; the columns are {list(REQUIRED_COLUMNS)} and "
                         f"optionally {list(OPTIONAL_COLUMNS)}")
    reader.fieldnames = columns
    pairs: list[CohortPair] = []
    seen: dict[str, int] = {}
    for row in reader:
        pair = _pair_of_row(row, reader.line_num, manifest, seen)
        seen[pair.id.casefold()] = pair.line
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
    if pair_id.casefold() in seen:
        raise fail(f"id {pair_id!r} repeats line {seen[pair_id.casefold()]} (ids must differ also ignoring case)")
    if len(pair_id.encode("utf-8")) > MAX_ID_BYTES:
        raise fail(f"the id is {len(pair_id.encode('utf-8'))} bytes long; at most {MAX_ID_BYTES} "
                   "(it names a folder, and file systems allow 255 bytes per name)")
    if pair_id.casefold() in (n.casefold() for n in RESERVED_NAMES):
        raise fail(f"the id {pair_id!r} is the name of a cohort output ({', '.join(RESERVED_NAMES)}); choose another")
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
    cells = {n: (row.get(n) or "").strip() for n in paths if paths[n] is not None}
    return CohortPair(id=pair_id, line=line, manifest=manifest, cells=cells, **paths)  # type: ignore[arg-type]



def _header_problem(columns: list[str], manifest: Path) -> str | None:
    """Why the header row ``columns`` is wrong (with a hint), or ``None``."""
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    if len(columns) == 1 and ";" in columns[0]:
        return "the header has one column holding ';': cells must be separated by commas (',' not ';')"
    if len(columns) == 1 and "\t" in columns[0]:
        return "the header has one column holding tabs: cells must be separated by commas"
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        return f"column(s) {repeated} appear more than once in the header; each column may appear once"
    wrong_case = [c for c in columns if c not in known and c.lower() in known]
    if wrong_case:
        return (f"column name(s) {wrong_case} must be written in lower case "
                f"({[c.lower() for c in wrong_case]})")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in known]
    if missing or unknown:
        return f"missing column(s) {missing}" if missing else f"unknown column(s) {unknown}"
    return None
