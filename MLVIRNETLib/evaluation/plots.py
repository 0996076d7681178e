"""Evaluation figures: TRE box plots, fixed/moving colour overlays (paper Figs. 1 and 2) and
lung-mask QC pictures.

* :func:`tre_boxplot`: per-case box plots of landmark errors, one colour per method.
* :func:`overlay_png`: coronal and sagittal fixed/moving overlays before and after registration.
* :func:`mask_overlay_png`: axial, coronal and sagittal slices with labels tinted on top.

matplotlib is optional (``pip install mlvirnet[report]``); it is imported inside the functions
and used through :class:`matplotlib.figure.Figure` and the Agg canvas only, never through
``pyplot`` (no global state). Every figure is written atomically: the file appears complete
under its final name or not at all.

Overlay colours (:func:`overlay_png`): with ``f`` and ``m`` the window-normalised intensities
(0..1) of the fixed and the moving (or warped) image, a pixel is ``RGB = (f, (f + m) / 2, m)``:
bright in the fixed image only -> orange ``(1, 0.5, 0)``, bright in the moving image only ->
blue ``(0, 0.5, 1)``, bright in both -> white/grey, dark in both -> black. Where the images
agree the overlay is grey; misalignment shows as orange and blue fringes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid
from ..io.atomic import atomic_output

PathLike = str | os.PathLike

METHOD_COLOURS = ("#9e9e9e", "#e6862b", "#2b7bba", "#4caf50", "#9c27b0", "#795548")
"""Box colours of the methods of :func:`tre_boxplot`, in order of first appearance."""

_MARGIN_PX = 16  # around every overlay panel (orientation letters)
_TITLE_PX = 20  # above every overlay row


def _matplotlib():
    """``(Figure, FigureCanvasAgg, Patch)`` or an ImportError that says how to install it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MLVIRNET plots need matplotlib, an optional dependency: pip install mlvirnet[report]"
        ) from exc
    return Figure, FigureCanvasAgg, Patch


def _save(fig, path: PathLike) -> Path:
    """Render ``fig`` with the Agg canvas to ``path`` atomically (format from the suffix)."""
    _, canvas_cls, _ = _matplotlib()
    canvas_cls(fig)
    target = Path(path)
    with atomic_output(target) as tmp:
        fig.savefig(tmp, dpi=fig.dpi, facecolor=fig.get_facecolor())
    return target


# ----------------------------------------------------------------------------------------------
# TRE box plots
# ----------------------------------------------------------------------------------------------
def tre_boxplot(
    per_case: Mapping[str, Mapping[str, np.ndarray]],
    path: PathLike,
    title: str = "",
    ylabel: str = "TRE (mm)",
    dpi: int = 100,
) -> Path:
    """Box plots of landmark errors per case and method (e.g. initial vs registered).

    Args:
        per_case: ``{case: {method: errors}}``, errors a 1-D array of per-landmark TRE in mm.
            Cases are drawn left to right in the given order; methods are grouped within a
            case and coloured consistently (:data:`METHOD_COLOURS`, order of first appearance).
            A case may lack a method.
        path: output file; the format follows the suffix (``.png``, ``.pdf``, ``.svg``).
        title: optional figure title.
        ylabel: label of the vertical axis.
        dpi: resolution of raster output.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: no cases, a case without methods, or errors that are empty, not 1-D or not
            finite (the message names the case and method).
        FileNotFoundError: the output folder does not exist.
        ImportError: matplotlib is not installed.
    """
    data = _check_per_case(per_case)
    figure_cls, _, patch_cls = _matplotlib()
    methods: list[str] = []
    for by_method in data.values():
        methods.extend(m for m in by_method if m not in methods)
    n_methods = len(methods)
    width = min(2.0 + 0.45 * sum(len(v) for v in data.values()) + 0.3 * len(data), 24.0)
    fig = figure_cls(figsize=(max(width, 4.0), 4.0), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    centres = []
    for i, by_method in enumerate(data.values()):
        base = i * (n_methods + 1)
        centres.append(base + (n_methods - 1) / 2.0)
        for j, method in enumerate(methods):
            if method not in by_method:
                continue
            colour = METHOD_COLOURS[j % len(METHOD_COLOURS)]
            ax.boxplot(
                [by_method[method]], positions=[base + j], widths=0.7, patch_artist=True,
                boxprops={"facecolor": colour, "edgecolor": "black"},
                medianprops={"color": "black"},
                flierprops={"marker": ".", "markersize": 3, "markerfacecolor": colour, "markeredgecolor": colour},
                showmeans=True,
                meanprops={"marker": "D", "markersize": 3, "markerfacecolor": "white", "markeredgecolor": "black"},
            )
    ax.set_xticks(centres)
    ax.set_xticklabels(list(data.keys()), rotation=30 if len(data) > 6 else 0)
    ax.set_xlim(-1.0, len(data) * (n_methods + 1) - 1.0)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0.0)
    ax.grid(axis="y", alpha=0.3)
    handles = [patch_cls(facecolor=METHOD_COLOURS[j % len(METHOD_COLOURS)], edgecolor="black", label=m)
               for j, m in enumerate(methods)]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _check_per_case(per_case: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    if not isinstance(per_case, Mapping) or not per_case:
        raise ValueError("per_case must be a non-empty mapping {case: {method: errors}}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for case, by_method in per_case.items():
        if not isinstance(by_method, Mapping) or not by_method:
            raise ValueError(f"case {case!r} has no methods: expected {{method: errors}}")
        out[str(case)] = {}
        for method, errors in by_method.items():
            e = np.asarray(errors, dtype=float)
            if e.ndim != 1 or e.size == 0:
                raise ValueError(f"errors of case {case!r}, method {method!r} must be a non-empty 1-D array, "
                                 f"got shape {e.shape}")
            if not np.isfinite(e).all():
                raise ValueError(f"errors of case {case!r}, method {method!r} contain NaN or infinite values")
            out[str(case)][str(method)] = e
    return out


# ----------------------------------------------------------------------------------------------
# Colour overlays
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OverlayLayout:
    """Where :func:`overlay_png` put things.

    Attributes:
        path: the written file.
        size: ``(width, height)`` of the PNG in pixels.
        pixel_mm: edge of one display pixel in mm (the display grid is isotropic and aligned
            with the LPS axes).
        panels: ``{name: (x0, y0, width, height)}`` in PNG pixels (origin top left), e.g.
            ``"before coronal"``, ``"after sagittal"`` (:func:`overlay_png`) or ``"axial"``
            (:func:`mask_overlay_png`). Coronal panels show patient right on the left and
            superior at the top; sagittal panels anterior on the left, superior at the top;
            axial panels patient right on the left, anterior at the top.
        centre: LPS point (mm) the two slice planes pass through.
        lower_mm: LPS corner (mm) of the display grid: the smallest x, y, z of the fixed
            image's voxel centres, shown at the first column (x or y) and the bottom row (z).
    """

    path: Path
    size: tuple[int, int]
    pixel_mm: float
    panels: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lower_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def pixel_of(self, panel: str, point: Sequence[float]) -> tuple[float, float]:
        """PNG pixel ``(column, row)`` (origin top left) where LPS ``point`` projects in ``panel``.

        Coronal panels drop ``y``, sagittal panels ``x`` and axial panels ``z``.
        """
        if panel not in self.panels:
            raise ValueError(f"no panel {panel!r}; the panels are {sorted(self.panels)}")
        x0, y0, _, h = self.panels[panel]
        p = (np.asarray(point, dtype=float) - np.asarray(self.lower_mm)) / self.pixel_mm
        if panel.endswith("axial"):
            return float(x0 + p[0]), float(y0 + p[1])
        across = p[0] if panel.endswith("coronal") else p[1]
        return float(x0 + across), float(y0 + (h - 1) - p[2])


def overlay_png(
    fixed: sitk.Image,
    moving: sitk.Image,
    warped: sitk.Image | None,
    path: PathLike,
    window: tuple[float, float] = (-1000.0, 200.0),
    pixel_mm: float | None = None,
    centre: Sequence[float] | None = None,
    dpi: int = 100,
) -> OverlayLayout:
    """Coronal and sagittal colour overlays of fixed vs moving (before) and fixed vs warped (after).

    The three images are resampled (linear, for display only) onto an isotropic display grid
    aligned with the LPS axes that covers the fixed image, so the physical aspect ratio holds
    for any spacing or direction; outside an image's field of view its value is ``window[0]``.
    Colours: see the module docstring (fixed orange, moving blue, agreement grey).

    Layout: one row per comparison (before, then after), each with a title band of 20 pixels
    and the coronal and sagittal panels side by side, 16 pixels of margin around every panel
    (orientation letters). A panel is ``ceil(extent / pixel_mm) + 1`` pixels along each shown
    LPS axis, where ``extent`` spans the fixed image's voxel centres.

    Args:
        fixed, moving: 3-D scalar images in the same physical space (LPS mm).
        warped: the moving image after registration, or None for the "before" row only.
        path: output PNG.
        window: ``(low, high)`` intensities mapped to 0 and 1 (default: lung window in HU).
        pixel_mm: display pixel size in mm; default the largest LPS extent of the fixed image
            divided by 400 (so the longest panel side has about 400 pixels).
        centre: LPS point the slice planes pass through; default the centre of the fixed image.
        dpi: resolution (only scales the labels).

    Returns:
        :class:`OverlayLayout` with the PNG size and the panel positions.

    Raises:
        ValueError: an image is not 3-D scalar, a bad window, pixel size or centre.
        FileNotFoundError: the output folder does not exist.
        ImportError: matplotlib is not installed.
    """
    images = {"fixed": fixed, "moving": moving}
    if warped is not None:
        images["warped"] = warped
    _check_images(images)
    low, high = _check_window(window)
    lo_mm, size, pixel_mm = _display_grid(fixed, pixel_mm)
    c = _check_centre((lo_mm + (size - 1) * pixel_mm / 2.0) if centre is None else centre)

    rows = [("before", "moving")] + ([("after", "warped")] if warped is not None else [])
    panels: dict[str, np.ndarray] = {}
    for row, other in rows:
        for view in ("coronal", "sagittal"):
            f = _windowed(_display_plane(fixed, view, lo_mm, size, pixel_mm, c, sitk.sitkLinear, low), low, high)
            m = _windowed(_display_plane(images[other], view, lo_mm, size, pixel_mm, c, sitk.sitkLinear, low),
                          low, high)
            panels[f"{row} {view}"] = overlay_rgb(f, m)
    titles = [f"{row}: fixed (orange) vs {other} (blue) - coronal | sagittal" for row, other in rows]
    layout_rows = [[f"{row} coronal", f"{row} sagittal"] for row, _ in rows]
    size_px, boxes = _compose(panels, layout_rows, titles, path, dpi)
    return OverlayLayout(Path(path), size_px, float(pixel_mm), boxes, tuple(float(v) for v in c),
                         tuple(float(v) for v in lo_mm))


LABEL_COLOURS = ((0.0, 0.85, 0.85), (0.9, 0.2, 0.9), (1.0, 0.8, 0.0), (0.3, 0.9, 0.3), (1.0, 0.4, 0.3))
"""RGB tints of labels 1, 2, 3, ... in :func:`mask_overlay_png` (cycled)."""


def mask_overlay_png(
    image: sitk.Image,
    labels: sitk.Image,
    path: PathLike,
    window: tuple[float, float] = (-1000.0, 200.0),
    pixel_mm: float | None = None,
    centre: Sequence[float] | None = None,
    alpha: float = 0.4,
    dpi: int = 100,
    title: str = "",
) -> OverlayLayout:
    """Axial, coronal and sagittal slices of ``image`` with ``labels`` tinted on top (mask QC).

    Same display grid and orientation conventions as :func:`overlay_png`. The grey value is the
    window-normalised image; a voxel with label ``k > 0`` is blended with
    ``LABEL_COLOURS[(k - 1) % 5]`` at opacity ``alpha`` (labels are resampled with nearest
    neighbour). The slices pass through ``centre``, by default the centroid of the non-zero
    labels (the image centre when there are none).

    Returns:
        :class:`OverlayLayout` with panels ``"axial"``, ``"coronal"`` and ``"sagittal"``.

    Raises:
        ValueError: images not 3-D scalar, a bad window, ``alpha`` outside 0..1.
        FileNotFoundError: the output folder does not exist.
        ImportError: matplotlib is not installed.
    """
    _check_images({"image": image, "labels": labels})
    low, high = _check_window(window)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    lo_mm, size, pixel_mm = _display_grid(image, pixel_mm)
    if centre is None:
        lab = sitk.GetArrayViewFromImage(labels)
        grid = ImageGrid.from_sitk(labels)
        if lab.any():
            centre = grid.array_index_to_world(np.argwhere(lab).mean(axis=0))
        else:
            centre = lo_mm + (size - 1) * pixel_mm / 2.0
    c = _check_centre(centre)
    panels: dict[str, np.ndarray] = {}
    for view in ("axial", "coronal", "sagittal"):
        grey = _windowed(_display_plane(image, view, lo_mm, size, pixel_mm, c, sitk.sitkLinear, low), low, high)
        lab2 = np.rint(_display_plane(labels, view, lo_mm, size, pixel_mm, c, sitk.sitkNearestNeighbor, 0.0))
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        for k in np.unique(lab2[lab2 > 0]).astype(int):
            tint = np.asarray(LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)], dtype=np.float32)
            sel = lab2 == k
            rgb[sel] = (1.0 - alpha) * rgb[sel] + alpha * tint
        panels[view] = rgb
    size_px, boxes = _compose(panels, [["axial", "coronal", "sagittal"]], [title or "axial | coronal | sagittal"],
                              path, dpi)
    return OverlayLayout(Path(path), size_px, float(pixel_mm), boxes, tuple(float(v) for v in c),
                         tuple(float(v) for v in lo_mm))


def _check_images(images: Mapping[str, sitk.Image]) -> None:
    for name, image in images.items():
        if not isinstance(image, sitk.Image) or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            desc = f"a {image.GetDimension()}-D image" if isinstance(image, sitk.Image) else type(image).__name__
            raise ValueError(f"{name} must be a 3-D scalar SimpleITK image, got {desc}")


def _check_window(window: Sequence[float]) -> tuple[float, float]:
    low, high = (float(window[0]), float(window[1]))
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"window must be (low, high) with high > low, got {tuple(window)}")
    return low, high


def _check_centre(centre: Sequence[float]) -> np.ndarray:
    c = np.asarray(centre, dtype=float)
    if c.shape != (3,) or not np.isfinite(c).all():
        raise ValueError(f"centre must be an LPS point (x, y, z) in mm, got {centre}")
    return c


def _display_grid(image: sitk.Image, pixel_mm: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Lower LPS corner (mm), size ``(x, y, z)`` and pixel size of the display grid of ``image``."""
    lo_mm, hi_mm = _world_bounds(ImageGrid.from_sitk(image))
    extent = hi_mm - lo_mm
    if pixel_mm is None:
        pixel_mm = float(max(extent.max(), 1e-3) / 400.0)
    if not (np.isfinite(pixel_mm) and pixel_mm > 0):
        raise ValueError(f"pixel_mm must be a positive number of mm, got {pixel_mm}")
    if np.any(extent / pixel_mm > 4096):
        raise ValueError(f"pixel_mm {pixel_mm} mm gives panels over 4096 pixels for an extent of {extent} mm")
    size = np.ceil(extent / pixel_mm - 1e-9).astype(int) + 1
    return lo_mm, size, float(pixel_mm)


def _compose(panels: Mapping[str, np.ndarray], rows: list[list[str]], titles: list[str], path: PathLike,
             dpi: int) -> tuple[tuple[int, int], dict[str, tuple[int, int, int, int]]]:
    """Place RGB panels pixel-exactly in rows, label orientations and titles, save atomically.

    Returns the PNG size ``(width, height)`` and the panel boxes ``(x0, y0, w, h)``.
    """
    row_heights = [max(panels[name].shape[0] for name in row) for row in rows]
    row_widths = [sum(panels[name].shape[1] + 2 * _MARGIN_PX for name in row) for row in rows]
    width = max(row_widths)
    height = sum(_TITLE_PX + 2 * _MARGIN_PX + h for h in row_heights)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    y = 0
    for row, h in zip(rows, row_heights):
        x = 0
        for name in row:
            ph, pw = panels[name].shape[:2]
            boxes[name] = (x + _MARGIN_PX, y + _TITLE_PX + _MARGIN_PX, pw, ph)
            x += pw + 2 * _MARGIN_PX
        y += _TITLE_PX + 2 * _MARGIN_PX + h

    figure_cls, _, _ = _matplotlib()
    fig = figure_cls(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="black")
    text = {"color": "white", "fontsize": 11.0 * 72.0 / dpi, "ha": "center", "va": "center"}  # 11 px
    letters = {"coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P"), "axial": ("A", "P", "R", "L")}
    for name, (x0, y0, w, h) in boxes.items():
        fig.figimage(np.clip(panels[name], 0.0, 1.0), xo=x0, yo=height - y0 - h, origin="upper", resize=False)
        top, bottom, left, right = letters[name.split()[-1]]
        for label, (px, py) in (
            (top, (x0 + w / 2, y0 - _MARGIN_PX / 2)), (bottom, (x0 + w / 2, y0 + h + _MARGIN_PX / 2)),
            (left, (x0 - _MARGIN_PX / 2, y0 + h / 2)), (right, (x0 + w + _MARGIN_PX / 2, y0 + h / 2)),
        ):
            fig.text(px / width, 1.0 - py / height, label, **text)
    y = 0
    for title, h in zip(titles, row_heights):
        fig.text(0.5, 1.0 - (y + _TITLE_PX / 2) / height, title, **text)
        y += _TITLE_PX + 2 * _MARGIN_PX + h
    _save(fig, path)
    return (width, height), boxes


def overlay_rgb(fixed01: np.ndarray, moving01: np.ndarray) -> np.ndarray:
    """``(..., 3)`` float RGB ``(f, (f + m) / 2, m)`` of two window-normalised arrays in 0..1."""
    f = np.clip(np.asarray(fixed01, dtype=np.float32), 0.0, 1.0)
    m = np.clip(np.asarray(moving01, dtype=np.float32), 0.0, 1.0)
    if f.shape != m.shape:
        raise ValueError(f"fixed and moving slices differ in shape: {f.shape} vs {m.shape}")
    return np.stack([f, 0.5 * (f + m), m], axis=-1)


def _world_bounds(grid: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box (mm) of the voxel centres of ``grid``: ``(min, max)``."""
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in grid.size], indexing="ij")).reshape(3, -1).T
    world = np.asarray(grid.index_to_world(corners.astype(float)))
    return world.min(axis=0), world.max(axis=0)


def _display_plane(image: sitk.Image, view: str, lo_mm: np.ndarray, size: np.ndarray, pixel_mm: float,
                   centre: np.ndarray, interpolator: int, default: float) -> np.ndarray:
    """2-D float32 slice of ``image`` on the axis-aligned display grid, in display orientation.

    ``coronal``: rows superior first, columns patient right to left (x). ``sagittal``: rows
    superior first, columns anterior to posterior (y). ``axial``: rows anterior first, columns
    patient right to left.
    """
    ref_size = [int(size[0]), int(size[1]), int(size[2])]
    origin = [float(lo_mm[0]), float(lo_mm[1]), float(lo_mm[2])]
    fixed_axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
    ref_size[fixed_axis] = 1
    origin[fixed_axis] = float(centre[fixed_axis])
    reference = sitk.Image(ref_size, sitk.sitkFloat32)
    reference.SetSpacing((pixel_mm, pixel_mm, pixel_mm))
    reference.SetOrigin(tuple(origin))
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), interpolator,
                        default, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)  # (z, y, x) with one singleton axis
    if view == "axial":
        return arr[0]
    plane = arr[:, 0, :] if view == "coronal" else arr[:, :, 0]
    return plane[::-1]  # display rows superior first (z decreasing), not an index-order change


def _windowed(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((plane - low) / (high - low), 0.0, 1.0)
