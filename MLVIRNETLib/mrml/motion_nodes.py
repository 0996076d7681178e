"""The motion summary of a 4D-CT registration in MRML: a table node and plot chart nodes.

The table holds one row per phase with the columns of ``summary.csv``
(:data:`MLVIRNETLib.evaluation.motion.SUMMARY_COLUMNS`): text columns for the phase name and the
flag reason, numbers for the rest (booleans as 0/1, a missing value as NaN). More columns,
:func:`markerColumn`, repeat the lung volume and the lung base excursion at the flagged phases,
the end-inhale phase and the end-exhale phase only (NaN elsewhere): the charts draw them as
separate marker series, so that those phases stand out on the curve.

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

PLOTTED_COLUMNS = ("lung_volume_jacobian_ml", "si_excursion_mm")
"""Summary columns drawn in the charts (one chart each)."""

MARKERS = (
    ("flagged", "flagged", (0.85, 0.1, 0.1), "Cross"),
    ("end_inhale", "end-inhale", (0.1, 0.6, 0.2), "Diamond"),
    ("end_exhale", "end-exhale", (0.9, 0.55, 0.0), "Square"),
)
"""``(key, label, colour, marker style)`` of the marker series drawn over each curve."""


def markerColumn(marker: str, column: str) -> str:
    """The table column holding ``column``'s values at the ``marker`` phases only."""
    return f"{marker}_{column}"


def _isMarked(marker: str, row: dict, summary: "SeriesSummary") -> bool:
    if marker == "flagged":
        return bool(row["flagged"])
    return row["phase"] == (summary.end_inhale if marker == "end_inhale" else summary.end_exhale)


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
    markerColumns = []
    for marker, *_ in MARKERS:
        for source in PLOTTED_COLUMNS:
            array = vtk.vtkDoubleArray()
            array.SetName(markerColumn(marker, source))
            for row in rows:
                array.InsertNextValue(_number(row[source]) if _isMarked(marker, row, summary) else math.nan)
            table.AddColumn(array)
            markerColumns.append(array.GetName())
    for name in SUMMARY_COLUMNS + tuple(markerColumns):
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
        series of every phase and a marker series each for the flagged, end-inhale and end-exhale
        phases (:data:`MARKERS`).
    """
    import slicer

    charts = {}
    for key, column, title, yTitle in CHARTS:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{baseName} {title} chart"))
        created.append(chart)
        chart.SetTitle(f"{baseName}: {title}")
        chart.SetXAxisTitle("phase (index in the series)")
        chart.SetYAxisTitle(yTitle)
        lines = [(column, title, None)] + [(markerColumn(key_, column), f"{title}, {label}", (colour, style))
                                           for key_, label, colour, style in MARKERS]
        for y, name, marker in lines:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{baseName} {name}"))
            created.append(series)
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName("index")
            series.SetYColumnName(y)
            series.SetLabelColumnName("phase")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            if marker is not None:
                colour, style = marker
                series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
                series.SetMarkerStyle(getattr(slicer.vtkMRMLPlotSeriesNode, f"MarkerStyle{style}"))
                series.SetMarkerSize(14)
                series.SetColor(*colour)
            else:
                series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
                series.SetColor(0.1, 0.3, 0.8)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        charts[key] = chart
    return charts
