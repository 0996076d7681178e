"""The Slicer module's logic against real MRML (the ``slicer-core`` wheel, no Slicer application).

Volumes, grid transforms, transform files, markups and tables are real MRML/VTK objects; the
expected values come from the library (geometry, deformation, metrics) and from SimpleITK.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

slicer = pytest.importorskip(
    "slicer", reason="real MRML needs the slicer-core wheel: pip install 'slicer-core==5.13.*' 'vtk==9.6.2'"
)
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core (no vtkMRMLScene)", allow_module_level=True)
vtk = pytest.importorskip("vtk")

from helpers import oblique_grid  # noqa: E402

from MLVIRNETLib import mrml as L  # noqa: E402
from MLVIRNETLib.core.deformation import Deformation  # noqa: E402
from MLVIRNETLib.core.geometry import ImageGrid, lps_to_ras, ras_to_lps  # noqa: E402

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def smooth_deformation(grid: ImageGrid, amplitude: float = 3.0, dtype=torch.float32) -> Deformation:
    """A smooth analytic displacement (a few mm) on ``grid``."""
    c = torch.as_tensor(grid.index_to_world((np.asarray(grid.size) - 1) / 2), dtype=F64)
    scale = float(np.max(grid.extent))

    def fn(x: torch.Tensor) -> torch.Tensor:
        r = (x - c) / scale
        return amplitude * torch.stack(
            [torch.sin(2 * r[..., 1] + 0.3), torch.cos(3 * r[..., 2]) - 0.5, torch.sin(r[..., 0] + r[..., 1])], dim=-1
        )

    return Deformation.from_function(grid, fn, dtype=dtype)


def random_points_inside(grid: ImageGrid, n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` LPS points strictly inside the grid (between voxel centres)."""
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0.1, 0.9, size=(n, 3)) * (np.asarray(grid.size) - 1)
    return np.asarray(grid.index_to_world(idx))


def volume_node_from_array(scene, array: np.ndarray, ijk_to_ras: np.ndarray, name: str = "volume"):
    """A scalar volume node built directly with VTK (not through the code under test)."""
    from vtk.util import numpy_support

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(L.numpyToVtkMatrix(ijk_to_ras))
    return node


# ----------------------------------------------------------------------------------------------
# volumes
# ----------------------------------------------------------------------------------------------
def test_volume_node_round_trip_keeps_geometry_and_voxels(scene):
    grid = oblique_grid(size=(9, 7, 5), spacing=(0.7, 1.3, 2.5), origin=(-12.5, 20.25, 33.0), flip_z=True)
    rng = np.random.default_rng(3)
    array = rng.integers(-1024, 2000, size=grid.shape_zyx).astype(np.int16)
    ijk_to_ras = grid.index_to_ras_matrix()
    node = volume_node_from_array(scene, array, ijk_to_ras)

    image = L.volumeNodeToImage(node)
    # geometry: SimpleITK's physical point of voxel (i, j, k) is the node's RAS point, in LPS
    assert image.GetSize() == grid.size
    assert image.GetPixelID() == sitk.sitkInt16
    for idx in [(0, 0, 0), (8, 0, 0), (0, 6, 0), (0, 0, 4), (5, 3, 2)]:
        ras = (ijk_to_ras @ np.array([*idx, 1.0]))[:3]
        assert np.allclose(image.TransformIndexToPhysicalPoint(idx), ras_to_lps(ras), atol=1e-9)
        # voxel (i, j, k) of the node is voxel (i, j, k) of the image
        assert image[idx] == node.GetImageData().GetScalarComponentAsDouble(*idx, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)

    back = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "back")
    L.updateVolumeNodeFromImage(back, image)
    m = vtk.vtkMatrix4x4()
    back.GetIJKToRASMatrix(m)
    np.testing.assert_allclose(L.vtkMatrixToNumpy(m), ijk_to_ras, atol=1e-12)
    np.testing.assert_array_equal(L.arrayFromVolumeNode(back), array)
    assert back.GetImageData().GetScalarType() == vtk.VTK_SHORT
    assert back.GetImageData().GetDimensions() == grid.size


def test_volume_node_errors_are_clear(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no image data"):
        L.volumeNodeToImage(empty)
    grid = oblique_grid(size=(4, 3, 2))
    node = volume_node_from_array(scene, np.zeros(grid.shape_zyx, np.float32), grid.index_to_ras_matrix())
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "P")
    node.SetAndObserveTransformNodeID(parent.GetID())
    with pytest.raises(ValueError, match="under the transform 'P'"):
        L.RegistrationLogic(scene).warpVolume(node, parent, node)
    with pytest.raises(ValueError, match="must be a vtkMRMLScalarVolumeNode"):
        L.RegistrationLogic(scene).register(parent, node)


# ----------------------------------------------------------------------------------------------
# grid transforms
# ----------------------------------------------------------------------------------------------
def grid_transform_node(scene, deformation: Deformation):
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "T")
    node.SetAndObserveTransformFromParent(L.deformationToGridTransform(deformation))
    return node


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_transform_maps_fixed_points_like_the_deformation(scene, dtype):
    grid = oblique_grid(size=(12, 9, 7), flip_z=True)
    deformation = smooth_deformation(grid, dtype=dtype)
    node = grid_transform_node(scene, deformation)
    transform = node.GetTransformFromParent()
    assert transform.IsA("vtkOrientedGridTransform")

    points = random_points_inside(grid, 50)
    # points at and beyond the border: both continue the border displacement
    points = np.concatenate([points, grid.index_to_world(np.array([[0.0, 0, 0], [-2.0, 3, 1], [13.5, 8.2, 9.0]]))])
    expected = deformation.map_points(torch.as_tensor(points, dtype=F64))[0].numpy()
    got = np.array([transform.TransformPoint(*lps_to_ras(p)) for p in points])
    np.testing.assert_allclose(ras_to_lps(got), expected, atol=1e-3)
    # the vectorised helper agrees with TransformPoint
    np.testing.assert_allclose(L.transformPointsRas(transform, lps_to_ras(points)), got, atol=1e-9)


def test_grid_transform_back_to_deformation_is_exact(scene):
    grid = oblique_grid(size=(10, 8, 6))
    deformation = smooth_deformation(grid)
    node = grid_transform_node(scene, deformation)
    back = L.gridTransformToDeformation(node.GetTransformFromParent())
    assert back.grid.is_close(grid, tol_mm=1e-9)
    torch.testing.assert_close(back.displacement, deformation.displacement, atol=1e-6, rtol=0)
    # any transform evaluated on the grid gives the same field
    sampled = L.transformToDeformation(node.GetTransformFromParent(), grid)
    torch.testing.assert_close(sampled.displacement, deformation.displacement, atol=1e-4, rtol=0)


def test_linear_transform_evaluated_on_a_grid(scene):
    grid = oblique_grid(size=(6, 5, 4))
    shift_ras = np.array([2.0, -3.0, 4.5])
    linear = vtk.vtkTransform()
    linear.Translate(*shift_ras)
    d = L.transformToDeformation(linear, grid)
    expected = torch.as_tensor(ras_to_lps(shift_ras), dtype=torch.float32).view(1, 3, 1, 1, 1).expand_as(d.displacement)
    torch.testing.assert_close(d.displacement, expected, atol=1e-5, rtol=0)


def test_h5_file_written_by_slicer_maps_like_the_cli_field(scene, tmp_path):
    grid = oblique_grid(size=(11, 8, 6), flip_z=True)
    deformation = smooth_deformation(grid)
    node = grid_transform_node(scene, deformation)
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    path = tmp_path / "slicer_field.h5"
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1
    points = random_points_inside(grid, 40, seed=5)

    transform = sitk.ReadTransform(str(path))
    from_slicer = np.array([transform.TransformPoint(tuple(p)) for p in points])
    expected = deformation.map_points(torch.as_tensor(points, dtype=F64))[0].numpy()
    np.testing.assert_allclose(from_slicer, expected, atol=1e-3)

    # the CLI writes the same field: compare the two files' point maps
    from MLVIRNETLib.io import fields
    cli_path = tmp_path / "cli_field.h5"
    fields.write_field(deformation, cli_path)
    from_cli = sitk.ReadTransform(str(cli_path))
    np.testing.assert_allclose(from_slicer, [from_cli.TransformPoint(tuple(p)) for p in points], atol=1e-3)

    # and Slicer reads the CLI's file back as the same transform from parent: the same grid and
    # vectors, exact at the voxel centres. (Slicer interpolates grids read from files cubically,
    # ITK and the library trilinearly, so between voxel centres they differ slightly until the
    # interpolation is set to linear.)
    loaded = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "loaded")
    reader = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    reader.SetFileName(str(cli_path))
    assert reader.ReadData(loaded) == 1
    loaded_transform = loaded.GetTransformFromParent()
    back = L.gridTransformToDeformation(loaded_transform)
    assert back.grid.is_close(grid, tol_mm=1e-6)
    torch.testing.assert_close(back.displacement, deformation.displacement, atol=1e-5, rtol=0)
    centres = grid.index_to_world(np.array([[0.0, 0, 0], [3, 4, 5], [10, 7, 2], [6, 1, 3]]))
    at_centres = L.transformPointsRas(loaded_transform, lps_to_ras(centres))
    np.testing.assert_allclose(
        ras_to_lps(at_centres), deformation.map_points(torch.as_tensor(centres, dtype=F64))[0].numpy(), atol=1e-4
    )
    loaded_transform.SetInterpolationModeToLinear()
    got = L.transformPointsRas(loaded_transform, lps_to_ras(points))
    np.testing.assert_allclose(ras_to_lps(got), expected, atol=1e-3)


def test_warp_volume_matches_library_warp(scene):
    fixed_grid = oblique_grid(size=(10, 9, 7), origin=(-3.0, 4.0, 5.0))
    moving_grid = oblique_grid(size=(12, 10, 8), spacing=(0.9, 1.1, 2.0), origin=(-5.0, 2.0, 1.0), angles=(5, 10, 20))
    rng = np.random.default_rng(2)
    moving_array = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.normal(size=moving_grid.shape_zyx) * 300), 1.0)
    ).astype(np.float32)
    moving = volume_node_from_array(scene, moving_array, moving_grid.index_to_ras_matrix(), "moving")
    fixed = volume_node_from_array(scene, np.zeros(fixed_grid.shape_zyx, np.float32), fixed_grid.index_to_ras_matrix(), "fixed")
    deformation = smooth_deformation(fixed_grid, amplitude=2.0)
    node = grid_transform_node(scene, deformation)
    before = L.arrayFromVolumeNode(moving)

    out = L.RegistrationLogic(scene).warpVolume(moving, node, fixed)
    from MLVIRNETLib.core.sampling import to_batch_tensor

    expected = deformation.warp(to_batch_tensor(moving_array), moving_grid)[0, 0].numpy()
    # slab-wise float32 sampling coordinates (as `mlvirnet warp`): the same values to float32 rounding
    np.testing.assert_allclose(L.arrayFromVolumeNode(out), expected, atol=1e-3)
    assert L.gridFromVolumeNode(out).is_close(fixed_grid, tol_mm=1e-9)
    np.testing.assert_array_equal(L.arrayFromVolumeNode(moving), before)  # input untouched
    with pytest.raises(ValueError, match="must differ from the moving volume"):
        L.RegistrationLogic(scene).warpVolume(moving, node, fixed, outputVolumeNode=moving)


# ----------------------------------------------------------------------------------------------
# markups and tables
# ----------------------------------------------------------------------------------------------
def test_markups_points_round_trip(scene):
    points = np.array([[1.5, -2.0, 3.25], [-10.0, 20.0, -30.0]])
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    L.setMarkupsPoints(node, points)
    assert node.GetNumberOfControlPoints() == 2
    assert node.GetNthControlPointLabel(1) == "2"
    ras = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(0, ras)
    np.testing.assert_allclose(ras, lps_to_ras(points[0]))
    np.testing.assert_allclose(L.markupsToPoints(node), points)


def test_segmentation_mask_is_exported_on_the_reference_grid(scene):
    grid = oblique_grid(size=(12, 10, 8))
    reference = volume_node_from_array(scene, np.zeros(grid.shape_zyx, np.int16), grid.index_to_ras_matrix(), "ref")
    labels = np.zeros(grid.shape_zyx, np.uint8)
    labels[2:6, 3:8, 4:10] = 1
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lungs")
    image = sitk.GetImageFromArray(labels)
    grid.copy_to_sitk(image)
    L.updateVolumeNodeFromImage(labelmap, image)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # exists in every Slicer scene
    nodes_before = scene.GetNumberOfNodes()

    mask = L.maskNodeToImage(segmentation, reference)
    assert ImageGrid.from_sitk(mask).is_close(grid, tol_mm=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask) > 0, labels > 0)
    assert scene.GetNumberOfNodes() == nodes_before  # the temporary labelmap is gone
    # a labelmap is used as it is
    np.testing.assert_array_equal(sitk.GetArrayFromImage(L.maskNodeToImage(labelmap, reference)), labels)
    with pytest.raises(ValueError, match="labelmap volume or segmentation"):
        L.maskNodeToImage(scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode"), reference)


def test_compute_tre_through_a_grid_transform_equals_metrics_tre(scene):
    from MLVIRNETLib.evaluation import metrics

    grid = oblique_grid(size=(12, 9, 7), flip_z=True)
    deformation = smooth_deformation(grid)
    transform = grid_transform_node(scene, deformation)
    fixed_points = random_points_inside(grid, 25, seed=1)
    moving_points = fixed_points + np.random.default_rng(2).normal(scale=2.0, size=fixed_points.shape)
    fixed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    moving = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")
    L.setMarkupsPoints(fixed, fixed_points)
    L.setMarkupsPoints(moving, moving_points)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "TRE")
    logic = L.RegistrationLogic(scene)

    stats = logic.computeTRE(fixed, moving, transform, table)
    expected = metrics.tre(fixed_points, moving_points, deformation)
    for key in ("mean", "std", "p95", "max"):
        assert stats[key] == pytest.approx(getattr(expected, key), abs=1e-3)
    assert stats["n"] == 25
    np.testing.assert_allclose(stats["errors"], expected.per_point, atol=1e-3)
    initial = metrics.tre(fixed_points, moving_points)
    assert stats["initial"]["mean"] == pytest.approx(initial.mean, abs=1e-9)
    assert "after registration" in stats["summary"]
    # the table: one row per landmark, the errors in the last column
    assert table.GetNumberOfRows() == 25
    errors = table.GetTable().GetColumnByName("Error (mm)")
    np.testing.assert_allclose([errors.GetValue(i) for i in range(25)], stats["errors"], atol=1e-9)
    assert table.GetTable().GetColumnByName("Landmark").GetValue(0) == "1"
    assert table.GetAttribute("MLVIRNET.TRESummary") == stats["summary"]

    # DIR-LAB protocol: mapped points snapped to the voxel centres of the moving grid
    snap_volume = reference_volume_without_voxels(scene, grid.size, grid.index_to_ras_matrix(), "snap")
    snapped = logic.computeTRE(fixed, moving, transform, snapToVolumeNode=snap_volume)
    expected_snapped = metrics.tre(fixed_points, moving_points, deformation, snap_grid=grid)
    np.testing.assert_allclose(snapped["errors"], expected_snapped.per_point, atol=1e-6)
    assert snapped["mean"] != pytest.approx(stats["mean"], abs=1e-3)

    # moving landmarks placed under the result transform are still read in their own coordinates
    moving.SetAndObserveTransformNodeID(transform.GetID())
    assert logic.computeTRE(fixed, moving, transform)["mean"] == pytest.approx(stats["mean"], abs=1e-9)
    fixed.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="fixed landmarks 'F' is under the transform"):
        logic.computeTRE(fixed, moving, transform)
    fixed.SetAndObserveTransformNodeID(None)
    L.setMarkupsPoints(moving, moving_points[:-1])
    with pytest.raises(ValueError, match="differ in length: 25 fixed"):
        logic.computeTRE(fixed, moving, transform)


# ----------------------------------------------------------------------------------------------
# DIR-LAB
# ----------------------------------------------------------------------------------------------
# From the DIR-LAB reference data (shared data README): size x, y, z and in-plane spacing; 2.5 mm slices.
DIRLAB_4DCT_TABLE = {
    1: ((256, 256, 94), 0.97), 2: ((256, 256, 112), 1.16), 3: ((256, 256, 104), 1.15),
    4: ((256, 256, 99), 1.13), 5: ((256, 256, 106), 1.10), 6: ((512, 512, 128), 0.97),
    7: ((512, 512, 136), 0.97), 8: ((512, 512, 128), 0.97), 9: ((512, 512, 128), 0.97),
    10: ((512, 512, 120), 0.97),
}
# "Initial" column of the mlVIRNET paper's Table 1: mean (population sd) in mm.
PAPER_INITIAL_TRE = {
    1: (3.89, 2.78), 2: (4.34, 3.90), 3: (6.94, 4.05), 4: (9.83, 4.85), 5: (7.48, 5.50),
    6: (10.89, 6.96), 7: (11.03, 7.42), 8: (14.99, 9.00), 9: (7.92, 3.97), 10: (7.30, 6.34),
}


def reference_volume_without_voxels(scene, size, ijk_to_ras, name):
    """A volume node with dimensions and geometry only (landmarks need no voxel values)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(*size)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(L.numpyToVtkMatrix(ijk_to_ras))
    return node


def test_dirlab_landmarks_load_at_the_right_ras_positions(scene, shared_data):
    folder = shared_data / "dirlab" / "4dct_landmarks"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    logic = L.RegistrationLogic(scene)
    rotation = oblique_grid().direction_matrix  # any orientation: the spacing is what matters
    all_errors = []
    for case, (size, inplane) in DIRLAB_4DCT_TABLE.items():
        spacing = np.array([inplane, inplane, 2.5])
        ijk_to_ras = np.eye(4)
        ijk_to_ras[:3, :3] = rotation * spacing[None, :]
        ijk_to_ras[:3, 3] = [10.0, -20.0, 30.0]
        reference = reference_volume_without_voxels(scene, size, ijk_to_ras, f"case{case}")
        fixed = logic.loadDirLabLandmarks(folder / f"Case{case}_300_T00_xyz.txt", reference)
        moving = logic.loadDirLabLandmarks(folder / f"Case{case}_300_T50_xyz.txt", reference)
        assert fixed.GetNumberOfControlPoints() == 300 and fixed.GetLocked()

        # position of landmark i = IJKToRAS @ (1-based index - 1), read with numpy, not the library
        indices = np.loadtxt(folder / f"Case{case}_300_T00_xyz.txt")
        expected_ras = (ijk_to_ras @ np.c_[indices - 1.0, np.ones(300)].T).T[:, :3]
        got_ras = np.array([fixed.GetNthControlPointPosition(i) for i in range(300)])
        np.testing.assert_allclose(got_ras, expected_ras, atol=1e-9)

        stats = logic.computeTRE(fixed, moving)
        assert (round(stats["mean"], 2), round(stats["std"], 2)) == PAPER_INITIAL_TRE[case], f"case {case}"
        all_errors.extend(stats["errors"])
    assert (round(float(np.mean(all_errors)), 2), round(float(np.std(all_errors)), 2)) == (8.46, 6.58)


def test_dirlab_voxel_list_needs_a_reference_volume(scene, shared_data, tmp_path):
    path = shared_data / "dirlab" / "4dct_landmarks" / "Case1_300_T00_xyz.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    logic = L.RegistrationLogic(scene)
    with pytest.raises(ValueError, match="reference volume"):
        logic.loadDirLabLandmarks(path, None)
    with pytest.raises(ValueError, match="grid is needed"):
        logic.importLandmarks(path)
    with pytest.raises(ValueError, match="not found"):
        logic.importLandmarks(tmp_path / "missing.txt")
    # landmarks beyond the image are refused with the library's message
    small = reference_volume_without_voxels(scene, (64, 64, 20), np.eye(4), "small")
    with pytest.raises(ValueError, match="outside the image"):
        logic.loadDirLabLandmarks(path, small)


def test_load_dirlab_case_from_raw_images(scene, shared_data, tmp_path):
    source = shared_data / "dirlab" / "4dct_landmarks"
    if not source.is_dir():
        pytest.skip(f"{source} is absent")
    from MLVIRNETLib.io.dirlab import dirlab_grid

    # DIR-LAB's layout: raw int16 images (HU + 1024, x fastest) and landmark files in a case folder
    case_dir = tmp_path / "Case1Pack"
    (case_dir / "Images").mkdir(parents=True)
    (case_dir / "ExtremePhases").mkdir()
    size = DIRLAB_4DCT_TABLE[1][0]
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    raw = {"T00": (i + 2 * j + 3 * k).astype("<i2"), "T50": (3 * i + j + 5 * k + 7).astype("<i2")}
    for phase, values in raw.items():
        values.tofile(case_dir / "Images" / f"case1_{phase}_s.img")
        (case_dir / "ExtremePhases" / f"Case1_300_{phase}_xyz.txt").write_bytes(
            (source / f"Case1_300_{phase}_xyz.txt").read_bytes()
        )
    logic = L.RegistrationLogic(scene)
    nodes = logic.loadDirLabCase(tmp_path, "4dct:1")

    grid = dirlab_grid("4dct:1")
    for role, phase in (("fixed", "T00"), ("moving", "T50")):
        volume = nodes[f"{role}Volume"]
        assert L.gridFromVolumeNode(volume).is_close(grid, tol_mm=1e-9)
        np.testing.assert_array_equal(L.arrayFromVolumeNode(volume), raw[phase].astype(np.int16) - 1024)
        landmarks = nodes[f"{role}Landmarks"]
        indices = np.loadtxt(source / f"Case1_300_{phase}_xyz.txt")
        expected = (grid.index_to_ras_matrix() @ np.c_[indices - 1.0, np.ones(300)].T).T[:, :3]
        got = np.array([landmarks.GetNthControlPointPosition(n) for n in range(300)])
        np.testing.assert_allclose(got, expected, atol=1e-9)
    assert logic.computeTRE(nodes["fixedLandmarks"], nodes["movingLandmarks"])["mean"] == pytest.approx(3.89, abs=0.005)

    # a broken case adds nothing to the scene
    (case_dir / "Images" / "case1_T50_s.img").write_bytes(b"\0" * 100)
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="bytes"):
        logic.loadDirLabCase(tmp_path, "4dct:1")
    assert scene.GetNumberOfNodes() == count
    with pytest.raises(ValueError, match="no T00 image"):
        logic.loadDirLabCase(source, "4dct:1")


# ----------------------------------------------------------------------------------------------
# registration through the logic
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_pair():
    """A ~48^3 real CT (bundled, relabelled onto an oblique grid) and a known deformation of it.

    Returns ``(fixed image, moving image, truth)`` with ``moving(x) = fixed(x + u_truth(x))``.
    """
    from MLVIRNETLib.paths import bundled_ct_path

    path = bundled_ct_path()
    if not path.is_file():
        pytest.skip(f"the bundled CT {path} is missing")
    ct = sitk.ReadImage(str(path))
    small_grid = ImageGrid.from_sitk(ct).resized((48, 44, 40))
    reference = sitk.Image(list(small_grid.size), sitk.sitkInt16)
    small_grid.copy_to_sitk(reference)
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(ct, sitk.sitkFloat32), 1.5)
    small = sitk.Resample(smooth, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    # the same voxels on an oblique, anisotropic grid with a non-zero origin
    oblique = oblique_grid(size=small_grid.size, spacing=small_grid.spacing, origin=(31.0, -47.5, 12.25))
    fixed = sitk.Image(small)
    oblique.copy_to_sitk(fixed)
    truth = smooth_deformation(oblique, amplitude=4.0)
    values = torch.as_tensor(sitk.GetArrayFromImage(fixed).astype(np.float32))[None, None]
    moving_values = truth.warp(values, oblique)[0, 0].numpy()
    moving = sitk.GetImageFromArray(np.rint(moving_values).astype(np.int16))
    oblique.copy_to_sitk(moving)
    return fixed, moving, truth


def tiny_setup():
    """A small untrained network and options that keep a registration to a few seconds on a CPU."""
    from MLVIRNETLib.networks.cascade import MultilevelNet
    from MLVIRNETLib.registration import RegistrationOptions

    torch.manual_seed(0)
    net = MultilevelNet(levels=2, features=4, depth=2)
    options = RegistrationOptions(grid={"size": (32, 32, 32), "crop_to_lungs": False}, refinement={"iterations": 2}, runtime={"num_threads": 2})
    return net, options


def test_register_gives_a_grid_transform_equal_to_the_library_deformation(scene, ct_pair):
    from MLVIRNETLib.evaluation import metrics

    fixed_image, moving_image, truth = ct_pair
    fixed = L.imageToNewVolumeNode(scene, fixed_image, "fixed")
    moving = L.imageToNewVolumeNode(scene, moving_image, "moving")
    net, options = tiny_setup()
    logic = L.RegistrationLogic(scene)
    progress = []

    transform = logic.register(
        fixed, moving, model=net, device="cpu", affine=False, options=options,
        progressCallback=lambda f, m: progress.append((f, m)),
    )
    # the library run with the options the Logic resolved: what the transform must hold
    from MLVIRNETLib import registration

    resolved = logic.registrationOptions(options, None, False)
    result = registration.register(fixed_image, moving_image, model=net, device="cpu", options=resolved)
    assert logic.lastResult.timings["total"] > 0 and not hasattr(logic.lastResult, "deformation")
    assert transform.IsA("vtkMRMLGridTransformNode")
    assert transform.GetFixedNodeReferenceRole() == "spatialRegistrationFixed"
    assert transform.GetMovingNodeReferenceRole() == "spatialRegistrationMoving"
    assert transform.GetNodeReference(transform.GetFixedNodeReferenceRole()).GetID() == fixed.GetID()
    assert transform.GetNodeReference(transform.GetMovingNodeReferenceRole()).GetID() == moving.GetID()
    assert progress[0][0] == 0.0 and progress[-1][0] == 1.0
    assert all(b[0] >= a[0] for a, b in zip(progress, progress[1:]))
    grid = ImageGrid.from_sitk(fixed_image)
    assert result.deformation.grid.is_close(grid, tol_mm=1e-6)
    assert float(result.deformation.displacement.abs().max()) > 0.05  # a real, non-trivial result

    # TransformPoint on fixed-space points (RAS) = the library's deformation, within 0.01 mm
    points = np.concatenate([random_points_inside(grid, 60, seed=3), grid.index_to_world(np.array([[5.0, 7, 9], [47, 43, 39]]))])
    got = L.transformPointsRas(transform.GetTransformFromParent(), lps_to_ras(points))
    expected = result.deformation.to(F64).map_points(torch.as_tensor(points, dtype=F64))[0].numpy()
    assert np.abs(ras_to_lps(got) - expected).max() < 0.01

    # computeTRE through fiducial nodes = metrics.tre with the library's deformation
    moving_points = truth.to(F64).map_points(torch.as_tensor(points, dtype=F64))[0].numpy()
    fixed_markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    moving_markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")
    L.setMarkupsPoints(fixed_markups, points)
    L.setMarkupsPoints(moving_markups, moving_points)
    stats = logic.computeTRE(fixed_markups, moving_markups, transform, scene.AddNewNodeByClass("vtkMRMLTableNode"))
    reference = metrics.tre(points, moving_points, result.deformation)
    for key in ("mean", "std", "p95", "max"):
        assert stats[key] == pytest.approx(getattr(reference, key), abs=0.01)
    assert stats["initial"]["mean"] == pytest.approx(metrics.tre(points, moving_points).mean, abs=1e-9)

    # the warped volume is the library's warp of the moving image
    warped = logic.warpVolume(moving, transform, fixed)
    from MLVIRNETLib.io.images import image_to_tensor

    values, moving_grid = image_to_tensor(moving_image)
    expected_warp = np.rint(result.deformation.warp(values, moving_grid)[0, 0].numpy())
    assert np.abs(L.arrayFromVolumeNode(warped).astype(float) - expected_warp).max() <= 1.0


def test_register_again_into_the_same_transform_and_cancel(scene, ct_pair):
    from MLVIRNETLib.registration import RegistrationCancelled

    fixed_image, moving_image, _ = ct_pair
    fixed = L.imageToNewVolumeNode(scene, fixed_image, "fixed")
    moving = L.imageToNewVolumeNode(scene, moving_image, "moving")
    net, options = tiny_setup()
    options.refinement.iterations = 0
    logic = L.RegistrationLogic(scene)
    transform = logic.register(fixed, moving, model=net, device="cpu", affine=False, options=options)
    first = L.gridTransformToDeformation(transform.GetTransformFromParent()).displacement.clone()

    # the moving volume under the result, as the module leaves it: a second run reuses the node
    moving.SetAndObserveTransformNodeID(transform.GetID())
    again = logic.register(fixed, moving, transform, model=net, device="cpu", affine=False, options=options)
    assert again.GetID() == transform.GetID()
    torch.testing.assert_close(L.gridTransformToDeformation(again.GetTransformFromParent()).displacement, first)

    # cancelling leaves the scene as it was: no new node, the existing transform unchanged
    count = scene.GetNumberOfNodes()
    mtime = transform.GetMTime()

    def cancel_soon(fraction, message):
        logic.cancel()

    with pytest.raises(RegistrationCancelled):
        logic.register(fixed, moving, model=net, device="cpu", affine=False, options=options, progressCallback=cancel_soon)
    with pytest.raises(RegistrationCancelled):
        logic.register(fixed, moving, transform, model=net, device="cpu", affine=False, options=options, progressCallback=cancel_soon)
    assert scene.GetNumberOfNodes() == count
    assert transform.GetMTime() == mtime

    # a moving volume under some other transform is refused before any work
    other = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "other")
    moving.SetAndObserveTransformNodeID(other.GetID())
    with pytest.raises(ValueError, match="moving volume 'moving' is under the transform 'other'"):
        logic.register(fixed, moving, transform, model=net, device="cpu", options=options)
    moving.SetAndObserveTransformNodeID(None)
    with pytest.raises(ValueError, match="refinement iterations must be integers >= 0"):
        logic.register(fixed, moving, refineIterations=-1, model=net, options=options)


def test_presets_reach_the_library_and_the_advanced_settings_win():
    from MLVIRNETLib.registration import AffineOptions, RegistrationOptions, options_for

    make = L.RegistrationLogic.registrationOptions
    assert make(None, None, True, "fast") == options_for("fast")
    assert make(None, None, True, "accurate") == options_for("accurate")
    assert make(None, 7, False, "fast").refinement.iterations == 7
    assert make(None, (5, 3), True, "accurate").refinement.iterations == (5, 3)
    assert make(None, None, False, "standard").affine is None  # the affine stage skipped
    # explicit options keep their own settings; the module's two settings go on top of a copy
    mine = RegistrationOptions(grid={"size": (32, 32, 32)}, affine=AffineOptions(rigid_iterations=7))
    resolved = make(mine, 2, True)
    assert resolved.affine == AffineOptions(rigid_iterations=7) and resolved.grid.size == (32, 32, 32)
    assert resolved.refinement.iterations == 2 and mine.refinement.iterations != 2
    assert make(RegistrationOptions(affine=None), None, True).affine == AffineOptions()
    with pytest.raises(ValueError, match="unknown preset"):
        make(None, None, True, "turbo")
    with pytest.raises(ValueError, match="refinement iterations must be integers >= 0"):
        make(None, 1.5, True)
    with pytest.raises(TypeError, match="must be a RegistrationOptions"):
        make({"grid": {}}, None, True)

def test_the_former_name_of_the_library_logic_still_works_with_a_deprecation_warning():
    import MLVIRNETLib.mrml as package

    with pytest.warns(DeprecationWarning, match="use RegistrationLogic"):
        assert package.MLVIRNETLogic is L.RegistrationLogic
    with pytest.raises(AttributeError):
        package.NoSuchLogic
