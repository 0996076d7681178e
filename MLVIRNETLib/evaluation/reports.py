"""Result files: JSON, CSV and markdown tables of per-case TRE, written atomically.

A TRE table has one row per case plus a ``total`` row pooling every point (mean and population
standard deviation over all points, as in the mlVIRNET paper's Table 1), and one column group per
condition (``initial``, ``registered``, ...).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..io.atomic import atomic_output
from .metrics import TREResult

PathLike = str | os.PathLike
TOTAL = "total"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def write_text(text: str, path: PathLike) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    target = Path(path)
    with atomic_output(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (non-finite floats become ``null``)."""
    return write_text(json.dumps(_jsonable(obj), indent=2) + "\n", path)


def write_csv(rows: Sequence[Mapping[str, Any]], path: PathLike, columns: Sequence[str] | None = None) -> Path:
    """Write dictionaries as CSV rows atomically; ``columns`` defaults to the keys in first-seen order."""
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format_csv(row.get(k)) for k in columns})
    return write_text(buf.getvalue(), path)


def _format_csv(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return "" if value is None else value


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub-markdown table; cells are converted with ``str``."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)} has {len(row)} cells but the table has {len(headers)} columns")
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# TRE tables
# ----------------------------------------------------------------------------------------------
def tre_table(
    results: Mapping[str, Mapping[str, TREResult]], groups: Mapping[str, Sequence[str]] | None = None
) -> dict[str, dict[str, TREResult]]:
    """Add pooled rows to ``{case: {condition: TREResult}}``: one per group (``"total <group>"``,
    pooling the group's cases) and the ``total`` row over every case.

    Every case must have the same conditions.
    """
    if not results:
        raise ValueError("no cases to report")
    conditions = [list(r) for r in results.values()]
    if any(c != conditions[0] for c in conditions):
        raise ValueError(f"cases report different conditions: {conditions}")
    if TOTAL in results:
        raise ValueError(f"'{TOTAL}' is reserved for the pooled row")
    table = {case: dict(r) for case, r in results.items()}
    for group, members in (groups or {}).items():
        unknown = [m for m in members if m not in results]
        if unknown or not members:
            raise ValueError(f"group {group!r} names cases without results: {unknown or 'none given'}")
        table[f"{TOTAL} {group}"] = {cond: TREResult.pooled([results[m][cond] for m in members]) for cond in conditions[0]}
    table[TOTAL] = {cond: TREResult.pooled([results[case][cond] for case in results]) for cond in conditions[0]}
    return table


def tre_rows(table: Mapping[str, Mapping[str, TREResult]]) -> list[dict[str, Any]]:
    """Flat rows (one per case) ``case, n, <cond>_mean, <cond>_std, <cond>_p95, <cond>_max, ...``."""
    rows = []
    for case, conds in table.items():
        row: dict[str, Any] = {"case": case, "n": next(iter(conds.values())).n}
        for cond, r in conds.items():
            row.update({f"{cond}_mean": r.mean, f"{cond}_std": r.std, f"{cond}_p95": r.p95, f"{cond}_max": r.max})
        rows.append(row)
    return rows


def tre_markdown(table: Mapping[str, Mapping[str, TREResult]], title: str = "", note: str = "") -> str:
    """Markdown: ``case | n | <cond> mean (sd) mm | ...`` to two decimals."""
    conditions = list(next(iter(table.values())))
    headers = ["case", "n"] + [f"{c} mean (sd) mm" for c in conditions]
    rows = [[case, next(iter(conds.values())).n] + [conds[c].summary() for c in conditions] for case, conds in table.items()]
    parts = [f"## {title}\n\n" if title else "", f"{note}\n\n" if note else "", markdown_table(rows, headers)]
    return "".join(parts)


def write_tre_report(
    results: Mapping[str, Mapping[str, TREResult]],
    out_dir: PathLike,
    stem: str = "tre",
    title: str = "Target registration error",
    direction: str = "fixed -> moving",
    metadata: Mapping[str, Any] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.md`` into ``out_dir`` (created if needed).

    Args:
        results: ``{case: {condition: TREResult}}``; the pooled ``total`` row is added here.
        direction: stated in every file.
        metadata: extra JSON fields (protocol, command line, field files, ...).
        groups: ``{name: [case, ...]}`` for extra pooled rows ``"total <name>"`` (see :func:`tre_table`).

    Returns:
        ``{"json": path, "csv": path, "markdown": path}``. All three are computed before the first
        is written, and each file is written atomically.
    """
    table = tre_table(results, groups)
    out = Path(out_dir)
    doc = {
        "title": title,
        "direction": direction,
        "units": "mm",
        "std": "population (ddof=0)",
        **(dict(metadata) if metadata else {}),
        "cases": {case: {cond: r.to_dict(include_points=case in results) for cond, r in conds.items()} for case, conds in table.items()},
    }
    note = f"Direction: {direction}. Mean (population sd) in mm; `{TOTAL}` pools all points."
    md = tre_markdown(table, title=title, note=note)
    rows = tre_rows(table)
    for row in rows:
        row["direction"] = direction
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(doc, out / f"{stem}.json"),
        "csv": write_csv(rows, out / f"{stem}.csv"),
        "markdown": write_text(md, out / f"{stem}.md"),
    }
    return paths
