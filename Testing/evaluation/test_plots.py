"""Tests of MLVIRNETLib.evaluation.plots: overlay colours, orientation and size; TRE box plots; errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("matplotlib", reason="plots need the optional matplotlib (pip install mlvirnet[report])")
from helpers import oblique_grid  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from MLVIRNETLib.core.geometry import ImageGrid  # noqa: E402
from MLVIRNETLib.evaluation.plots import METHOD_COLOURS, overlay_png, overlay_rgb, tre_boxplot  # noqa: E402

CENTRE = np.array([12.0, -30.0, 85.0])  # LPS mm
RADIUS = 12.0
BALLS = {  # name: (offset from CENTRE in mm, HU in fixed, HU in moving)
    "fixed_only": ((0.0, 0.0, 45.0), 200.0, -1000.0),  # superior
    "moving_only": ((0.0, 0.0, -45.0), -1000.0, 200.0),  # inferior
    "both_mid": ((0.0, 0.0, 0.0), -400.0, -400.0),  # mid-window in both -> grey
    "left": ((45.0, 0.0, 0.0), 200.0, -1000.0),  # patient left (+x), coronal only
    "anterior": ((0.0, -45.0, 0.0), 200.0, -1000.0),  # anterior (-y), sagittal only
}


def _grid(angles, spacing, size=(70, 64, 48)) -> ImageGrid:
    probe = oblique_grid(size=size, spacing=spacing, origin=(0.0, 0.0, 0.0), angles=angles)
    half = probe.index_to_world(np.asarray(size, dtype=float) / 2.0 - 0.5) - np.asarray(probe.origin)
    return ImageGrid(size, spacing, tuple(CENTRE - half), probe.direction)


def _render(grid: ImageGrid, which: int) -> sitk.Image:
    """Balls on ``grid``; ``which`` = 1 for the fixed values, 2 for the moving values."""
    pts = grid.world_points(dtype=torch.float64).numpy()
    arr = np.full(grid.shape_zyx, -1000.0, dtype=np.float32)
    for offset, *values in BALLS.values():
        inside = ((pts - CENTRE - np.asarray(offset)) ** 2).sum(axis=-1) <= RADIUS ** 2
        arr[inside] = values[which - 1]
    image = sitk.GetImageFromArray(arr)
    grid.copy_to_sitk(image)
    return image


@pytest.fixture(scope="module")
def images():
    fixed = _render(_grid((10.0, -15.0, 25.0), (2.6, 2.9, 3.7)), 1)
    moving = _render(_grid((-5.0, 8.0, -12.0), (3.1, 2.4, 3.3), size=(60, 70, 52)), 2)
    return fixed, moving


def _colour(png: np.ndarray, xy: tuple[float, float]) -> np.ndarray:
    """Mean RGB (0..255) of the 3x3 pixels around ``(column, row)``."""
    c, r = int(round(xy[0])), int(round(xy[1]))
    return png[r - 1:r + 2, c - 1:c + 2, :3].reshape(-1, 3).mean(axis=0) * 255.0


def _expected_panel_sizes(fixed: sitk.Image, pixel_mm: float) -> tuple[int, int, int]:
    grid = ImageGrid.from_sitk(fixed)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in grid.size], indexing="ij")).reshape(3, -1).T
    world = grid.index_to_world(corners.astype(float))
    n = np.ceil((world.max(axis=0) - world.min(axis=0)) / pixel_mm).astype(int) + 1
    return int(n[0]), int(n[1]), int(n[2])


def test_overlay_colours_orientation_and_size(images, tmp_path):
    fixed, moving = images
    path = tmp_path / "overlay.png"
    layout = overlay_png(fixed, moving, fixed, path, window=(-1000.0, 200.0), pixel_mm=1.0, centre=CENTRE)

    png = imread(str(path))
    wc, ws, h = _expected_panel_sizes(fixed, 1.0)
    assert png.shape[:2] == (2 * (20 + 32 + h), 64 + wc + ws)
    assert layout.size == (png.shape[1], png.shape[0])
    assert set(layout.panels) == {"before coronal", "before sagittal", "after coronal", "after sagittal"}

    orange, blue = np.array([255, 128, 0]), np.array([0, 128, 255])
    grey, white, black = np.array([128, 128, 128]), np.array([255, 255, 255]), np.zeros(3)
    at = {name: CENTRE + np.asarray(offset) for name, (offset, *_) in BALLS.items()}
    for view in ("coronal", "sagittal"):
        before, after = f"before {view}", f"after {view}"
        assert np.allclose(_colour(png, layout.pixel_of(before, at["fixed_only"])), orange, atol=6)
        assert np.allclose(_colour(png, layout.pixel_of(before, at["moving_only"])), blue, atol=6)
        assert np.allclose(_colour(png, layout.pixel_of(before, at["both_mid"])), grey, atol=6)
        # after: the "warped" image is the fixed one, so everything agrees
        assert np.allclose(_colour(png, layout.pixel_of(after, at["fixed_only"])), white, atol=6)
        assert np.allclose(_colour(png, layout.pixel_of(after, at["moving_only"])), black, atol=6)
        # superior is up
        assert layout.pixel_of(before, at["fixed_only"])[1] < layout.pixel_of(before, at["moving_only"])[1]
    # coronal: patient left (+x) on the right; sagittal: anterior (-y) on the left
    col_left, _ = layout.pixel_of("before coronal", at["left"])
    assert col_left > layout.pixel_of("before coronal", CENTRE)[0]
    assert np.allclose(_colour(png, (col_left, layout.pixel_of("before coronal", at["left"])[1])), orange, atol=6)
    col_ant, row_ant = layout.pixel_of("before sagittal", at["anterior"])
    assert col_ant < layout.pixel_of("before sagittal", CENTRE)[0]
    assert np.allclose(_colour(png, (col_ant, row_ant)), orange, atol=6)


def test_overlay_aspect_follows_physical_extent(images, tmp_path):
    """Panels are in mm, not voxels: halving the pixel size doubles every panel side."""
    fixed, moving = images
    coarse = overlay_png(fixed, moving, None, tmp_path / "a.png", pixel_mm=2.0)
    fine = overlay_png(fixed, moving, None, tmp_path / "b.png", pixel_mm=1.0)
    assert set(coarse.panels) == {"before coronal", "before sagittal"}
    for name in coarse.panels:
        _, _, w2, h2 = coarse.panels[name]
        _, _, w1, h1 = fine.panels[name]
        assert abs(w1 - 2 * w2) <= 2 and abs(h1 - 2 * h2) <= 2
    wc, ws, h = _expected_panel_sizes(fixed, 2.0)
    assert coarse.panels["before coronal"][2:] == (wc, h)
    assert coarse.panels["before sagittal"][2:] == (ws, h)
    assert imread(str(tmp_path / "a.png")).shape[:2] == (coarse.size[1], coarse.size[0])


def test_overlay_rgb_formula():
    rgb = overlay_rgb(np.array([1.0, 0.0, 1.0, 0.0, 2.0]), np.array([0.0, 1.0, 1.0, 0.0, -1.0]))
    assert np.allclose(rgb, [[1, 0.5, 0], [0, 0.5, 1], [1, 1, 1], [0, 0, 0], [1, 0.5, 0]])


def test_overlay_rejects_bad_input(images, tmp_path):
    fixed, moving = images
    with pytest.raises(ValueError, match="moving must be a 3-D"):
        overlay_png(fixed, sitk.Image([8, 8], sitk.sitkFloat32), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="window"):
        overlay_png(fixed, moving, None, tmp_path / "x.png", window=(200.0, -1000.0))
    with pytest.raises(FileNotFoundError):
        overlay_png(fixed, moving, None, tmp_path / "missing" / "x.png")
    assert not list(tmp_path.iterdir())  # nothing partial was written


def test_tre_boxplot_png_and_pdf(tmp_path):
    rng = np.random.default_rng(0)
    per_case = {
        f"case{i}": {"initial": rng.gamma(2.0, 3.0, 300), "registered": rng.gamma(2.0, 0.6, 300)}
        for i in range(1, 5)
    }
    per_case["case5"] = {"initial": rng.gamma(2.0, 3.0, 300)}  # a case may lack a method
    png_path = tre_boxplot(per_case, tmp_path / "tre.png", title="TRE", dpi=100)
    png = imread(str(png_path))
    assert png.shape[0] == 400  # 4 inches at 100 dpi
    rgb = (png[..., :3] * 255).round().astype(int)
    for colour in METHOD_COLOURS[:2]:  # both methods' boxes were drawn in their colours
        target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(rgb - target).max(axis=-1) <= 2).sum() > 200, colour
    pdf_path = tre_boxplot(per_case, tmp_path / "tre.pdf")
    assert pdf_path.read_bytes()[:4] == b"%PDF"


def test_tre_boxplot_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        tre_boxplot({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="case 'c1' has no methods"):
        tre_boxplot({"c1": {}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'c1', method 'm'.*NaN"):
        tre_boxplot({"c1": {"m": np.array([1.0, np.nan])}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="1-D"):
        tre_boxplot({"c1": {"m": np.ones((3, 3))}}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_replaces_existing_file_atomically(tmp_path):
    path = tmp_path / "tre.png"
    path.write_bytes(b"old")
    tre_boxplot({"c1": {"m": np.array([1.0, 2.0, 3.0])}}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tre.png"]  # no temporary left behind


def test_missing_matplotlib_message(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    with pytest.raises(ImportError, match=r"pip install mlvirnet\[report\]"):
        tre_boxplot({"c1": {"m": np.array([1.0])}}, tmp_path / "x.png")


def test_mask_overlay_tints_labels_in_place(images, tmp_path):
    from MLVIRNETLib.evaluation.plots import LABEL_COLOURS, mask_overlay_png

    fixed, _ = images
    grid = ImageGrid.from_sitk(fixed)
    pts = grid.world_points(dtype=torch.float64).numpy()
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
    right_ball, left_ball = CENTRE + [-30.0, -20.0, 0.0], CENTRE + [30.0, 20.0, 0.0]
    labels[((pts - right_ball) ** 2).sum(-1) <= 10.0 ** 2] = 1
    labels[((pts - left_ball) ** 2).sum(-1) <= 10.0 ** 2] = 2
    label_image = sitk.GetImageFromArray(labels)
    grid.copy_to_sitk(label_image)

    layout = mask_overlay_png(fixed, label_image, tmp_path / "mask.png", pixel_mm=1.0, alpha=0.5)

    png = imread(str(tmp_path / "mask.png"))
    assert png.shape[:2] == (layout.size[1], layout.size[0])
    assert set(layout.panels) == {"axial", "coronal", "sagittal"}
    # default centre: the centroid of the labels, i.e. CENTRE, where the fixed image is -400 HU
    assert np.allclose(layout.centre, CENTRE, atol=1.0)
    for ball, label in ((right_ball, 1), (left_ball, 2)):
        expected = 255.0 * 0.5 * np.asarray(LABEL_COLOURS[label - 1])  # black background, alpha 0.5
        assert np.allclose(_colour(png, layout.pixel_of("axial", ball)), expected, atol=6)
    # axial: patient right (-x) on the left, anterior (-y) at the top
    col_r, row_r = layout.pixel_of("axial", right_ball)
    col_l, row_l = layout.pixel_of("axial", left_ball)
    assert col_r < col_l and row_r < row_l
    grey = 255.0 * 0.5  # -400 HU in the (-1000, 200) window, no label
    assert np.allclose(_colour(png, layout.pixel_of("axial", CENTRE)), grey, atol=6)
