"""The TRE table of the Slicer Logic: per-landmark positions (RAS mm) and errors in a table node,
and the figures the panel prints."""

from __future__ import annotations

from typing import Any

import numpy as np


def treStats(result) -> dict:
    """Mean, sd, p95, max, count and the per-point errors (mm) of a :class:`TREResult`, as plain numbers."""
    errors = np.asarray(result.per_point, dtype=float).reshape(-1)
    return {
        "mean": float(result.mean),
        "std": float(result.std),
        "p95": float(result.p95),
        "max": float(result.max),
        "n": int(result.n),
        "errors": errors.tolist(),
    }

def formatTreStats(stats: dict) -> str:
    """One line of :func:`treStats` figures, as the panel shows them."""
    return (
        f"{stats['mean']:.2f} ± {stats['std']:.2f} mm (95th percentile {stats['p95']:.2f}, "
        f"max {stats['max']:.2f}, n = {stats['n']})"
    )

def fillTreTable(tableNode, labels, fixedRas, movingRas, mappedRas, initial, final) -> None:
    """Write one row per landmark into ``tableNode``: its label, the fixed and moving positions (RAS mm),
    and, with a ``final`` result, the mapped position and the error before and after; without one,
    the initial error only."""
    import vtk

    columns: list[tuple[str, Any]] = [("Landmark", list(labels))]
    for prefix, ras in (("Fixed", fixedRas), ("Moving", movingRas)):
        for axis, letter in enumerate("RAS"):
            columns.append((f"{prefix} {letter}", ras[:, axis]))
    if final is not None:
        for axis, letter in enumerate("RAS"):
            columns.append((f"Mapped {letter}", mappedRas[:, axis]))
        columns.append(("Initial error (mm)", np.asarray(initial.per_point, dtype=float).reshape(-1)))
        columns.append(("Error (mm)", np.asarray(final.per_point, dtype=float).reshape(-1)))
    else:
        columns.append(("Error (mm)", np.asarray(initial.per_point, dtype=float).reshape(-1)))

    wasModifying = tableNode.StartModify()
    table = tableNode.GetTable()
    table.Initialize()
    for name, values in columns:
        if name == "Landmark":
            array = vtk.vtkStringArray()
            array.SetName(name)
            for value in values:
                array.InsertNextValue(str(value))
        else:
            array = vtk.vtkDoubleArray()
            array.SetName(name)
            for value in values:
                array.InsertNextValue(float(value))
        table.AddColumn(array)
    for name, _ in columns[1:]:
        tableNode.SetColumnUnitLabel(name, "mm")
    tableNode.Modified()
    tableNode.EndModify(wasModifying)
