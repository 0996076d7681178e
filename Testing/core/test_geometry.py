"""Every coordinate conversion of MLVIRNETLib.core.geometry, checked analytically and against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.geometry import (
    ImageGrid,
    array_axis_to_index_axis,
    array_slices,
    index_axis_to_array_axis,
    lps_to_ras,
    matrix_lps_to_ras,
    ras_to_lps,
    world_transform_lps_to_ras,
    xyz_to_zyx,
    zyx_to_xyz,
)
from MLVIRNETLib.core.sampling import resample_to_grid, sample, to_batch_tensor

GRIDS = [
    oblique_grid(),
    oblique_grid(size=(9, 16, 7), spacing=(1.1, 0.45, 3.0), origin=(100.0, -250.0, -31.5), angles=(-30, 5, 80)),
    oblique_grid(flip_z=True),
]


@pytest.mark.parametrize("grid", GRIDS)
def test_index_to_world_matches_sitk(grid: ImageGrid) -> None:
    img = sitk.Image(list(grid.size), sitk.sitkFloat32)
    grid.copy_to_sitk(img)
    rng = np.random.default_rng(1)
    idx = rng.uniform(-2, np.asarray(grid.size) + 2, size=(20, 3))
    ours = grid.index_to_world(idx)
    ref = np.array([img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    back = grid.world_to_index(ours)
    np.testing.assert_allclose(back, idx, atol=1e-10)
    ref_back = np.array([img.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in ours])
    np.testing.assert_allclose(back, ref_back, atol=1e-9)
    # integer index convention identical to sitk.TransformIndexToPhysicalPoint
    np.testing.assert_allclose(grid.index_to_world(np.array([2.0, 3.0, 4.0])), img.TransformIndexToPhysicalPoint((2, 3, 4)))


@pytest.mark.parametrize("grid", GRIDS)
def test_torch_and_numpy_agree(grid: ImageGrid) -> None:
    idx = np.array([[0.0, 0.0, 0.0], [1.5, 2.0, 3.25]])
    np.testing.assert_allclose(grid.index_to_world(torch.as_tensor(idx)).numpy(), grid.index_to_world(idx), atol=1e-12)
    pts = grid.world_points(dtype=torch.float64)
    assert pts.shape == (*grid.shape_zyx, 3)
    # array element [k, j, i] is voxel index (i, j, k)
    np.testing.assert_allclose(pts[3, 2, 1].numpy(), grid.index_to_world(np.array([1.0, 2.0, 3.0])), atol=1e-10)


@pytest.mark.parametrize("grid", GRIDS)
def test_normalized_frame(grid: ImageGrid) -> None:
    n = np.asarray(grid.size, dtype=float)
    # voxel centres at (2i+1)/n - 1; the outer faces at -1 and +1
    corners = grid.index_to_world(np.stack([np.full(3, -0.5), n - 0.5]))
    np.testing.assert_allclose(grid.world_to_normalized(corners), [[-1, -1, -1], [1, 1, 1]], atol=1e-12)
    centre = grid.index_to_world(np.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(grid.world_to_normalized(centre), (2 * np.array([2.0, 1.0, 0.0]) + 1) / n - 1, atol=1e-12)


@pytest.mark.parametrize("grid", GRIDS)
def test_normalized_points_equal_the_world_round_trip(grid: ImageGrid) -> None:
    """The voxel centres' normalised coordinates straight from the index equal those through
    world coordinates (the grids include anisotropic spacing, an oblique direction and an origin)."""
    direct = grid.normalized_points(dtype=torch.float64)
    via_world = grid.world_to_normalized(grid.world_points(dtype=torch.float64))
    assert direct.shape == (*grid.shape_zyx, 3)
    torch.testing.assert_close(direct, via_world, atol=1e-12, rtol=0)


def test_sample_at_voxel_centres_returns_voxels(grid: ImageGrid, sitk_image: sitk.Image) -> None:
    data = to_batch_tensor(sitk.GetArrayFromImage(sitk_image), dtype=torch.float64)
    out = sample(data, grid, grid.world_points(dtype=torch.float64))
    torch.testing.assert_close(out, data, atol=1e-10, rtol=0)


@pytest.mark.parametrize("grid", GRIDS)
def test_world_translation_warp_matches_sitk_resample(grid: ImageGrid) -> None:
    rng = np.random.default_rng(2)
    img = sitk.GetImageFromArray(rng.normal(size=grid.shape_zyx))
    grid.copy_to_sitk(img)
    img = sitk.SmoothingRecursiveGaussian(img, 2.0)
    # an affine world map x -> A (x - c) + c + t about the grid centre c, evaluated on a second,
    # differently oriented target grid centred on the source
    a = np.eye(3) + 0.05 * rng.normal(size=(3, 3))
    t = np.array([1.2, -0.7, 2.0])
    c = grid.index_to_world((np.asarray(grid.size) - 1) / 2)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(a.ravel().tolist())
    aff.SetTranslation(t.tolist())
    aff.SetCenter(c.tolist())
    target = oblique_grid(size=(11, 9, 8), spacing=(1.0, 1.7, 2.2), origin=(0, 0, 0), angles=(0, 15, -10))
    offset = c - target.index_to_world((np.asarray(target.size) - 1) / 2)
    target = ImageGrid(target.size, target.spacing, tuple(offset), target.direction)
    ref_img = sitk.Image(list(target.size), sitk.sitkFloat64)
    target.copy_to_sitk(ref_img)
    expected = sitk.GetArrayFromImage(sitk.Resample(img, ref_img, aff, sitk.sitkLinear, np.nan))

    data = to_batch_tensor(sitk.GetArrayFromImage(img), dtype=torch.float64)
    x = target.world_points(dtype=torch.float64)
    mapped = (x - torch.as_tensor(c)) @ torch.as_tensor(a).T + torch.as_tensor(c + t)
    # ITK clamps the interpolation within half a voxel of the border, like padding_mode="border"
    ours = sample(data, grid, mapped, padding_mode="border")[0, 0].numpy()
    inside = np.isfinite(expected)
    assert inside.sum() > 50
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-8)


def test_resized_keeps_field_of_view(grid: ImageGrid) -> None:
    small = grid.resized((7, 5, 6))
    assert small.direction == grid.direction
    for g in (grid, small):
        lo = g.index_to_world(np.full(3, -0.5))
        hi = g.index_to_world(np.asarray(g.size) - 0.5)
        np.testing.assert_allclose(lo, grid.index_to_world(np.full(3, -0.5)), atol=1e-10)
        np.testing.assert_allclose(hi, grid.index_to_world(np.asarray(grid.size) - 0.5), atol=1e-10)
    down = grid.downsampled(2)
    assert down.size == (7, 5, 6)
    np.testing.assert_allclose(down.spacing, 2 * np.asarray(grid.spacing))
    # coarse voxel 0 sits midway between fine voxels 0 and 1
    np.testing.assert_allclose(down.origin, grid.index_to_world(np.full(3, 0.5)), atol=1e-10)
    with pytest.raises(ValueError, match="not divisible"):
        oblique_grid(size=(7, 10, 12)).downsampled(2)


def test_resample_linear_function_is_exact(grid: ImageGrid) -> None:
    """A field linear in world coordinates survives resampling to another grid (interior)."""
    w = torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64)
    f = (grid.world_points(dtype=torch.float64) @ w)[None, None]
    target = grid.resized((20, 14, 17))
    out = resample_to_grid(f, grid, target)
    expected = target.world_points(dtype=torch.float64) @ w
    idx = grid.world_to_index(target.world_points(dtype=torch.float64))
    inside = ((idx >= 0) & (idx <= torch.tensor(grid.size, dtype=torch.float64) - 1)).all(-1)
    torch.testing.assert_close(out[0, 0][inside], expected[inside], atol=1e-9, rtol=0)


def test_ras_lps_flip() -> None:
    p = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, -6.0]])
    np.testing.assert_array_equal(lps_to_ras(p), [[-1.0, -2.0, 3.0], [4.0, -5.5, -6.0]])
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras(p)), p)
    t = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(lps_to_ras(t), torch.tensor([-1.0, -2.0, 3.0]))
    with pytest.raises(ValueError, match="length 3"):
        lps_to_ras(np.zeros((4, 2)))


@pytest.mark.parametrize("grid", GRIDS)
def test_ijk_to_ras_round_trip(grid: ImageGrid) -> None:
    ijk_to_ras = grid.index_to_ras_matrix()
    idx = np.array([3.0, 1.0, 2.0])
    ras = ijk_to_ras[:3, :3] @ idx + ijk_to_ras[:3, 3]
    np.testing.assert_allclose(ras, lps_to_ras(grid.index_to_world(idx)), atol=1e-10)
    again = ImageGrid.from_ijk_to_ras(ijk_to_ras, grid.size)
    assert again.is_close(grid, tol_mm=1e-9)
    np.testing.assert_allclose(again.spacing, grid.spacing, atol=1e-12)
    np.testing.assert_allclose(matrix_lps_to_ras(matrix_lps_to_ras(ijk_to_ras)), ijk_to_ras)


def test_world_transform_flip_conjugates() -> None:
    m = np.eye(4)
    m[:3, :3] = oblique_grid().direction_matrix
    m[:3, 3] = [1.0, 2.0, 3.0]
    p_lps = np.array([5.0, -6.0, 7.0])
    q_lps = m[:3, :3] @ p_lps + m[:3, 3]
    m_ras = world_transform_lps_to_ras(m)
    np.testing.assert_allclose(m_ras[:3, :3] @ lps_to_ras(p_lps) + m_ras[:3, 3], lps_to_ras(q_lps), atol=1e-12)


def test_vector_conversions(grid: ImageGrid) -> None:
    v = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]])
    world = grid.index_vectors_to_world(v)
    np.testing.assert_allclose(world, grid.index_to_world(v) - grid.index_to_world(np.zeros(3)), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(world[0]), grid.spacing[0])
    np.testing.assert_allclose(grid.world_vectors_to_index(world), v, atol=1e-12)
    field = torch.randn(2, 3, *grid.shape_zyx, dtype=torch.float64)
    torch.testing.assert_close(grid.world_field_to_index(grid.index_field_to_world(field)), field)


def test_from_sitk_and_is_close(grid: ImageGrid, sitk_image: sitk.Image) -> None:
    assert ImageGrid.from_sitk(sitk_image) == grid
    shifted = ImageGrid(grid.size, grid.spacing, tuple(np.asarray(grid.origin) + 1e-3), grid.direction)
    assert grid.is_close(shifted, tol_mm=1e-2)
    assert not grid.is_close(shifted, tol_mm=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=(0, 3, 3)), "size"),
        (dict(size=(3, 3)), "size"),
        (dict(size=(3, 3, 3), spacing=(1.0, -1.0, 1.0)), "spacing"),
        (dict(size=(3, 3, 3), origin=(0.0, np.nan, 0.0)), "origin"),
        (dict(size=(3, 3, 3), direction=(1.0, 0, 0, 0, 2.0, 0, 0, 0, 1.0)), "orthonormal"),
    ],
)
def test_bad_grids_raise(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ImageGrid(**kwargs)


def test_bad_sample_inputs_name_shapes(grid: ImageGrid) -> None:
    data = torch.zeros(1, 1, *grid.shape_zyx)
    with pytest.raises(ValueError, match=r"\(1, 1, 5, 5, 5\).*\(12, 10, 14\)"):
        sample(torch.zeros(1, 1, 5, 5, 5), grid, grid.world_points())
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        sample(torch.zeros(*grid.shape_zyx), grid, grid.world_points())
    with pytest.raises(ValueError, match="points"):
        sample(data, grid, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="2-D|3-D"):
        ImageGrid.from_sitk(sitk.Image(4, 4, sitk.sitkUInt8))


# ----------------------------------------------------------------------------------------------
# Array-index order (z, y, x) <-> ITK order (x, y, z), against SimpleITK's array layout
# ----------------------------------------------------------------------------------------------
def _numbered_image(grid: ImageGrid) -> tuple[sitk.Image, np.ndarray]:
    """An image on ``grid`` whose voxels hold distinct values, and its ``GetArrayFromImage`` array."""
    arr = np.arange(int(np.prod(grid.size)), dtype=np.int32).reshape(grid.shape_zyx)
    img = sitk.GetImageFromArray(arr)
    grid.copy_to_sitk(img)
    return img, sitk.GetArrayFromImage(img)


@pytest.mark.parametrize("grid", GRIDS)
def test_shape_and_spacing_zyx_follow_sitk_array_layout(grid: ImageGrid) -> None:
    img, arr = _numbered_image(grid)
    assert arr.shape == grid.shape_zyx == xyz_to_zyx(img.GetSize())
    assert zyx_to_xyz(arr.shape) == tuple(img.GetSize()) == grid.size
    assert grid.spacing_zyx == xyz_to_zyx(img.GetSpacing()) == (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    assert len(set(grid.spacing_zyx)) == 3  # anisotropic, so a wrong order would show
    rng = np.random.default_rng(2)
    for ijk in rng.integers(0, grid.size, size=(10, 3)):
        index = tuple(int(v) for v in ijk)
        assert arr[xyz_to_zyx(index)] == img.GetPixel(index)
    # the spacing of array axis a is the distance between neighbours along it
    for a in range(3):
        step = [0, 0, 0]
        step[a] = 1
        p0 = np.asarray(img.TransformIndexToPhysicalPoint((0, 0, 0)))
        p1 = np.asarray(img.TransformIndexToPhysicalPoint(zyx_to_xyz(step)))
        assert np.linalg.norm(p1 - p0) == pytest.approx(grid.spacing_zyx[a], abs=1e-9)


@pytest.mark.parametrize("grid", GRIDS)
def test_array_index_to_world_matches_sitk(grid: ImageGrid) -> None:
    img, arr = _numbered_image(grid)
    rng = np.random.default_rng(3)
    values = rng.choice(arr.size, size=12, replace=False)
    kji = np.argwhere(np.isin(arr, values))  # (n, 3) array indices (z, y, x)
    ref = np.array([img.TransformIndexToPhysicalPoint(tuple(int(v) for v in zyx_to_xyz(row))) for row in kji])
    ours = grid.array_index_to_world(kji)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    np.testing.assert_allclose(grid.array_index_to_world(kji[0]), ref[0], atol=1e-10)
    # torch: integer indices (torch.nonzero) become float64, floating ones keep their dtype
    t = grid.array_index_to_world(torch.as_tensor(kji))
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-10)
    t32 = grid.array_index_to_world(torch.as_tensor(kji, dtype=torch.float32))
    assert t32.dtype == torch.float32
    np.testing.assert_allclose(t32.numpy(), ref, atol=1e-3)
    # a continuous position (e.g. a centroid) matches sitk's continuous index
    centre_zyx = kji.mean(axis=0)
    expected = img.TransformContinuousIndexToPhysicalPoint(zyx_to_xyz(centre_zyx).tolist())
    np.testing.assert_allclose(grid.array_index_to_world(centre_zyx), expected, atol=1e-10)


@pytest.mark.parametrize("grid", GRIDS)
def test_world_to_array_index_indexes_the_sitk_array(grid: ImageGrid) -> None:
    img, arr = _numbered_image(grid)
    rng = np.random.default_rng(4)
    ijk = rng.integers(0, grid.size, size=(15, 3))
    world = np.array([img.TransformIndexToPhysicalPoint(tuple(int(v) for v in row)) for row in ijk])
    kji = grid.world_to_array_index(world)
    np.testing.assert_allclose(kji, ijk[:, ::-1], atol=1e-9)  # reference layout written out on purpose
    for row, p in zip(np.rint(kji).astype(int), world):
        assert arr[tuple(row)] == img.GetPixel(img.TransformPhysicalPointToIndex(p.tolist()))
    np.testing.assert_allclose(grid.array_index_to_world(kji), world, atol=1e-9)
    t = grid.world_to_array_index(torch.as_tensor(world))
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), kji, atol=1e-12)


def test_index_and_array_axes() -> None:
    grid = oblique_grid(size=(5, 7, 9))
    _, arr = _numbered_image(grid)
    for index_axis in range(3):
        array_axis = index_axis_to_array_axis(index_axis)
        assert arr.shape[array_axis] == grid.size[index_axis]
        assert array_axis_to_index_axis(array_axis) == index_axis
        assert arr.strides[array_axis] == 4 * int(np.prod(grid.size[:index_axis]))  # sitk: x runs fastest
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="axis"):
            index_axis_to_array_axis(bad)
        with pytest.raises(ValueError, match="axis"):
            array_axis_to_index_axis(bad)


@pytest.mark.parametrize("grid", GRIDS)
def test_array_slices_match_sitk_crop_and_cropped_grid(grid: ImageGrid) -> None:
    img, arr = _numbered_image(grid)
    lo, hi = (1, 2, 3), (grid.size[0] - 2, grid.size[1] - 1, grid.size[2] - 2)
    crop = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]  # SimpleITK slices in (x, y, z) order
    np.testing.assert_array_equal(arr[array_slices(lo, hi)], sitk.GetArrayFromImage(crop))
    sub = grid.cropped(lo, hi)
    assert sub.shape_zyx == arr[array_slices(lo, hi)].shape
    np.testing.assert_allclose(sub.origin, crop.GetOrigin(), atol=1e-10)


def test_order_helpers_types_copies_and_errors() -> None:
    assert xyz_to_zyx([1, 2, 3]) == (3, 2, 1) and zyx_to_xyz((4.0, 5.0, 6.0)) == (6.0, 5.0, 4.0)
    slices = (slice(0, 1), slice(2, 3), slice(4, 5))
    assert zyx_to_xyz(slices) == slices[::-1]
    a = np.arange(12).reshape(4, 3)
    b = zyx_to_xyz(a)
    np.testing.assert_array_equal(b, a[:, [2, 1, 0]])
    assert b.flags.c_contiguous and b.dtype == a.dtype
    b[0, 0] = -1
    assert a[0, 2] == 2  # a new array, not a view
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.testing.assert_close(xyz_to_zyx(t), t[:, [2, 1, 0]])
    for bad in ([1, 2], np.zeros((4, 2)), torch.zeros(3, 4), np.float64(1.0)):
        with pytest.raises((ValueError, TypeError)):
            xyz_to_zyx(bad)


def test_normalized_to_index_inverts_the_normalised_coordinates() -> None:
    """On an oblique, anisotropic grid with a non-zero origin: index -> world -> normalised -> index."""
    from helpers import oblique_grid

    from MLVIRNETLib.core.geometry import normalized_to_index

    grid = oblique_grid(size=(14, 10, 12), spacing=(0.7, 1.3, 2.5), origin=(-12.5, 20.25, 33.0))
    index = np.array([[0.0, 0.0, 0.0], [13.0, 9.0, 11.0], [-0.5, 4.25, 11.5], [6.3, -0.5, 2.0]])
    normalized = np.asarray(grid.world_to_normalized(grid.index_to_world(index)))
    back = np.stack([normalized_to_index(normalized[:, a], grid.size[a]) for a in range(3)], axis=1)
    np.testing.assert_allclose(back, index, atol=1e-9)
    np.testing.assert_allclose(normalized_to_index(np.array([-1.0, 1.0]), 14), [-0.5, 13.5])
