"""Automatic lung masks for chest CT by classical image processing (SimpleITK and numpy only).

No model and no download: the mask comes from a Hounsfield threshold and a few connectivity and
morphology steps, in the spirit of the classical pipeline of Hu, Hoffman and Reinhardt (IEEE TMI
2001). It is meant for what registration needs (a lung region for the loss, the evaluation and
the display), not for clinical volumetry.

Steps of :func:`segment_lungs` (all radii and areas are given in mm and converted per index axis
with the voxel spacing, so anisotropic and oblique images are handled in index space; "axial"
slices are those across the index axis closest to LPS z):

1. Work on a grid averaged down to about ``working_spacing_mm`` (integer bin factors per axis),
   which both speeds things up and lowers the noise of thin-slice, sharp-kernel scans.
2. Air = voxels below ``air_threshold_hu``; split into 3-D connected components.
3. Inside the body: a large component is inside when it does not touch the image border, or
   when most of it (``min_enclosed_fraction``) has body tissue (the largest tissue component)
   on both sides along a right-left or anterior-posterior line of its slice. A lung cut by the
   field of view still has chest wall in front and behind, air around the body does not; so
   only air outside the body is dropped, not everything that touches the border. A crop that
   lies entirely inside the thorax has no such component; then border-touching components with
   a lung-like median (at least ``outside_air_max_median_hu``) are taken.
4. Lungs: components are ranked by their core volume (deeper than ``core_depth_mm``, so thin air
   layers under the back or in a table pad never pass); the largest is kept, and the second if
   its core is at least ``second_lung_min_fraction`` of the first (when the trachea is in the
   image both lungs are usually one component, joined through the airways).
5. Airways: the trachea is found in the top ``trachea_search_mm`` of the lungs (a small, dark,
   medial blob of an axial slice) and grown in 3-D with a threshold rising in steps from the
   seed's value up to ``airway_threshold_hu``, stopping before the step where the region leaks
   into the lung. The airways, the seed's cross-section and a margin are removed, and the small
   fragments left over (the trachea above the seed) are dropped.
6. Holes (vessels, the removed intrapulmonary bronchi) are filled slice by slice (holes up to
   ``max_hole_area_mm2``), the mask is closed with a Euclidean ball of ``closing_radius_mm``,
   and enclosed 3-D cavities are filled.
7. The working-grid mask is interpolated back to the input grid (linear, threshold 0.5).

:func:`MLVIRNETLib.preprocessing.lung_labels.split_left_right` labels the right lung 1 and the
left lung 2 (LPS ``+x`` points to the patient's left).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid, array_slices, index_axis_to_array_axis, xyz_to_zyx, zyx_to_xyz
from ..core.progress import ProgressFn
from .morphology import (
    MAX_ABS_HU,
    _binary,
    _border_labels,
    bounding_box,
    _components,
    depth_mm,
    dilate,
    erode,
    _image,
    _radius_vox,
    grid_spacing_zyx,
    robust_range,
)

_MIN_LEAK_ML = 20.0
"""Airway regions below this volume are never called a leak (the trachea alone is larger)."""

_LOWEST_AIRWAY_START_HU = -1500.0
"""The airway threshold starts at the seed's value, but never below this (air is about -1000 HU;
a darker seed means values that are not HU, and the rising threshold would need endless steps)."""

_FLOAT32_LOWEST = float(np.finfo(np.float32).min)

_MAX_AIRWAY_STEPS = 200
"""Most threshold steps of the airway growing (the step grows when the range would need more)."""


@dataclass(frozen=True)
class LungMaskOptions:
    """Parameters of :func:`segment_lungs`. HU are Hounsfield units, volumes ml, lengths mm.

    Attributes:
        air_threshold_hu: voxels below this are air or lung.
        min_enclosed_fraction: a border-touching air component is inside the body when at least
            this fraction of it has body tissue on both sides along an in-slice line.
        outside_air_max_median_hu: fallback for crops entirely inside the thorax (no air
            component enclosed by the body): border-touching components with a median of at
            least this are taken as lung.
        min_lung_volume_ml: smallest component accepted as a lung, counting only its core.
        core_depth_mm: the core of an air component is its part deeper than this below its
            surface; components are ranked by core volume, so thin air layers never pass.
        second_lung_min_fraction: a second component is kept as the other lung when its volume is
            at least this fraction of the largest one (keeps stomach gas out).
        remove_airways: remove the trachea and main bronchi.
        airway_threshold_hu: highest threshold for growing the airways from the trachea; the
            growing starts just above the seed's value and the threshold rises in steps of
            ``airway_threshold_step_hu`` until the region leaks into the lung.
        max_airway_volume_ml: a grown airway larger than this is a leak.
        airway_threshold_step_hu: step of the rising threshold.
        airway_leak_factor: a region this many times larger than at the previous step is a leak.
        airway_margin_mm: the removed airway is dilated by this, and at least by two in-plane
            voxels (its wall's partial volume).
        trachea_search_mm: how far below the top of the lungs the trachea is looked for.
        max_trachea_area_mm2: largest cross-section accepted as the trachea.
        fill_holes: fill vessels (holes in axial slices) and enclosed 3-D cavities.
        max_hole_area_mm2: largest in-slice hole that is filled (keeps the mediastinum out when
            the lungs touch in front and behind it).
        closing_radius_mm: radius of the final morphological closing (0 switches it off).
        working_spacing_mm: finer axes are averaged down to about this spacing before the work
            (None works on the input grid).
    """

    air_threshold_hu: float = -320.0
    outside_air_max_median_hu: float = -960.0
    min_lung_volume_ml: float = 30.0
    core_depth_mm: float = 5.0
    min_enclosed_fraction: float = 0.5
    second_lung_min_fraction: float = 0.1
    remove_airways: bool = True
    airway_threshold_hu: float = -900.0
    max_airway_volume_ml: float = 150.0
    airway_threshold_step_hu: float = 20.0
    airway_leak_factor: float = 2.5
    airway_margin_mm: float = 2.0
    trachea_search_mm: float = 40.0
    max_trachea_area_mm2: float = 700.0
    fill_holes: bool = True
    max_hole_area_mm2: float = 1500.0
    closing_radius_mm: float = 3.0
    working_spacing_mm: float | None = 1.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or value is None:
                continue
            if not np.isfinite(value):
                raise ValueError(f"LungMaskOptions.{f.name} must be finite, got {value}")
        positive = ["min_lung_volume_ml", "max_airway_volume_ml", "airway_threshold_step_hu",
                    "trachea_search_mm", "max_trachea_area_mm2", "max_hole_area_mm2"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"LungMaskOptions.{name} must be > 0, got {getattr(self, name)}")
        for name in ("airway_margin_mm", "closing_radius_mm", "core_depth_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"LungMaskOptions.{name} must be >= 0, got {getattr(self, name)}")
        if self.airway_leak_factor <= 1.0:
            raise ValueError(f"LungMaskOptions.airway_leak_factor must be > 1, got {self.airway_leak_factor}")
        if not 0.0 < self.min_enclosed_fraction <= 1.0:
            raise ValueError(
                f"LungMaskOptions.min_enclosed_fraction must be in (0, 1], got {self.min_enclosed_fraction}")
        if not 0.0 < self.second_lung_min_fraction <= 1.0:
            raise ValueError(
                f"LungMaskOptions.second_lung_min_fraction must be in (0, 1], got {self.second_lung_min_fraction}")
        if self.working_spacing_mm is not None and self.working_spacing_mm <= 0:
            raise ValueError(f"LungMaskOptions.working_spacing_mm must be > 0 or None, got {self.working_spacing_mm}")
        if not -1000.0 < self.air_threshold_hu < 0.0:
            raise ValueError(f"LungMaskOptions.air_threshold_hu must be in (-1000, 0) HU, got {self.air_threshold_hu}")
        if self.airway_threshold_hu >= self.air_threshold_hu:
            raise ValueError(
                f"LungMaskOptions.airway_threshold_hu ({self.airway_threshold_hu}) must be below "
                f"air_threshold_hu ({self.air_threshold_hu})"
            )


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def segment_lungs(
    image: sitk.Image, options: LungMaskOptions | None = None, progress: ProgressFn | None = None
) -> sitk.Image:
    """Lung mask of a chest CT.

    Args:
        image: 3-D CT in Hounsfield units (any integer or float pixel type, any spacing, origin
            and direction). The input is not modified.
        options: parameters; defaults to ``LungMaskOptions()``.
        progress: ``progress(fraction, message)`` between the steps (it may raise to stop).

    Returns:
        ``uint8`` image on the grid of ``image`` (same size, spacing, origin, direction):
        1 = lung, 0 = everything else.

    Raises:
        ValueError: not a 3-D scalar image, values that are not HU (e.g. HU + 1024, or values
            far beyond any HU value such as a CT multiplied by 1e30), or no lung found.
    """
    return segment_lungs_with_info(image, options, progress)[0]


def segment_lungs_with_info(
    image: sitk.Image, options: LungMaskOptions | None = None, progress: ProgressFn | None = None
) -> tuple[sitk.Image, dict]:
    """:func:`segment_lungs` plus a dictionary of diagnostics.

    Keys: ``working_size`` (x, y, z voxels of the working grid), ``lung_rule`` (how the lungs
    were told from air outside the body), ``lung_components`` (1 or 2 air components kept),
    ``trachea_found`` (bool) and, when found, ``trachea_seed_lps`` (mm), ``airway_threshold_hu``,
    ``airway_volume_ml`` and ``airway_growth_ml`` (threshold, volume) per growing step.
    """
    opts = options if options is not None else LungMaskOptions()
    report = progress if progress is not None else _no_progress
    info: dict = {}
    hu = _validated_hu(image, opts)
    report(0.1, "lung mask: working grid")
    work, padded_size = _working_image(hu, opts.working_spacing_mm)
    info["working_size"] = tuple(work.GetSize())
    mask = _segment_on_grid(work, opts, info, report)
    report(0.9, "lung mask: back to the image grid")
    out = _back_to_input_grid(mask, work, hu, padded_size)
    report(1.0, "lung mask done")
    if not sitk.GetArrayViewFromImage(out).any():
        raise ValueError("no lung found: the lung mask vanished when mapped back to the input grid")
    return out, info


# ----------------------------------------------------------------------------------------------
# Input checks and working grid
# ----------------------------------------------------------------------------------------------
def _validated_hu(image: sitk.Image, opts: LungMaskOptions) -> sitk.Image:
    """``image`` as float32 after checking that it is a 3-D CT in HU."""
    if not isinstance(image, sitk.Image):
        raise ValueError(f"expected a SimpleITK.Image, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D CT image, got a {image.GetDimension()}-D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected a scalar CT image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    ImageGrid.from_sitk(image)  # validates spacing and direction
    hu = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(hu)
    if not np.isfinite(arr).all():
        raise ValueError("the CT image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    p_lo, p_hi = robust_range(hu)
    if max(abs(p_lo), abs(p_hi)) > MAX_ABS_HU:
        raise ValueError(
            f"the image does not look like CT in Hounsfield units: its values are {p_lo:.4g}..{p_hi:.4g} "
            f"(1st-99th percentile), far beyond any HU value (|HU| <= {MAX_ABS_HU:g}; air is about -1000 HU, "
            "soft tissue 0..100 HU)"
        )
    if lo >= 0.0:
        raise ValueError(
            f"the image does not look like CT in Hounsfield units: its minimum is {lo:g} (>= 0). "
            f"If it stores HU + 1024 (as DIR-LAB raw files do), subtract 1024 first."
        )
    if hi <= opts.air_threshold_hu:
        raise ValueError(
            f"the image does not look like CT in Hounsfield units: every voxel is below "
            f"{opts.air_threshold_hu:g} HU (range {lo:g} .. {hi:g}), there is no tissue"
        )
    if lo >= opts.air_threshold_hu:
        raise ValueError(
            f"no air or lung in the image: every voxel is at or above {opts.air_threshold_hu:g} HU "
            f"(range {lo:g} .. {hi:g})"
        )
    return hu


def _working_image(hu: sitk.Image, working_spacing_mm: float | None) -> tuple[sitk.Image, tuple[int, int, int]]:
    """Average ``hu`` down by integer factors to about ``working_spacing_mm``.

    Returns the working image and the size of the edge-padded input it was averaged from (the
    input is padded by repeating its last slices so that every factor divides the size).
    """
    size = np.asarray(hu.GetSize())
    if working_spacing_mm is None:
        return hu, tuple(int(s) for s in size)
    factors = np.maximum(1, np.floor(working_spacing_mm / np.asarray(hu.GetSpacing()) + 1e-6)).astype(int)
    factors = np.minimum(factors, size)
    if np.all(factors == 1):
        return hu, tuple(int(s) for s in size)
    pad = (-size) % factors
    padded = sitk.ZeroFluxNeumannPad(hu, [0, 0, 0], [int(p) for p in pad]) if pad.any() else hu
    return sitk.BinShrink(padded, [int(f) for f in factors]), tuple(int(s) for s in padded.GetSize())


def _back_to_input_grid(mask: np.ndarray, work: sitk.Image, hu: sitk.Image,
                        padded_size: tuple[int, int, int]) -> sitk.Image:
    """Working-grid boolean mask ``(D, H, W)`` -> uint8 image on the grid of ``hu``."""
    if not mask.any():
        raise ValueError("no lung found: the lung mask is empty")
    if tuple(work.GetSize()) == tuple(hu.GetSize()):
        out = sitk.GetImageFromArray(mask.astype(np.uint8))
        out.CopyInformation(hu)
        return out
    # interpolate only over the bounding box of the mask (plus one working voxel); the working
    # grid covers the padded input exactly, so every input voxel lies inside it
    factors = np.asarray(padded_size) // np.asarray(work.GetSize())  # (x, y, z)
    box = bounding_box(mask, [1, 1, 1])
    m = sitk.GetImageFromArray(mask[box].astype(np.float32))
    m.SetSpacing(work.GetSpacing())
    m.SetDirection(work.GetDirection())
    box_xyz = zyx_to_xyz(box)
    m.SetOrigin(work.TransformIndexToPhysicalPoint([b.start for b in box_xyz]))
    start = np.array([b.start for b in box_xyz]) * factors
    stop = np.minimum(np.array([b.stop for b in box_xyz]) * factors, hu.GetSize())
    reference = sitk.Image([int(s) for s in stop - start], sitk.sitkFloat32)
    reference.SetSpacing(hu.GetSpacing())
    reference.SetDirection(hu.GetDirection())
    reference.SetOrigin(hu.TransformIndexToPhysicalPoint([int(s) for s in start]))
    up = sitk.Resample(m, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    full = np.zeros(xyz_to_zyx(hu.GetSize()), dtype=np.uint8)
    full[array_slices(start, stop)] = sitk.GetArrayViewFromImage(up) >= 0.5
    out = sitk.GetImageFromArray(full)
    out.CopyInformation(hu)
    return out


# ----------------------------------------------------------------------------------------------
# The pipeline on the working grid
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnatomicalAxes:
    """Array axes (of a ``(D, H, W)`` array) that run head-foot and right-left."""

    si: int
    superior_first: bool
    lr: int


def anatomical_axes(grid: ImageGrid) -> AnatomicalAxes:
    """Which array axis is closest to the LPS z (and x) axis, and which end is superior."""
    d = grid.direction_matrix  # columns = index axes x, y, z in LPS
    si_index = int(np.argmax(np.abs(d[2])))
    lr_candidates = [i for i in range(3) if i != si_index]
    lr_index = max(lr_candidates, key=lambda i: abs(d[0, i]))
    return AnatomicalAxes(si=index_axis_to_array_axis(si_index), superior_first=bool(d[2, si_index] < 0),
                 lr=index_axis_to_array_axis(lr_index))


def _no_progress(fraction: float, message: str) -> None:
    """The ``progress`` of a caller that wants none."""


def _segment_on_grid(work: sitk.Image, opts: LungMaskOptions, info: dict, report: ProgressFn) -> np.ndarray:
    """Boolean lung mask ``(D, H, W)`` on the working grid; ``info`` collects diagnostics."""
    grid = ImageGrid.from_sitk(work)
    spacing = grid_spacing_zyx(grid)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    hu_full = sitk.GetArrayFromImage(work)
    axes = anatomical_axes(grid)

    report(0.2, "lung mask: air components")
    lungs_full = _select_lungs(hu_full, hu_full < opts.air_threshold_hu, axes, spacing, voxel_ml, opts, info)
    report(0.4, "lung mask: airways")
    # the rest works on the bounding box of the lungs plus a margin for the closing
    margin = xyz_to_zyx(_radius_vox(opts.closing_radius_mm, spacing))
    box = bounding_box(lungs_full, [m + 2 for m in margin])
    hu, lungs = hu_full[box], lungs_full[box]

    info["trachea_found"] = False
    if opts.remove_airways:
        airway = _grow_airways(hu, lungs, axes, spacing, voxel_ml, opts, info)
        if "trachea_seed_zyx" in info:
            seed = np.asarray(info.pop("trachea_seed_zyx")) + [b.start for b in box]
            info["trachea_seed_lps"] = tuple(float(v) for v in grid.array_index_to_world(seed))
        if airway is not None:
            # at least two in-plane voxels: the partial-volume wall would otherwise keep the
            # trachea above the seed attached to the lungs
            in_plane = max(float(spacing[a]) for a in range(3) if a != axes.si)
            airway = dilate(airway, max(opts.airway_margin_mm, 2.0 * in_plane), spacing)
            lungs = _largest_parts(lungs & ~airway, voxel_ml, opts)
    report(0.6, "lung mask: holes and closing")
    if opts.fill_holes:
        lungs = _fill_slice_holes(lungs, axes.si, spacing, opts.max_hole_area_mm2)
    report(0.7, "lung mask: closing")
    if opts.closing_radius_mm > 0:
        lungs = erode(dilate(lungs, opts.closing_radius_mm, spacing), opts.closing_radius_mm, spacing)
    if opts.fill_holes:
        lungs = _binary(sitk.BinaryFillhole(_image(lungs, spacing), False, 1))
    out = np.zeros(hu_full.shape, dtype=bool)
    out[box] = lungs
    return out


def _select_lungs(hu: np.ndarray, air: np.ndarray, axes: AnatomicalAxes, spacing: np.ndarray, voxel_ml: float,
                  opts: LungMaskOptions, info: dict) -> np.ndarray:
    """The lung component(s) of the air mask ``(D, H, W)``, air outside the body excluded.

    A large air component is inside the body when it does not touch the image border, or when
    at least ``min_enclosed_fraction`` of its voxels have body tissue on both sides along a
    right-left or an anterior-posterior line of their axial slice (the body is the largest
    connected tissue component). A lung cut by the field of view still has chest wall in front
    of and behind it, air around the body does not. Only when no component qualifies (a crop
    that lies entirely inside the thorax) are border-touching components with a lung-like median
    (at least ``outside_air_max_median_hu``) taken instead.

    The inside components are ranked by their *core* volume, the part deeper than
    ``core_depth_mm``, so that thin air layers (under the back, in a table pad) never pass for
    a lung however long they are.
    """
    labels, counts = _components(air, spacing)
    touching = _border_labels(labels)
    big = [int(label) for label in np.nonzero(counts * voxel_ml >= opts.min_lung_volume_ml)[0] if label != 0]
    enclosed = _enclosed_by_body(~air, axes, spacing)
    inside = [label for label in big
              if label not in touching or float(enclosed[labels == label].mean()) >= opts.min_enclosed_fraction]
    info["lung_rule"] = "enclosed by the body"
    if not inside:
        inside = [label for label in big
                  if float(np.median(hu[labels == label])) >= opts.outside_air_max_median_hu]
        info["lung_rule"] = "lung-like median (no air enclosed by the body)"
    core_counts = np.zeros_like(counts)
    if inside:
        candidates = np.isin(labels, inside)
        box = bounding_box(candidates, [1, 1, 1])
        core = depth_mm(candidates[box], spacing) >= opts.core_depth_mm
        core_counts = np.bincount(labels[box][core], minlength=counts.size)
    ranked = sorted(((int(core_counts[label]), label) for label in inside), reverse=True)
    ranked = [(c, label) for c, label in ranked if c * voxel_ml >= opts.min_lung_volume_ml]
    if not ranked:
        largest = float(counts[1:].max()) * voxel_ml if counts.size > 1 else 0.0
        raise ValueError(
            f"no lung found: no air component below {opts.air_threshold_hu:g} HU inside the body has "
            f"{opts.min_lung_volume_ml:g} ml deeper than {opts.core_depth_mm:g} mm ({len(big)} large air "
            f"component(s), the largest {largest:.1f} ml, all outside the body or too thin)"
        )
    keep = [ranked[0][1]]
    if len(ranked) > 1 and ranked[1][0] >= opts.second_lung_min_fraction * ranked[0][0]:
        keep.append(ranked[1][1])
    info["lung_components"] = len(keep)
    return np.isin(labels, keep)


def _enclosed_by_body(tissue: np.ndarray, axes: AnatomicalAxes, spacing: np.ndarray) -> np.ndarray:
    """Voxels with body tissue on both sides along a line of their axial slice, ``(D, H, W)`` bool.

    The body is the largest face-connected component of ``tissue``; the lines run along the two
    array axes other than the head-foot one.
    """
    labels, counts = _components(tissue, spacing)
    if counts.size < 2:
        return np.zeros(tissue.shape, dtype=bool)
    counts[0] = 0
    body = labels == int(np.argmax(counts))
    enclosed = np.zeros(tissue.shape, dtype=bool)
    for axis in (a for a in range(3) if a != axes.si):
        # body somewhere before / after the voxel along the line (the flips accumulate from the far end)
        before = np.logical_or.accumulate(body, axis=axis)
        after = np.flip(np.logical_or.accumulate(np.flip(body, axis=axis), axis=axis), axis=axis)
        enclosed |= before & after
    return enclosed


def _largest_parts(mask: np.ndarray, voxel_ml: float, opts: LungMaskOptions) -> np.ndarray:
    """Components of ``mask`` of at least ``min_lung_volume_ml`` and ``second_lung_min_fraction``
    of the largest one (all such parts: a lung may be in pieces once the airways are gone)."""
    labels, counts = _components(mask, None)
    if counts.size <= 1:
        raise ValueError("no lung found: nothing was left after removing the airways")
    big = counts[1:].max()
    keep = np.nonzero((counts >= opts.second_lung_min_fraction * big)
                      & (counts * voxel_ml >= opts.min_lung_volume_ml))[0]
    keep = keep[keep != 0]
    if keep.size == 0:
        raise ValueError(f"no lung found: the largest part left after removing the airways has "
                         f"{big * voxel_ml:.1f} ml (< {opts.min_lung_volume_ml:g} ml)")
    return np.isin(labels, keep)


def _grow_airways(hu: np.ndarray, lungs: np.ndarray, axes: AnatomicalAxes, spacing: np.ndarray, voxel_ml: float,
                  opts: LungMaskOptions, info: dict) -> np.ndarray | None:
    """Trachea and large airways (boolean ``(D, H, W)``) grown from the trachea; None if not found.

    The region is grown inside ``lungs`` below a threshold that starts just above the seed's
    value and rises in steps of ``airway_threshold_step_hu`` up to ``airway_threshold_hu``. The
    last region before a leak is returned; a leak is a region above ``max_airway_volume_ml`` or
    one more than ``airway_leak_factor`` times the previous one (and above 20 ml, since the
    first steps legitimately grow from a few voxels to the whole trachea).

    The loop is bounded whatever the values: the start is never below ``_LOWEST_AIRWAY_START_HU``
    and there are at most ``_MAX_AIRWAY_STEPS`` steps (the step grows if the range needs more).
    """
    found = _find_trachea(hu, lungs, axes, spacing, opts)
    if found is None:
        return None
    seed, blob = found
    info["trachea_seed_zyx"] = seed
    seed_hu = float(hu[seed])
    if not np.isfinite(seed_hu):
        return None
    image = _image(np.where(lungs, hu, np.float32(1000.0)).astype(np.float32), spacing)
    seed_xyz = [int(v) for v in zyx_to_xyz(seed)]
    # bounded: the start is clipped to a plausible HU value and the step grows when the range
    # would need more than _MAX_AIRWAY_STEPS steps (neither happens for a CT in HU)
    start = max(seed_hu, _LOWEST_AIRWAY_START_HU)
    step = max(opts.airway_threshold_step_hu, (opts.airway_threshold_hu - start) / _MAX_AIRWAY_STEPS)
    accepted: np.ndarray | None = None
    previous_ml = 0.0
    volumes = []
    threshold = start + step
    for _ in range(_MAX_AIRWAY_STEPS + 1):
        if threshold > opts.airway_threshold_hu + 1e-6:
            break
        grown = _binary(sitk.ConnectedThreshold(image, seedList=[seed_xyz], lower=_FLOAT32_LOWEST, upper=threshold))
        volume = float(grown.sum()) * voxel_ml
        volumes.append((threshold, round(volume, 2)))
        leak = volume > opts.max_airway_volume_ml or (
            volume > _MIN_LEAK_ML and volume > opts.airway_leak_factor * previous_ml)
        if leak:
            break
        accepted, previous_ml = grown, volume
        info.update(trachea_found=True, airway_threshold_hu=threshold, airway_volume_ml=volume)
        threshold += step
    info["airway_growth_ml"] = volumes
    # the whole cross-section at the seed slice goes too: it cuts off the trachea above the seed,
    # whose lumen may be too bright (partial volume) to be grown
    return None if accepted is None else accepted | blob


def _find_trachea(hu: np.ndarray, lungs: np.ndarray, axes: AnatomicalAxes, spacing: np.ndarray,
                  opts: LungMaskOptions) -> tuple[tuple[int, int, int], np.ndarray] | None:
    """The trachea's top cross-section: index ``(z, y, x)`` of its darkest voxel and its mask.

    The trachea is a 2-D component of an axial slice of the lung mask that is small
    (``max_trachea_area_mm2``), holds voxels darker than ``airway_threshold_hu`` and lies in the
    middle 30 % of the lung mask's right-left extent; it is looked for in the top
    ``trachea_search_mm`` of the mask. Returns None when there is no such component.
    """
    order = [a for a in range(3) if a != axes.si]
    pixel_mm2 = float(spacing[order[0]] * spacing[order[1]])
    present = np.nonzero(lungs.any(axis=tuple(order)))[0]
    if present.size == 0:
        return None
    slices = present if axes.superior_first else present[::-1]  # from the superior end down
    n_search = max(1, int(round(opts.trachea_search_mm / spacing[axes.si])))
    lr_positions = np.nonzero(lungs.any(axis=tuple(a for a in range(3) if a != axes.lr)))[0]
    lr_lo, lr_hi = float(lr_positions.min()), float(lr_positions.max())
    lr_in_slice = order.index(axes.lr)
    for k in slices[:n_search]:
        index = [slice(None)] * 3
        index[axes.si] = int(k)
        m2 = lungs[tuple(index)]
        h2 = hu[tuple(index)]
        lab = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(m2.astype(np.uint8))))
        counts = np.bincount(lab.ravel())
        best = None
        for label in range(1, counts.size):
            area = counts[label] * pixel_mm2
            if area > opts.max_trachea_area_mm2 or counts[label] < 3:
                continue
            pts = np.nonzero(lab == label)
            values = h2[pts]
            if float(values.min()) >= opts.airway_threshold_hu:
                continue
            centre = float(pts[lr_in_slice].mean())
            rel = (centre - lr_lo) / max(lr_hi - lr_lo, 1.0)
            if not 0.35 <= rel <= 0.65:
                continue
            offset = abs(rel - 0.5)
            if best is None or offset < best[0]:
                darkest = int(np.argmin(values))
                best = (offset, (pts[0][darkest], pts[1][darkest]), label)
        if best is not None:
            full = [0, 0, 0]
            full[axes.si] = int(k)
            full[order[0]], full[order[1]] = int(best[1][0]), int(best[1][1])
            blob = np.zeros(lungs.shape, dtype=bool)
            blob[tuple(index)] = lab == best[2]
            return (full[0], full[1], full[2]), blob
    return None


def _fill_slice_holes(mask: np.ndarray, axis: int, spacing: np.ndarray, max_area_mm2: float) -> np.ndarray:
    """Fill the holes of up to ``max_area_mm2`` in every 2-D slice across ``axis``.

    All slices are handled in one 3-D call: they are stacked with all-foreground planes between
    them (and at both ends), so no background region can reach from one slice to the next.
    """
    others = [a for a in range(3) if a != axis]
    max_pixels = max_area_mm2 / float(spacing[others[0]] * spacing[others[1]])
    stack = np.moveaxis(mask, axis, 0)
    n = stack.shape[0]
    padded = np.ones((2 * n + 1, *stack.shape[1:]), dtype=np.uint8)
    padded[1::2] = stack
    filled = _binary(sitk.BinaryFillhole(sitk.GetImageFromArray(padded), False, 1))[1::2]
    holes = np.zeros(padded.shape, dtype=np.uint8)
    holes[1::2] = filled & ~stack
    if not holes.any():
        return mask.copy()
    lab = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(holes), False))[1::2]
    small = np.bincount(lab.ravel()) <= max_pixels
    small[0] = False
    return np.moveaxis(stack | small[lab], 0, axis)
