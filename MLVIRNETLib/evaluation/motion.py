"""The motion summary of a 4D-CT registered to a reference phase: one row per phase, and the series.

:func:`phase_motion` measures one phase from its map ``y`` (reference -> phase, on the reference
grid, ``x_phase = x_ref + u(x_ref)``, LPS mm) and the lung masks:

``lung_volume_jacobian_ml``
    the volume of the reference lungs as they are in this phase: ``sum det(dy/dx) * voxel volume``
    over the reference lung mask ``L`` (the volume of ``y(L)``).
``lung_volume_mask_ml``
    the volume of the phase's own lung mask (its voxels times its voxel volume).
``lung_dice``
    the Dice overlap of the reference mask and the phase's mask warped onto the reference grid
    (nearest neighbour; on that grid coarsened to voxels of at least :data:`DICE_SPACING_MM`):
    1 where the map carries the lungs exactly onto each other.
``displacement_mean_mm``, ``displacement_p95_mm``, ``displacement_max_mm``
    ``|u|`` over the reference lung mask.
``si_excursion_mm``
    the mean superior-inferior displacement (the LPS z component of ``u``, positive = towards the
    head) of the lung base: the reference lung voxels whose LPS z (world height, whatever the
    grid's direction matrix) lies in the lowest :data:`BASE_FRACTION` of the lung voxels' heights.
    The diaphragm's excursion relative to the reference phase.
``folding_percent``
    voxels of the reference lung mask where ``det(dy/dx) <= 0``, in percent.
``quality_ncc``, ``quality_ok``
    the registration's own quality check (:mod:`MLVIRNETLib.registration.quality`).
``tre_before_mm``, ``tre_mean_mm``, ``tre_p95_mm``, ``landmarks``
    with landmarks that follow the phases: the TRE (reference -> phase) of the reference
    landmarks before (no motion) and after registration.

:func:`summarize_series` flags phases that look failed (:func:`flag_phases`) and marks the
end-inhale phase (largest Jacobian lung volume) and the end-exhale phase (smallest) among the others.
:func:`motion_plot` draws the breathing curve, the displacement and the flags against phase.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation, jacobian_determinant
from ..core.geometry import ImageGrid, index_affine_terms, zyx_to_xyz
from .metrics import map_points, tre

PathLike = str | os.PathLike

BASE_FRACTION = 0.10
"""The share of the reference lung voxels, lowest in LPS z, that make up the lung base."""
JUMP_FACTOR = 4.0
"""A phase is flagged when its curve value leaves its neighbours' mean (an end phase of an open
series: its neighbour) by more than this many times the median such departure of the phases
further than one phase from it (and more than the floors below)."""
VOLUME_JUMP_FLOOR = 0.05
"""... and by more than this fraction of the reference lung volume (lung volume curve)."""
EXCURSION_JUMP_FLOOR_MM = 2.0
"""... and by more than this many mm (lung base excursion curve)."""
CYCLE_GAP = 0.5
"""A lung volume curve is taken as one whole breathing cycle when its first and last phases differ
by at most this fraction of its range (:func:`is_cycle`)."""
DICE_SPACING_MM = 2.0
"""The lung Dice is taken on the reference grid coarsened to voxels of at least this size."""
DICE_FLAG = 0.80
"""A phase whose lung Dice (reference vs warped phase mask) falls below this is flagged."""

__all__ = ["BASE_FRACTION", "CYCLE_GAP", "PhaseMotion", "SeriesSummary", "flag_phases", "is_cycle", "landmark_motion",
           "motion_plot", "phase_motion", "summarize_series", "SUMMARY_COLUMNS"]


@dataclass
class PhaseMotion:
    """One phase of the motion summary (module docstring); ``None`` where a value cannot be had."""

    index: int
    phase: str
    reference: bool
    lung_volume_jacobian_ml: float
    lung_volume_mask_ml: float | None
    lung_dice: float | None
    displacement_mean_mm: float
    displacement_p95_mm: float
    displacement_max_mm: float
    si_excursion_mm: float
    folding_percent: float
    quality_ncc: float | None = None
    quality_ok: bool | None = None
    landmarks: int | None = None
    tre_before_mm: float | None = None
    tre_mean_mm: float | None = None
    tre_p95_mm: float | None = None
    seconds: float | None = None
    flagged: bool = False
    flag_reason: str | None = None
    trajectory: dict[str, list[list[float]]] | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        """The CSV row (:data:`SUMMARY_COLUMNS`)."""
        return {k: v for k, v in asdict(self).items() if k in SUMMARY_COLUMNS}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (the landmark trajectory included)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "PhaseMotion":
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: a required field is missing.
        """
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as exc:
            raise ValueError(f"not a phase motion record: {exc}") from None


SUMMARY_COLUMNS = tuple(f.name for f in fields(PhaseMotion) if f.name != "trajectory")
"""Columns of ``summary.csv``."""


def _mask_array(mask: sitk.Image, grid: ImageGrid, what: str) -> np.ndarray:
    mgrid = ImageGrid.from_sitk(mask)
    if not mgrid.is_close(grid, tol_mm=1e-3 * min(grid.spacing)):
        raise ValueError(f"the {what} ({mgrid.describe()}) is not on the grid it belongs to ({grid.describe()})")
    return sitk.GetArrayViewFromImage(mask) != 0


def phase_motion(
    deformation: Deformation,
    reference_mask: sitk.Image,
    phase_mask: sitk.Image | None = None,
    *,
    index: int = 0,
    phase: str = "",
    reference: bool = False,
    quality: Any = None,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    seconds: float | None = None,
    base_fraction: float = BASE_FRACTION,
) -> PhaseMotion:
    """Measure one phase (module docstring).

    Args:
        deformation: batch-1 map reference -> phase on the reference grid.
        reference_mask: the reference lung mask, on ``deformation.grid``.
        phase_mask: the phase's own lung mask on the phase's grid, or ``None``.
        index, phase, reference, seconds: copied into the row.
        quality: the registration's ``QualityCheck`` (or ``None``).
        landmarks: ``(reference points, phase points)``, ``(P, 3)`` LPS mm each, or ``None``.
        base_fraction: the share of lung voxels (lowest in LPS z) that make up the lung base.

    Raises:
        ValueError: a batch other than 1, a reference mask off the field's grid or empty, a bad
            ``base_fraction``, landmarks of different counts or outside the field's grid.
    """
    if deformation.batch_size != 1:
        raise ValueError(f"expected one deformation (batch 1), got batch {deformation.batch_size}")
    if not 0.0 < base_fraction <= 1.0:
        raise ValueError(f"base_fraction must be in (0, 1], got {base_fraction}")
    grid = deformation.grid
    lungs = _mask_array(reference_mask, grid, "reference lung mask")
    if not lungs.any():
        raise ValueError("the reference lung mask is empty")
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    field32 = deformation.detach().to("cpu", torch.float32)  # no copy of a float32 CPU field
    with torch.no_grad():
        det = _lung_jacobian(field32, lungs)
        u_in = field32.displacement[0][:, torch.as_tensor(lungs)].double().numpy()  # (3, P)
    magnitude = np.linalg.norm(u_in, axis=0)
    # LPS z (+ superior) of every lung voxel centre, from the grid's index -> LPS map
    k, j, i = (term[..., 2].to(torch.float32) for term in index_affine_terms(grid.index_to_world_matrix(), grid.size))
    heights = (k + j + i).numpy()[lungs]
    base = heights <= np.quantile(heights, base_fraction)
    row = PhaseMotion(
        index=int(index), phase=str(phase), reference=bool(reference),
        lung_volume_jacobian_ml=float(det.sum() * voxel_ml),
        lung_volume_mask_ml=None, lung_dice=None,
        displacement_mean_mm=float(magnitude.mean()),
        displacement_p95_mm=float(np.percentile(magnitude, 95)),
        displacement_max_mm=float(magnitude.max()),
        si_excursion_mm=float(u_in[2, base].mean()),
        folding_percent=100.0 * float((det <= 0).mean()),
        seconds=seconds,
    )
    if quality is not None:
        row.quality_ncc, row.quality_ok = float(quality.ncc), bool(quality.ok)
    if phase_mask is not None:
        pgrid = ImageGrid.from_sitk(phase_mask)
        own = sitk.GetArrayViewFromImage(phase_mask) != 0
        row.lung_volume_mask_ml = float(own.sum() * np.prod(pgrid.spacing) / 1000.0)
        row.lung_dice = _lung_dice(field32, lungs, own, pgrid)
    return landmark_motion(row, deformation, landmarks)


def landmark_motion(row: PhaseMotion, deformation: Deformation,
                    landmarks: tuple[np.ndarray, np.ndarray] | None) -> PhaseMotion:
    """Set ``row``'s landmark fields (count, TRE before and after, trajectory) from the phase's map,
    or clear them when ``landmarks`` is ``None``; returns ``row``. The rest of the row does not
    depend on landmarks, so a stored row gets new landmarks without registering again.

    Raises:
        ValueError: landmarks of different counts or outside the field's grid.
    """
    row.landmarks = row.tre_before_mm = row.tre_mean_mm = row.tre_p95_mm = row.trajectory = None
    if landmarks is not None:
        ref_points, phase_points = (np.asarray(p, dtype=float) for p in landmarks)
        before, after = tre(ref_points, phase_points), tre(ref_points, phase_points, deformation)
        mapped = map_points(deformation, ref_points)
        row.landmarks, row.tre_before_mm = int(after.n), float(before.mean)
        row.tre_mean_mm, row.tre_p95_mm = float(after.mean), float(after.p95)
        row.trajectory = {"true": phase_points.tolist(), "registered": mapped.tolist()}
    return row


def _lung_dice(field: Deformation, lungs: np.ndarray, phase_lungs: np.ndarray, phase_grid: ImageGrid) -> float:
    """Dice of the reference lungs and the phase's lungs pulled back through ``field`` (nearest
    neighbour), both sampled on the reference grid coarsened to voxels of at least
    :data:`DICE_SPACING_MM` (the automatic lung masks are made on a coarser grid still)."""
    grid = field.grid
    size = tuple(max(1, int(round(e / max(sp, DICE_SPACING_MM)))) for e, sp in zip(grid.extent, grid.spacing))
    coarse = grid.resized(size) if size != grid.size else grid
    ref = torch.as_tensor(lungs.astype(np.float32))[None, None]
    own = torch.as_tensor(phase_lungs.astype(np.float32))[None, None]
    a = Deformation.identity(coarse).warp_labels(ref, grid)[0, 0] > 0.5 if coarse is not grid else ref[0, 0] > 0.5
    b = field.on_grid(coarse).warp_labels(own, phase_grid)[0, 0] > 0.5
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def _lung_jacobian(field: Deformation, lungs: np.ndarray) -> np.ndarray:
    """``det(dy/dx)`` at the lung voxels (``lungs`` ``(D, H, W)``, in ``np.argwhere`` order), float64.

    Computed on the lungs' bounding box grown by one voxel (the neighbours of its central
    differences, where the grid has them): the same values as over the whole grid, for less work.
    """
    hits = np.argwhere(lungs)
    lo = np.maximum(hits.min(axis=0) - 1, 0)
    hi = np.minimum(hits.max(axis=0) + 2, lungs.shape)
    box = field.grid.cropped(zyx_to_xyz(lo), zyx_to_xyz(hi))
    u = field.displacement[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    det = jacobian_determinant(u, box)[0, 0].numpy()
    return det[lungs[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]].astype(np.float64)


def _departures(values: np.ndarray, cyclic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each value's departure from its neighbours, and whether it is the centre of a jump.

    Inner phases (and every phase of a cycle, the first following the last) depart from the mean
    of their two neighbours; the end phases of an open series from their one neighbour. A jump of
    ``J`` at one phase shows as ``J`` there, as ``J / 2`` at an inner neighbour and as ``J`` at an
    end neighbour (measured against it alone): a phase is the centre when it departs at least as
    much as its neighbours show, strictly more where an end phase is involved (a tie there is the
    other phase's jump).
    """
    if cyclic:
        departures = values - 0.5 * (np.roll(values, 1) + np.roll(values, -1))
        size = np.abs(departures)
        return departures, size >= np.maximum(np.roll(size, 1), np.roll(size, -1))
    n = len(values)
    departures = np.empty(n)
    departures[1:-1] = values[1:-1] - 0.5 * (values[:-2] + values[2:])
    departures[0], departures[-1] = values[0] - values[1], values[-1] - values[-2]
    size = np.abs(departures)
    shown = size.copy()
    shown[[0, -1]] /= 2.0  # what an inner neighbour's jump would show at the ends, on the inner scale
    centre = np.zeros(n, dtype=bool)
    centre[0], centre[-1] = size[0] > size[1], size[-1] > size[-2]
    for k in range(1, n - 1):
        left = size[k] > shown[k - 1] if k - 1 == 0 else size[k] >= size[k - 1]
        right = size[k] > shown[k + 1] if k + 1 == n - 1 else size[k] >= size[k + 1]
        centre[k] = left and right
    return departures, centre


def is_cycle(volumes: Sequence[float]) -> bool:
    """Whether a lung volume curve (in phase order) looks like one whole breathing cycle: its first
    and last values differ by at most :data:`CYCLE_GAP` of its range (the last phase then leads
    back to the first). Half a cycle (DIR-LAB's T00..T50, inhale to exhale) is not one."""
    values = np.asarray(volumes, dtype=float)
    span = float(values.max() - values.min()) if values.size else 0.0
    return span == 0.0 or abs(float(values[-1] - values[0])) <= CYCLE_GAP * span


def flag_phases(rows: Sequence[PhaseMotion], cyclic: bool | None = None) -> dict[str, str]:
    """``{phase: reason}`` for the phases that look failed.

    A phase is flagged when its registration's quality check failed, when its lung Dice is below
    :data:`DICE_FLAG`, or when its Jacobian lung volume or its lung base excursion jumps away
    from its neighbours': by more than :data:`JUMP_FACTOR` times the median such departure of the
    other phases (those further than one phase from it, which its jump does not move), and by more than :data:`VOLUME_JUMP_FLOOR` of the reference lung volume or
    :data:`EXCURSION_JUMP_FLOOR_MM`, and by more than either neighbour shows it (a jump at one
    phase makes its neighbours depart too). Jumps are judged from 4 phases on, and not for the
    reference phase (its map is the identity by construction).

    ``cyclic``: whether the phases (in ``rows`` order) form one breathing cycle, the first phase
    following the last; default :func:`is_cycle` of the Jacobian lung volumes. In a cycle every
    phase is judged against the mean of its two neighbours; otherwise the first and the last phase
    are judged against their one neighbour.
    """
    reasons: dict[str, list[str]] = {r.phase: [] for r in rows}
    for r in rows:
        if r.quality_ok is False:
            reasons[r.phase].append(f"quality check failed (lung NCC {r.quality_ncc:.2f})")
        if r.lung_dice is not None and r.lung_dice < DICE_FLAG:
            reasons[r.phase].append(f"lung Dice {r.lung_dice:.2f} < {DICE_FLAG:.2f}")
    if len(rows) >= 4:
        ref = [r for r in rows if r.reference]
        ref_volume = ref[0].lung_volume_jacobian_ml if ref else float(np.median([r.lung_volume_jacobian_ml for r in rows]))
        volumes = np.array([r.lung_volume_jacobian_ml for r in rows])
        loop = is_cycle(volumes) if cyclic is None else bool(cyclic)
        curves = (("lung volume", volumes, VOLUME_JUMP_FLOOR * ref_volume, "ml"),
                  ("lung base excursion", np.array([r.si_excursion_mm for r in rows]), EXCURSION_JUMP_FLOOR_MM, "mm"))
        for what, values, floor, unit in curves:
            departures, centre = _departures(values, loop)
            size = np.abs(departures)
            for k, (r, d) in enumerate(zip(rows, departures)):
                # the series' usual departure, away from this phase and the neighbours its jump moves
                gap = np.abs(np.arange(len(rows)) - k)
                away = np.minimum(gap, len(rows) - gap) > 1 if loop else gap > 1
                limit = max(JUMP_FACTOR * float(np.median(size[away])), floor)
                if abs(d) > limit and centre[k] and not r.reference:
                    against = "its neighbour" if not loop and k in (0, len(rows) - 1) else "its neighbours' mean"
                    reasons[r.phase].append(f"{what} jumps by {d:+.1f} {unit} from {against}")
    return {phase: "; ".join(text) for phase, text in reasons.items() if text}


@dataclass
class SeriesSummary:
    """The series: its rows (flags set), the end-inhale / end-exhale phases and the flagged ones."""

    rows: list[PhaseMotion]
    reference: str
    end_inhale: str
    end_exhale: str
    flagged: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "end_inhale": self.end_inhale, "end_exhale": self.end_exhale,
                "flagged": self.flagged, "direction": "reference -> phase (x_phase = x_reference + u)",
                "phases": [r.to_dict() for r in self.rows]}


def summarize_series(rows: Sequence[PhaseMotion]) -> SeriesSummary:
    """Sort ``rows`` by index, flag them (:func:`flag_phases`) and find end-inhale and end-exhale
    (the largest and the smallest Jacobian lung volume among the phases not flagged).

    Raises:
        ValueError: no rows, or not exactly one reference row.
    """
    ordered = sorted(rows, key=lambda r: r.index)
    if not ordered:
        raise ValueError("no phases to summarise")
    refs = [r.phase for r in ordered if r.reference]
    if len(refs) != 1:
        raise ValueError(f"expected exactly one reference phase, got {len(refs)}")
    flags = flag_phases(ordered)
    for r in ordered:
        r.flagged, r.flag_reason = r.phase in flags, flags.get(r.phase)
    trusted = [r for r in ordered if not r.flagged] or ordered
    volumes = [r.lung_volume_jacobian_ml for r in trusted]
    return SeriesSummary(ordered, refs[0], trusted[int(np.argmax(volumes))].phase,
                         trusted[int(np.argmin(volumes))].phase, flags)


def motion_plot(summary: SeriesSummary, path: PathLike, title: str = "", dpi: int = 100) -> Path:
    """Draw the motion summary against phase and write it (format from the suffix).

    Panels: the breathing curve (Jacobian lung volume, the phase masks' volume, and on a second
    axis the lung base excursion), with the end-inhale and end-exhale phases marked; the
    displacement in the lungs (mean, p95, max); with landmarks, the TRE per phase and the
    landmark trajectories (superior-inferior position against phase: the true points and the
    registered reference points). Flagged phases are shaded red and marked "flagged"; the
    reference phase's label says "(ref)". Legends sit right of the panels.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from .plots import _matplotlib, _save

    figure_cls, _, _ = _matplotlib()
    rows = summary.rows
    x = np.arange(len(rows))
    labels = [r.phase + ("\n(ref)" if r.reference else "") for r in rows]
    has_landmarks = any(r.tre_mean_mm is not None for r in rows)
    n_panels = 4 if has_landmarks else 2
    fig = figure_cls(figsize=(max(8.0, 0.55 * len(rows) + 5.0), 2.9 * n_panels + 0.6), dpi=dpi)
    fig.subplots_adjust(left=0.09, right=0.70, top=1.0 - 0.55 / (2.9 * n_panels + 0.6), bottom=0.06, hspace=0.45)
    axes = [fig.add_subplot(n_panels, 1, k + 1) for k in range(n_panels)]
    marks = {summary.end_inhale: "end-inhale", summary.end_exhale: "end-exhale"}
    for ax in axes:
        top = ax.get_xaxis_transform()  # x in data, y in axes fractions
        for i, r in enumerate(rows):
            if r.flagged:
                ax.axvspan(i - 0.45, i + 0.45, color="#e53935", alpha=0.15, lw=0)
                ax.text(i, 0.97, "flagged", transform=top, ha="center", va="top", fontsize=7, color="#c62828")
            if r.phase in marks:
                ax.axvline(i, color="#555555", ls=":", lw=1)
                ax.text(i, 1.01, marks[r.phase], transform=top, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.grid(alpha=0.3)
    outside = {"loc": "upper left", "fontsize": 8, "frameon": False}
    ax = axes[0]
    ax.plot(x, [r.lung_volume_jacobian_ml for r in rows], "o-", color="#2b7bba", label="lung volume (Jacobian)")
    masks = [r.lung_volume_mask_ml for r in rows]
    if any(v is not None for v in masks):
        ax.plot(x, [np.nan if v is None else v for v in masks], "s--", color="#9e9e9e", ms=4,
                label="lung volume (phase's mask)")
    ax.set_ylabel("lung volume (ml)")
    twin = ax.twinx()
    twin.plot(x, [r.si_excursion_mm for r in rows], "^-", color="#e6862b", label="lung base SI excursion\n(mm, + = superior)")
    twin.set_ylabel("lung base SI (mm)", color="#e6862b")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, bbox_to_anchor=(1.12, 1.0), **outside)
    fig.suptitle(title or f"breathing motion, every phase registered to {summary.reference}", fontsize=11)
    ax = axes[1]
    for key, style, label in (("displacement_mean_mm", "o-", "mean"), ("displacement_p95_mm", "s-", "p95"),
                              ("displacement_max_mm", "^-", "max")):
        ax.plot(x, [getattr(r, key) for r in rows], style, ms=4, label=f"|u| {label}")
    ax.set_ylabel("displacement in\nthe lungs (mm)")
    ax.set_ylim(bottom=0.0)
    ax.legend(bbox_to_anchor=(1.02, 1.0), **outside)
    if has_landmarks:
        ax = axes[2]
        ax.plot(x, [np.nan if r.tre_before_mm is None else r.tre_before_mm for r in rows], "o-", color="#9e9e9e",
                label="before (no motion)")
        ax.plot(x, [np.nan if r.tre_mean_mm is None else r.tre_mean_mm for r in rows], "o-", color="#2b7bba",
                label="registered, mean")
        ax.plot(x, [np.nan if r.tre_p95_mm is None else r.tre_p95_mm for r in rows], "s--", color="#2b7bba", ms=4,
                label="registered, p95")
        ax.set_ylabel("TRE (mm)")
        ax.set_ylim(bottom=0.0)
        ax.legend(bbox_to_anchor=(1.02, 1.0), **outside)
        _trajectories(axes[3], rows, x, outside)
    return _save(fig, path)


def _trajectories(ax, rows: Sequence[PhaseMotion], x: np.ndarray, legend: dict[str, Any]) -> None:
    """SI (LPS z) of each landmark against phase: true (grey) and registered (blue, dashed)."""
    true = [np.asarray(r.trajectory["true"]) if r.trajectory else None for r in rows]
    reg = [np.asarray(r.trajectory["registered"]) if r.trajectory else None for r in rows]
    counts = {len(t) for t in true if t is not None}
    if len(counts) != 1:
        ax.text(0.5, 0.5, "landmark counts differ between phases", transform=ax.transAxes, ha="center")
        return
    n = counts.pop()
    for p in range(min(n, 40)):
        zt = [np.nan if t is None else t[p, 2] for t in true]
        zr = [np.nan if t is None else t[p, 2] for t in reg]
        ax.plot(x, zt, "-", color="#9e9e9e", lw=0.8, label="phase's landmarks" if p == 0 else None)
        ax.plot(x, zr, "--", color="#2b7bba", lw=0.8, label="reference landmarks,\nregistered" if p == 0 else None)
    ax.set_ylabel("landmark SI\nposition (mm)")
    ax.legend(bbox_to_anchor=(1.02, 1.0), **legend)

