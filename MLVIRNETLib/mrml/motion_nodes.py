"""The motion summary of a 4D-CT registration in MRML: a table node and plot chart nodes.

The table holds one row per phase with the columns of ``summary.csv``
(:data:`MLVIRNETLib.evaluation.motion.SUMMARY_COLUMNS`): text columns for the phase name and the
flag reason, numbers for the rest (booleans as 0/1, a missing value as NaN). Two more columns,
:data:`FLAGGED_COLUMNS`, repeat the lung volume and the lung base excursion for the flagged
phases only (NaN elsewhere): the charts draw them as separate marker series, so a flagged phase
stands out on the curve.

Two charts, one per unit, both against the phase index: the breathing curve (the reference
lungs' volume in each phase, from the Jacobian, ml) and the superior-inferior excursion of the
lung base (mm).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from ..evaluation.motion import SeriesSummary

TEXT_COLUMNS = ("phase", "flag_reason")
"""Summary columns held as text."""

FLAGGED_COLUMNS = {
    "lung_volume_jacobian_ml": "flagged_lung_volume_jacobian_ml",
    "si_excursion_mm": "flagged_si_excursion_mm",
}
"""Summary column -> the column holding its values at the flagged phases only."""

CHARTS = (
    ("breathing", "lung_volume_jacobian_ml", "Lung volume (Jacobian)", "lung volume (ml)"),
    ("excursion", "si_excursion_mm", "Lung base SI excursion", "superior-inferior excursion (mm)"),
)
"""``(key, column, series name, y axis title)`` of each chart."""


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def fillMotionTable(tableNode, summary: "SeriesSummary") -> None:
    """Write one row per phase of ``summary`` into ``tableNode`` (module docstring)."""
    import vtk

    from ..evaluation.motion import SUMMARY_COLUMNS

    rows = [r.row() for r in summary.rows]
    wasModifying = tableNode.StartModify()
    table = tableNode.GetTable()
    table.Initialize()
    for name in SUMMARY_COLUMNS:
        array = vtk.vtkStringArray() if name in TEXT_COLUMNS else vtk.vtkDoubleArray()
        array.SetName(name)
        for row in rows:
            value = row[name]
            if name in TEXT_COLUMNS:
                array.InsertNextValue("" if value is None else str(value))
            else:
                array.InsertNextValue(_number(value))
        table.AddColumn(array)
    for source, name in FLAGGED_COLUMNS.items():
        array = vtk.vtkDoubleArray()
        array.SetName(name)
        for row in rows:
            array.InsertNextValue(_number(row[source]) if row["flagged"] else math.nan)
        table.AddColumn(array)
    for name in SUMMARY_COLUMNS + tuple(FLAGGED_COLUMNS.values()):
        unit = "ml" if name.endswith("_ml") else "mm" if name.endswith("_mm") else "%" if name.endswith("_percent") else ""
        if unit:
            tableNode.SetColumnUnitLabel(name, unit)
    tableNode.SetAttribute("MLVIRNET.EndInhale", summary.end_inhale)
    tableNode.SetAttribute("MLVIRNET.EndExhale", summary.end_exhale)
    tableNode.SetAttribute("MLVIRNET.Flagged", "; ".join(f"{k}: {v}" for k, v in summary.flagged.items()))
    tableNode.Modified()
    tableNode.EndModify(wasModifying)


def addMotionCharts(scene, tableNode, baseName: str, created: list) -> dict:
    """Add the two charts (module docstring) of ``tableNode`` to ``scene``; every node added is
    appended to ``created`` as soon as it is (so that a caller can remove them after an error).

    Returns:
        ``{"breathing": chart, "excursion": chart}`` (``vtkMRMLPlotChartNode``), each with a line
        series of every phase and a marker series of the flagged ones.
    """
    import slicer

    charts = {}
    for key, column, title, yTitle in CHARTS:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{baseName} {title} chart"))
        created.append(chart)
        chart.SetTitle(f"{baseName}: {title}")
        chart.SetXAxisTitle("phase (index in the series)")
        chart.SetYAxisTitle(yTitle)
        for y, name, flagged in ((column, title, False), (FLAGGED_COLUMNS[column], f"{title}, flagged", True)):
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{baseName} {name}"))
            created.append(series)
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName("index")
            series.SetYColumnName(y)
            series.SetLabelColumnName("phase")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            if flagged:
                series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
                series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCross)
                series.SetMarkerSize(14)
                series.SetColor(0.85, 0.1, 0.1)
            else:
                series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
                series.SetColor(0.1, 0.3, 0.8)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        charts[key] = chart
    return charts
