"""Landmark files: DIR-LAB voxel lists, 3D Slicer markups (``.mrk.json``, ``.fcsv``) and CSV.

Every reader returns points as a float64 array ``(P, 3)`` in **LPS mm** (x, y, z).

Formats (chosen from the suffix, or forced with ``fmt``):

``dirlab`` (``.txt``, ``.pts``)
    One point per line, three numbers ``x y z`` separated by tabs, spaces or commas (CRLF and
    trailing separators tolerated), 1-based voxel indices (ints or floats) of an image whose
    :class:`ImageGrid` must be given: ``world = grid.index_to_world(xyz - 1)``.
``mrk.json``
    Slicer markups JSON; the points of every markup in the file, in order. ``coordinateSystem``
    ``"LPS"`` or ``"RAS"`` is honoured (a missing field means LPS, Slicer's default since 4.11).
    A control point with ``"positionStatus": "missing"`` (skipped during placement) has no
    meaningful position: :func:`read_landmark_pairs` leaves it out, :func:`read_landmarks` refuses
    the file.
``fcsv``
    Slicer's legacy CSV; the ``# CoordinateSystem = LPS|RAS|0|1`` header line is honoured
    (``0`` = RAS, ``1`` = LPS; a missing line means RAS, the format's original convention).
``csv``
    World LPS mm. Either a header naming columns ``x``, ``y``, ``z`` (other columns ignored) or
    exactly three numeric columns without a header.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.geometry import ImageGrid, lps_to_ras, ras_to_lps
from .atomic import atomic_output

PathLike = str | os.PathLike
FORMATS = ("dirlab", "mrk.json", "fcsv", "csv")


def landmark_format(path: PathLike) -> str:
    """The format implied by a file name (see the module docstring)."""
    name = Path(path).name.lower()
    if name.endswith(".mrk.json") or name.endswith(".json"):
        return "mrk.json"
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".txt") or name.endswith(".pts"):
        return "dirlab"
    raise ValueError(
        f"cannot tell the landmark format of {path}: use .txt/.pts (DIR-LAB voxel indices), "
        ".mrk.json or .fcsv (3D Slicer markups) or .csv (LPS mm)"
    )


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LandmarkTable:
    """The points of one landmark file with what the file says about them.

    Attributes:
        points: ``(P, 3)`` float64 LPS mm, every point of the file in order (a missing point keeps
            its stored position, which means nothing).
        labels: one label per point (Slicer markups, ``.fcsv``, a CSV ``label`` column), else ``None``.
        missing: ``(P,)`` bool, True for a point marked ``"positionStatus": "missing"``.
    """

    points: np.ndarray
    labels: list[str] | None
    missing: np.ndarray


@dataclass(frozen=True)
class LandmarkPairs:
    """Corresponding fixed and moving landmarks (:func:`read_landmark_pairs`).

    Attributes:
        fixed, moving: ``(N, 3)`` float64 LPS mm, row ``i`` of one corresponds to row ``i`` of the other.
        labels: the label of each pair when paired by label, else ``None`` (paired by position).
        skipped: points left out: marked missing in either file, or (paired by label) a label that
            only one file holds.
    """

    fixed: np.ndarray
    moving: np.ndarray
    labels: list[str] | None
    skipped: int

    @property
    def note(self) -> str | None:
        """A sentence for the user when points were skipped, else ``None``."""
        if not self.skipped:
            return None
        how = "by label" if self.labels is not None else "by position"
        return (f"{self.skipped} landmark(s) skipped (marked missing, or without a partner); "
                f"{len(self.fixed)} pairs matched {how}")


def read_landmark_table(path: PathLike, grid: ImageGrid | None = None, fmt: str | None = None) -> LandmarkTable:
    """Read a landmark file -> :class:`LandmarkTable` (points, labels, missing flags).

    Args:
        path: the landmark file.
        grid: the image grid that DIR-LAB voxel indices refer to (required for that format only).
        fmt: force a format (one of :data:`FORMATS`) instead of guessing from the suffix.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown format, empty file, a row without exactly 3 coordinates, a
            non-numeric value, a DIR-LAB index outside the image, a DIR-LAB file without grid,
            or a non-finite coordinate of a point that is not marked missing.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"landmark file not found: {p}")
    kind = fmt if fmt is not None else landmark_format(p)
    if kind not in FORMATS:
        raise ValueError(f"landmark format must be one of {FORMATS}, got {kind!r}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"landmark file {p} is not a text file") from None
    labels: list[str] | None = None
    missing: np.ndarray | None = None
    if kind == "dirlab":
        if grid is None:
            raise ValueError(
                f"{p} holds voxel indices (DIR-LAB format): the image grid is needed to convert them to mm "
                "(give the image or the DIR-LAB case)"
            )
        points = _index_points_to_world(_parse_dirlab(text, p), grid, p)
    elif kind == "mrk.json":
        points, labels, missing = _parse_markups_json(text, p)
    elif kind == "fcsv":
        points, labels = _parse_fcsv(text, p)
    else:
        points, labels = _parse_csv(text, p)
    if points.shape[0] == 0:
        raise ValueError(f"landmark file {p} holds no points")
    missing = np.zeros(points.shape[0], dtype=bool) if missing is None else missing
    if not np.all(np.isfinite(points[~missing])):
        raise ValueError(f"landmark file {p} holds non-finite coordinates")
    return LandmarkTable(points, labels, missing)


def read_landmarks(path: PathLike, grid: ImageGrid | None = None, fmt: str | None = None) -> np.ndarray:
    """Read landmarks -> ``(P, 3)`` float64 LPS mm.

    Args:
        path: the landmark file.
        grid: the image grid that DIR-LAB voxel indices refer to (required for that format only).
        fmt: force a format (one of :data:`FORMATS`) instead of guessing from the suffix.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: as :func:`read_landmark_table`, and for a file with points marked missing
            (their position means nothing; :func:`read_landmark_pairs` leaves them out).
    """
    table = read_landmark_table(path, grid, fmt)
    if table.missing.any():
        raise ValueError(
            f"landmark file {path} marks {int(table.missing.sum())} point(s) missing (positionStatus); "
            "read it as a pair with its partner file so that those points are left out"
        )
    return table.points


def pair_landmarks(fixed: LandmarkTable, moving: LandmarkTable, fixed_name: str = "fixed",
                   moving_name: str = "moving") -> LandmarkPairs:
    """Match two landmark tables: by label where both files label every point with unique labels,
    else by position (equal counts needed); points marked missing in either file are left out.

    Raises:
        ValueError: unequal counts when pairing by position, or no pair left.
    """
    def by_label(t: LandmarkTable) -> dict[str, int] | None:
        if t.labels is None or any(not lab for lab in t.labels) or len(set(t.labels)) != len(t.labels):
            return None
        return {lab: i for i, lab in enumerate(t.labels)}

    f_labels, m_labels = by_label(fixed), by_label(moving)
    if f_labels is not None and m_labels is not None and set(f_labels) & set(m_labels):
        common = [lab for lab in f_labels if lab in m_labels]
        kept = [lab for lab in common if not fixed.missing[f_labels[lab]] and not moving.missing[m_labels[lab]]]
        fi = [f_labels[lab] for lab in kept]
        mi = [m_labels[lab] for lab in kept]
        labels: list[str] | None = kept
        skipped = len(f_labels) + len(m_labels) - 2 * len(kept)
    else:
        if len(fixed.points) != len(moving.points):
            raise ValueError(
                f"landmark counts differ: {len(fixed.points)} fixed vs {len(moving.points)} moving ({fixed_name}, "
                f"{moving_name}), and the files carry no common labels to pair them by"
            )
        keep = ~(fixed.missing | moving.missing)
        fi = mi = list(np.flatnonzero(keep))
        labels = None
        skipped = 2 * int((~keep).sum())
    if not fi:
        raise ValueError(f"no landmark pair left between {fixed_name} and {moving_name} "
                         "(every point is marked missing or lacks a partner)")
    return LandmarkPairs(fixed.points[fi], moving.points[mi], labels, skipped)


def read_landmark_pairs(fixed_path: PathLike, moving_path: PathLike, fixed_grid: ImageGrid | None = None,
                        moving_grid: ImageGrid | None = None) -> LandmarkPairs:
    """Read corresponding fixed and moving landmark files -> :class:`LandmarkPairs`.

    Points marked ``"positionStatus": "missing"`` (Slicer markups) are left out; the rest pair by
    label where both files label every point uniquely (Slicer markups, ``.fcsv``, CSV with a
    ``label`` column), else by position; ``skipped`` counts the points left out.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: as :func:`read_landmark_table` and :func:`pair_landmarks`.
    """
    return pair_landmarks(read_landmark_table(fixed_path, fixed_grid), read_landmark_table(moving_path, moving_grid),
                          str(fixed_path), str(moving_path))


def _number(token: str, path: Path, line_no: int) -> float:
    try:
        return float(token)
    except ValueError:
        raise ValueError(f"{path} line {line_no}: {token!r} is not a number") from None


def _parse_dirlab(text: str, path: Path) -> np.ndarray:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        tokens = [t for t in re.split(r"[\s,;]+", line.strip()) if t]
        if not tokens:
            continue
        if len(tokens) != 3:
            raise ValueError(f"{path} line {line_no}: expected 3 values (x y z voxel indices), found {len(tokens)}: {line.strip()!r}")
        rows.append([_number(t, path, line_no) for t in tokens])
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _index_points_to_world(one_based: np.ndarray, grid: ImageGrid, path: Path) -> np.ndarray:
    index = one_based - 1.0
    size = np.asarray(grid.size)
    outside = np.any((index < -0.5) | (index > size - 0.5), axis=1)
    if np.any(outside):
        first = int(np.argmax(outside))
        raise ValueError(
            f"{path}: {int(outside.sum())} landmark(s) lie outside the image of size {grid.size} "
            f"(1-based indices); first is point {first + 1} at {one_based[first].tolist()}"
        )
    return np.asarray(grid.index_to_world(index), dtype=float)


def _parse_markups_json(text: str, path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list):
        raise ValueError(f"{path} is not a Slicer markups file (no 'markups' list)")
    points, labels, missing = [], [], []
    for m_no, markup in enumerate(markups):
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise ValueError(f"{path} markup {m_no}: unknown coordinateSystem {system!r} (expected LPS or RAS)")
        for c_no, cp in enumerate(markup.get("controlPoints") or []):
            gone = str(cp.get("positionStatus", "defined")).lower() == "missing"
            pos = cp.get("position", [0.0, 0.0, 0.0] if gone else None)
            if not isinstance(pos, list) or len(pos) != 3:
                raise ValueError(f"{path} markup {m_no} control point {c_no}: position must be 3 numbers, got {pos!r}")
            try:
                xyz = np.asarray([float(v) for v in pos])
            except (TypeError, ValueError):
                raise ValueError(f"{path} markup {m_no} control point {c_no}: non-numeric position {pos!r}") from None
            points.append(ras_to_lps(xyz) if system == "RAS" else xyz)
            labels.append(str(cp.get("label", "")))
            missing.append(gone)
    return np.asarray(points, dtype=float).reshape(-1, 3), labels, np.asarray(missing, dtype=bool)


def _parse_fcsv(text: str, path: Path) -> tuple[np.ndarray, list[str] | None]:
    system = "RAS"
    columns = ["id", "x", "y", "z"]
    rows, labels = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            m = re.match(r"#\s*CoordinateSystem\s*=\s*(\S+)", s, flags=re.IGNORECASE)
            if m:
                value = m.group(1).upper()
                mapping = {"0": "RAS", "RAS": "RAS", "1": "LPS", "LPS": "LPS"}
                if value not in mapping:
                    raise ValueError(f"{path} line {line_no}: unknown CoordinateSystem {value!r} (expected LPS or RAS)")
                system = mapping[value]
            m = re.match(r"#\s*columns\s*=\s*(.+)", s, flags=re.IGNORECASE)
            if m:
                columns = [c.strip().lower() for c in m.group(1).split(",")]
            continue
        fields = next(csv.reader([s]))
        try:
            ix, iy, iz = (columns.index(k) for k in ("x", "y", "z"))
        except ValueError:
            raise ValueError(f"{path}: the '# columns' header has no x, y, z columns: {columns}") from None
        if len(fields) <= max(ix, iy, iz):
            raise ValueError(f"{path} line {line_no}: expected at least {max(ix, iy, iz) + 1} columns, found {len(fields)}")
        rows.append([_number(fields[i], path, line_no) for i in (ix, iy, iz)])
        il = columns.index("label") if "label" in columns else -1
        labels.append(fields[il].strip() if 0 <= il < len(fields) else "")
    points = np.asarray(rows, dtype=float).reshape(-1, 3)
    return (ras_to_lps(points) if system == "RAS" else points), labels


def _parse_csv(text: str, path: Path) -> tuple[np.ndarray, list[str] | None]:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return np.zeros((0, 3)), None
    dialect_delim = ";" if lines[0][1].count(";") > lines[0][1].count(",") else ","
    first = [f.strip() for f in next(csv.reader([lines[0][1]], delimiter=dialect_delim))]

    def numeric(tokens: Sequence[str]) -> bool:
        try:
            [float(t) for t in tokens]
            return True
        except ValueError:
            return False

    if numeric(first):
        cols = None
        body = lines
        width = len(first)
        if width != 3:
            raise ValueError(
                f"{path} line {lines[0][0]}: a CSV without header must have exactly 3 columns (x, y, z in LPS mm), found {width}"
            )
        idx = (0, 1, 2)
    else:
        cols = [c.lower() for c in first]
        try:
            idx = tuple(cols.index(k) for k in ("x", "y", "z"))
        except ValueError:
            raise ValueError(f"{path}: CSV header {first} must name columns x, y and z (LPS mm)") from None
        body = lines[1:]
        width = len(cols)
    il = cols.index("label") if cols is not None and "label" in cols else None
    rows, labels = [], []
    for line_no, line in body:
        fields = [f.strip() for f in next(csv.reader([line], delimiter=dialect_delim))]
        if len(fields) != width:
            raise ValueError(f"{path} line {line_no}: expected {width} columns, found {len(fields)}: {line.strip()!r}")
        rows.append([_number(fields[i], path, line_no) for i in idx])
        if il is not None:
            labels.append(fields[il])
    return np.asarray(rows, dtype=float).reshape(-1, 3), (labels if il is not None else None)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _check_points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape (P, 3), got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("no points to write")
    if not np.all(np.isfinite(p)):
        raise ValueError("points contain non-finite values")
    return p


def write_landmarks(
    points: np.ndarray,
    path: PathLike,
    grid: ImageGrid | None = None,
    coordinate_system: str = "LPS",
    labels: Sequence[str] | None = None,
    fmt: str | None = None,
) -> Path:
    """Write ``(P, 3)`` LPS-mm points atomically; the format comes from the suffix or ``fmt``.

    Args:
        grid: required for the DIR-LAB format (points are written as 1-based voxel indices of
            ``grid``, as integers when every index is within 1e-6 of an integer).
        coordinate_system: ``"LPS"`` or ``"RAS"`` for ``.mrk.json`` / ``.fcsv`` (CSV is always LPS).
        labels: one label per point for markups (default ``F-1``, ``F-2``, ...).
    """
    p = _check_points(points)
    kind = fmt if fmt is not None else landmark_format(path)
    if kind not in FORMATS:
        raise ValueError(f"landmark format must be one of {FORMATS}, got {kind!r}")
    system = coordinate_system.upper()
    if system not in ("LPS", "RAS"):
        raise ValueError(f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}")
    if labels is None:
        labels = [f"F-{i + 1}" for i in range(p.shape[0])]
    if len(labels) != p.shape[0]:
        raise ValueError(f"{len(labels)} labels for {p.shape[0]} points")
    out = p if system == "LPS" else lps_to_ras(p)

    if kind == "dirlab":
        if grid is None:
            raise ValueError("writing DIR-LAB voxel indices needs the image grid")
        one_based = np.asarray(grid.world_to_index(p)) + 1.0
        if np.all(np.abs(one_based - np.rint(one_based)) < 1e-6):
            text = "".join("\t".join(str(int(v)) for v in np.rint(r)) + "\n" for r in one_based)
        else:
            text = "".join("\t".join(f"{v:.6f}" for v in r) + "\n" for r in one_based)
    elif kind == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["label", "x", "y", "z"])
        for label, r in zip(labels, p):
            w.writerow([label, *(repr(float(v)) for v in r)])
        text = buf.getvalue()
    elif kind == "fcsv":
        buf = io.StringIO()
        buf.write("# Markups fiducial file version = 4.11\n")
        buf.write(f"# CoordinateSystem = {system}\n")
        buf.write("# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n")
        w = csv.writer(buf, lineterminator="\n")
        for i, (label, r) in enumerate(zip(labels, out)):
            w.writerow([str(i + 1), *(repr(float(v)) for v in r), 0, 0, 0, 1, 1, 1, 0, label, "", ""])
        text = buf.getvalue()
    else:
        doc = {
            "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
            "markups": [
                {
                    "type": "Fiducial",
                    "coordinateSystem": system,
                    "coordinateUnits": "mm",
                    "controlPoints": [
                        {
                            "id": str(i + 1),
                            "label": label,
                            "position": [float(v) for v in r],
                            "positionStatus": "defined",
                        }
                        for i, (label, r) in enumerate(zip(labels, out))
                    ],
                }
            ],
        }
        text = json.dumps(doc, indent=2) + "\n"
    target = Path(path)
    with atomic_output(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
