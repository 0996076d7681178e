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

:func:`split_left_right` labels the right lung 1 and the left lung 2 (LPS ``+x`` points to the
patient's left).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import SimpleITK as sitk

from .geometry import ImageGrid

RIGHT_LUNG = 1
"""Label of the right lung in :func:`split_left_right`."""

LEFT_LUNG = 2
"""Label of the left lung in :func:`split_left_right`."""

_MIN_LEAK_ML = 20.0
"""Airway regions below this volume are never called a leak (the trachea alone is larger)."""


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
def segment_lungs(image: sitk.Image, options: LungMaskOptions | None = None) -> sitk.Image:
    """Lung mask of a chest CT.

    Args:
        image: 3-D CT in Hounsfield units (any integer or float pixel type, any spacing, origin
            and direction). The input is not modified.
        options: parameters; defaults to ``LungMaskOptions()``.

    Returns:
        ``uint8`` image on the grid of ``image`` (same size, spacing, origin, direction):
        1 = lung, 0 = everything else.

    Raises:
        ValueError: not a 3-D scalar image, values that are not HU (e.g. HU + 1024), or no lung
            found.
    """
    return segment_lungs_with_info(image, options)[0]


def segment_lungs_with_info(image: sitk.Image, options: LungMaskOptions | None = None) -> tuple[sitk.Image, dict]:
    """:func:`segment_lungs` plus a dictionary of diagnostics.

    Keys: ``working_size`` (x, y, z voxels of the working grid), ``lung_rule`` (how the lungs
    were told from air outside the body), ``lung_components`` (1 or 2 air components kept),
    ``trachea_found`` (bool) and, when found, ``trachea_seed_lps`` (mm), ``airway_threshold_hu``,
    ``airway_volume_ml`` and ``airway_growth_ml`` (threshold, volume) per growing step.
    """
    opts = options if options is not None else LungMaskOptions()
    info: dict = {}
    hu = _validated_hu(image, opts)
    work, padded_size = _working_image(hu, opts.working_spacing_mm)
    info["working_size"] = tuple(work.GetSize())
    mask = _segment_on_grid(work, opts, info)
    out = _back_to_input_grid(mask, work, hu, padded_size)
    if not sitk.GetArrayViewFromImage(out).any():
        raise ValueError("no lung found: the lung mask vanished when mapped back to the input grid")
    return out, info


def split_left_right(mask: sitk.Image, min_fraction: float = 0.1, max_erosion_mm: float = 20.0) -> sitk.Image:
    """Label the two lungs of a binary lung mask: 1 = right lung, 2 = left lung.

    When the lungs are separate components, the two largest are taken (the second must hold at
    least ``min_fraction`` of the first) and the one further to the patient's left (larger LPS
    ``x`` of its centroid) is labelled 2. When they touch (e.g. at the anterior junction), the
    mask is eroded by growing radii (mm, up to ``max_erosion_mm``) until it falls apart in two,
    and every mask voxel is given the label of the nearer eroded part. Other small components get
    the label of the nearer lung.

    Args:
        mask: 3-D binary image (non-zero = lung), any geometry.

    Returns:
        ``uint8`` label image on the grid of ``mask``.

    Raises:
        ValueError: not a 3-D image, an empty mask, or lungs that cannot be separated (e.g. a
            crop that shows one lung only).
    """
    if not isinstance(mask, sitk.Image):
        raise ValueError(f"expected a SimpleITK.Image mask, got {type(mask).__name__}")
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a 3-D scalar mask, got a {mask.GetDimension()}-D image with "
                         f"{mask.GetNumberOfComponentsPerPixel()} components of size {mask.GetSize()}")
    grid = ImageGrid.from_sitk(mask)
    m = sitk.GetArrayFromImage(mask) != 0
    if not m.any():
        raise ValueError("cannot split an empty lung mask")
    spacing = _spacing_zyx(grid)
    box = _bounding_box(m, [1, 1, 1])
    offset = np.array([b.start for b in box])
    crop = m[box]
    seeds = _two_parts(crop, spacing, min_fraction)
    radius = 1.0
    while seeds is None and radius <= max_erosion_mm:
        seeds = _two_parts(_erode(crop, radius, spacing), spacing, min_fraction)
        radius *= 1.5
    if seeds is None:
        raise ValueError(
            f"could not separate the lung mask into two lungs (eroded up to {max_erosion_mm} mm): "
            "does the image show both lungs?"
        )
    first, second = seeds
    to_first = _distance_mm(first, spacing) <= _distance_mm(second, spacing)
    x1 = _centroid_world(first, grid, offset)[0]
    x2 = _centroid_world(second, grid, offset)[0]
    first_label, second_label = (LEFT_LUNG, RIGHT_LUNG) if x1 > x2 else (RIGHT_LUNG, LEFT_LUNG)
    labels = np.zeros(m.shape, dtype=np.uint8)
    labels[box] = np.where(crop & to_first, first_label, np.where(crop, second_label, 0))
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(mask)
    return out


def lung_volume_ml(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of a mask, ml (cm^3)."""
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * voxel_ml


def synthetic_chest_ct(lung_mask: sitk.Image, seed: int = 0, vessels_per_litre: float = 15.0) -> sitk.Image:
    """A CT-like image (float32 HU) built around a lung mask, to check :func:`segment_lungs`.

    Not a realistic CT: lung parenchyma about -850 HU with smooth texture and noise, bright
    vessel-like balls (+40 HU, radius 1.5-4 mm) inside the lungs, soft tissue +40 HU in a body
    (an elliptic cylinder around the lungs united with the lungs grown by 15 mm, so that a chest
    wall always encloses them), air -1000 HU outside it, and an air-filled trachea (radius 8 mm)
    running from the top of the image to a carina 30 % of the lung height below the apex, with
    two main bronchi (radius 5 mm) to the nearest point of each lung. The trachea and bronchi are
    not part of ``lung_mask``, so a segmentation has to remove them to match it.

    Args:
        lung_mask: 3-D binary image (non-zero = lung), any geometry; "superior" is read from its
            direction (the index axis closest to LPS +z).
        seed: random seed (noise, texture, vessel positions).
        vessels_per_litre: number of vessel balls per litre of lung.

    Returns:
        float32 image on the grid of ``lung_mask``.
    """
    if lung_mask.GetDimension() != 3:
        raise ValueError(f"expected a 3-D lung mask, got a {lung_mask.GetDimension()}-D image")
    grid = ImageGrid.from_sitk(lung_mask)
    spacing = _spacing_zyx(grid)
    lungs = sitk.GetArrayFromImage(lung_mask) != 0
    if not lungs.any():
        raise ValueError("the lung mask is empty")
    rng = np.random.default_rng(seed)
    axes = _anatomical_axes(grid)
    shape = lungs.shape

    # body: elliptic cylinder along the head-foot axis around the lungs, plus a 15 mm chest wall
    in_plane = [a for a in range(3) if a != axes.si]
    coords = np.ogrid[: shape[0], : shape[1], : shape[2]]
    present = np.argwhere(lungs)
    lo, hi = present.min(axis=0), present.max(axis=0)
    centre = (lo + hi) / 2.0
    r2 = np.float32(0.0)
    for a in in_plane:
        semi = (hi[a] - lo[a]) / 2.0 * 1.15 + 20.0 / spacing[a]
        r2 = r2 + ((coords[a].astype(np.float32) - centre[a]) / semi) ** 2
    body = np.broadcast_to(r2 <= 1.0, shape) | _dilate(lungs, 15.0, spacing)

    # lung texture: smooth noise (sigma 2 mm) plus white noise
    texture = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32))
    texture.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(texture, 2.0))
    texture *= 40.0 / max(float(texture.std()), 1e-6)
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)
    ct[lungs] = -850.0 + texture[lungs]
    del texture

    # vessels: balls centred at least 6 mm inside the lung
    deep = np.argwhere(_depth_mm(lungs, spacing) >= 6.0)
    n_vessels = int(round(vessels_per_litre * lungs.sum() * float(np.prod(spacing)) / 1e6))
    if deep.size and n_vessels:
        for c in deep[rng.integers(0, len(deep), size=n_vessels)]:
            _paint_segment(ct, c, c, float(rng.uniform(1.5, 4.0)), spacing, 40.0)

    # trachea from the top of the image to the carina, and two main bronchi
    superior_end = 0 if axes.superior_first else shape[axes.si] - 1
    apex = lo[axes.si] if axes.superior_first else hi[axes.si]
    height = hi[axes.si] - lo[axes.si]
    carina = centre.copy()
    carina[axes.si] = apex + (0.3 * height if axes.superior_first else -0.3 * height)
    top = carina.copy()
    top[axes.si] = superior_end
    _paint_segment(ct, top, carina, 8.0, spacing, -1000.0)
    for side in (present[:, axes.lr] < centre[axes.lr], present[:, axes.lr] >= centre[axes.lr]):
        points = present[side][:: max(1, int(side.sum()) // 200000)]
        if points.size == 0:
            continue
        nearest = points[np.argmin((((points - carina) * spacing) ** 2).sum(axis=1))]
        _paint_segment(ct, carina, nearest, 5.0, spacing, -1000.0)

    ct += rng.normal(scale=15.0, size=shape).astype(np.float32)
    out = sitk.GetImageFromArray(ct)
    out.CopyInformation(lung_mask)
    return out


def _paint_segment(volume: np.ndarray, a: np.ndarray, b: np.ndarray, radius_mm: float,
                   spacing: np.ndarray, value: float) -> None:
    """Set ``value`` within ``radius_mm`` of the segment from index ``a`` to ``b`` (``(z, y, x)``)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    pad = np.ceil(radius_mm / spacing) + 1
    lo = np.maximum(np.floor(np.minimum(a, b) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(a, b) + pad) + 1, volume.shape).astype(int)
    if np.any(hi <= lo):
        return
    idx = np.indices(tuple(hi - lo), dtype=float).reshape(3, -1).T + lo
    d = (b - a) * spacing
    p = (idx - a) * spacing
    t = np.clip(p @ d / max(float(d @ d), 1e-12), 0.0, 1.0)
    dist2 = ((p - t[:, None] * d) ** 2).sum(axis=1)
    region = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    region[(dist2 <= radius_mm ** 2).reshape(region.shape)] = value


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
    box = _bounding_box(mask, [1, 1, 1])
    m = sitk.GetImageFromArray(mask[box].astype(np.float32))
    m.SetSpacing(work.GetSpacing())
    m.SetDirection(work.GetDirection())
    m.SetOrigin(work.TransformIndexToPhysicalPoint([b.start for b in box[::-1]]))
    start = np.array([b.start for b in box[::-1]]) * factors
    stop = np.minimum(np.array([b.stop for b in box[::-1]]) * factors, hu.GetSize())
    reference = sitk.Image([int(s) for s in stop - start], sitk.sitkFloat32)
    reference.SetSpacing(hu.GetSpacing())
    reference.SetDirection(hu.GetDirection())
    reference.SetOrigin(hu.TransformIndexToPhysicalPoint([int(s) for s in start]))
    up = sitk.Resample(m, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    full = np.zeros(hu.GetSize()[::-1], dtype=np.uint8)
    full[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = sitk.GetArrayViewFromImage(up) >= 0.5
    out = sitk.GetImageFromArray(full)
    out.CopyInformation(hu)
    return out


# ----------------------------------------------------------------------------------------------
# The pipeline on the working grid
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Axes:
    """Array axes (of a ``(D, H, W)`` array) that run head-foot and right-left."""

    si: int
    superior_first: bool
    lr: int


def _anatomical_axes(grid: ImageGrid) -> _Axes:
    """Which array axis is closest to the LPS z (and x) axis, and which end is superior."""
    d = grid.direction_matrix  # columns = index axes x, y, z in LPS
    si_index = int(np.argmax(np.abs(d[2])))
    lr_candidates = [i for i in range(3) if i != si_index]
    lr_index = max(lr_candidates, key=lambda i: abs(d[0, i]))
    return _Axes(si=2 - si_index, superior_first=bool(d[2, si_index] < 0), lr=2 - lr_index)


def _segment_on_grid(work: sitk.Image, opts: LungMaskOptions, info: dict) -> np.ndarray:
    """Boolean lung mask ``(D, H, W)`` on the working grid; ``info`` collects diagnostics."""
    grid = ImageGrid.from_sitk(work)
    spacing = _spacing_zyx(grid)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    hu_full = sitk.GetArrayFromImage(work)
    axes = _anatomical_axes(grid)

    lungs_full = _select_lungs(hu_full, hu_full < opts.air_threshold_hu, axes, spacing, voxel_ml, opts, info)
    # the rest works on the bounding box of the lungs plus a margin for the closing
    margin = _radius_vox(opts.closing_radius_mm, spacing)[::-1]
    box = _bounding_box(lungs_full, [m + 2 for m in margin])
    hu, lungs = hu_full[box], lungs_full[box]

    info["trachea_found"] = False
    if opts.remove_airways:
        airway = _grow_airways(hu, lungs, axes, spacing, voxel_ml, opts, info)
        if "trachea_seed_zyx" in info:
            seed = np.asarray(info.pop("trachea_seed_zyx")) + [b.start for b in box]
            info["trachea_seed_lps"] = tuple(float(v) for v in grid.index_to_world(seed[::-1].astype(float)))
        if airway is not None:
            # at least two in-plane voxels: the partial-volume wall would otherwise keep the
            # trachea above the seed attached to the lungs
            in_plane = max(float(spacing[a]) for a in range(3) if a != axes.si)
            airway = _dilate(airway, max(opts.airway_margin_mm, 2.0 * in_plane), spacing)
            lungs = _largest_parts(lungs & ~airway, voxel_ml, opts)
    if opts.fill_holes:
        lungs = _fill_slice_holes(lungs, axes.si, spacing, opts.max_hole_area_mm2)
    if opts.closing_radius_mm > 0:
        lungs = _erode(_dilate(lungs, opts.closing_radius_mm, spacing), opts.closing_radius_mm, spacing)
    if opts.fill_holes:
        lungs = _binary(sitk.BinaryFillhole(_image(lungs, spacing), False, 1))
    out = np.zeros(hu_full.shape, dtype=bool)
    out[box] = lungs
    return out


def _select_lungs(hu: np.ndarray, air: np.ndarray, axes: _Axes, spacing: np.ndarray, voxel_ml: float,
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
        box = _bounding_box(candidates, [1, 1, 1])
        core = _depth_mm(candidates[box], spacing) >= opts.core_depth_mm
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


def _enclosed_by_body(tissue: np.ndarray, axes: _Axes, spacing: np.ndarray) -> np.ndarray:
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


def _grow_airways(hu: np.ndarray, lungs: np.ndarray, axes: _Axes, spacing: np.ndarray, voxel_ml: float,
                  opts: LungMaskOptions, info: dict) -> np.ndarray | None:
    """Trachea and large airways (boolean ``(D, H, W)``) grown from the trachea; None if not found.

    The region is grown inside ``lungs`` below a threshold that starts just above the seed's
    value and rises in steps of ``airway_threshold_step_hu`` up to ``airway_threshold_hu``. The
    last region before a leak is returned; a leak is a region above ``max_airway_volume_ml`` or
    one more than ``airway_leak_factor`` times the previous one (and above 20 ml, since the
    first steps legitimately grow from a few voxels to the whole trachea).
    """
    found = _find_trachea(hu, lungs, axes, spacing, opts)
    if found is None:
        return None
    seed, blob = found
    info["trachea_seed_zyx"] = seed
    image = _image(np.where(lungs, hu, np.float32(1000.0)).astype(np.float32), spacing)
    seed_xyz = [int(seed[2]), int(seed[1]), int(seed[0])]
    step = opts.airway_threshold_step_hu
    threshold = float(hu[seed]) + step
    accepted: np.ndarray | None = None
    previous_ml = 0.0
    volumes = []
    while threshold <= opts.airway_threshold_hu + 1e-6:
        grown = _binary(sitk.ConnectedThreshold(image, seedList=[seed_xyz], lower=-1e9, upper=threshold))
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


def _find_trachea(hu: np.ndarray, lungs: np.ndarray, axes: _Axes, spacing: np.ndarray,
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
    slices = present if axes.superior_first else present[::-1]
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


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def _spacing_zyx(grid: ImageGrid) -> np.ndarray:
    return np.asarray(grid.spacing[::-1], dtype=float)


def _image(array: np.ndarray, spacing_zyx: np.ndarray | None) -> sitk.Image:
    """Array ``(D, H, W)`` -> sitk image in index space (spacing only; bool becomes uint8)."""
    a = array.astype(np.uint8) if array.dtype == bool else array
    img = sitk.GetImageFromArray(a)
    if spacing_zyx is not None:
        img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return img


def _binary(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image) != 0


def _radius_vox(radius_mm: float, spacing_zyx: np.ndarray) -> list[int]:
    """Kernel radius per index axis ``(x, y, z)`` for a ball of ``radius_mm``."""
    return [int(max(0, round(radius_mm / s))) for s in spacing_zyx[::-1]]


def _components(mask: np.ndarray, spacing_zyx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components: label array and voxel count per label (index 0 = background)."""
    lab = sitk.GetArrayFromImage(sitk.ConnectedComponent(_image(mask, spacing_zyx), False))
    return lab, np.bincount(lab.ravel())


def _border_labels(labels: np.ndarray) -> set[int]:
    """Labels present on any of the six faces of the array."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    found: set[int] = set()
    for f in faces:
        found.update(int(v) for v in np.unique(f))
    found.discard(0)
    return found


def _two_parts(mask: np.ndarray, spacing: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The two largest components when the second is at least ``min_fraction`` of the first."""
    if not mask.any():
        return None
    labels, counts = _components(mask, spacing)
    if counts.size < 3:
        return None
    order = np.argsort(counts[1:])[::-1] + 1
    a, b = order[0], order[1]
    if counts[b] < min_fraction * counts[a]:
        return None
    return labels == a, labels == b


def _distance_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm of every voxel to the nearest voxel of ``mask`` (0 inside, inf if empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    d = sitk.SignedMaurerDistanceMap(_image(mask, spacing), insideIsPositive=False, squaredDistance=False,
                                     useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(d), 0.0)


def _centroid_world(mask: np.ndarray, grid: ImageGrid, offset_zyx: np.ndarray) -> np.ndarray:
    """LPS centroid (mm) of a boolean ``(D, H, W)`` crop of ``grid`` starting at ``offset_zyx``."""
    zyx = np.argwhere(mask).mean(axis=0) + offset_zyx
    return np.asarray(grid.index_to_world(zyx[::-1].astype(float)))


def _bounding_box(mask: np.ndarray, margin: list[int]) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels per array axis (clipped)."""
    box = []
    for axis in range(3):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo = max(0, int(present.min()) - margin[axis])
        hi = min(mask.shape[axis], int(present.max()) + 1 + margin[axis])
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]


def _dilate(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a Euclidean ball of ``radius_mm`` (physical, so exact for any spacing).

    The distance map is computed on the bounding box of ``mask`` grown by the radius only.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    box = _bounding_box(mask, [int(np.ceil(radius_mm / s)) + 1 for s in spacing])
    out[box] = _distance_mm(mask[box], spacing) <= radius_mm
    return out


def _erode(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Erosion by a Euclidean ball of ``radius_mm``; the image border does not erode."""
    return ~_dilate(~mask, radius_mm, spacing)


def _depth_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it (0 outside)."""
    return np.where(mask, _distance_mm(~mask, spacing), 0.0)
