"""Image reading/writing (files and DICOM series), atomic output, tensor conversion."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid
from helpers import write_dicom_series as write_dicom

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.io.atomic import atomic_output
from MLVIRNETLib.io.images import image_to_tensor, read_image, read_image_grid, tensor_to_image, write_image


@pytest.fixture
def int_image():
    grid = oblique_grid(size=(12, 9, 7), spacing=(0.6, 0.9, 2.5), origin=(-80.5, 33.25, -412.0))
    rng = np.random.default_rng(3)
    arr = rng.integers(-1024, 2000, size=grid.shape_zyx).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    grid.copy_to_sitk(img)
    return img, grid, arr


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha", "mhd"])
def test_write_read_round_trip(tmp_path, int_image, ext):
    img, grid, arr = int_image
    path = write_image(img, tmp_path / f"ct.{ext}")
    back = read_image(path)
    assert back.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert ImageGrid.from_sitk(back).is_close(grid, tol_mm=1e-4)
    assert read_image_grid(path).is_close(grid, tol_mm=1e-4)
    expected = {f"ct.{ext}"} | ({"ct.zraw"} if ext == "mhd" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temporary left-overs


def write_dicom_series(folder, arr, spacing, origin, direction):
    """Write ``arr`` (D, H, W) int16 as a DICOM series with the given LPS geometry."""
    image = sitk.GetImageFromArray(arr)
    ImageGrid(tuple(arr.shape[::-1]), spacing, origin, direction).copy_to_sitk(image)
    folder.mkdir()
    write_dicom(image, folder, "1.2.826.0.1.3680043.2.1125.77.1")


def test_read_dicom_series_folder(tmp_path):
    grid = oblique_grid(size=(10, 8, 6), spacing=(0.7, 0.9, 2.0), origin=(-40.0, 12.5, 88.0), angles=(0.0, 0.0, 20.0))
    arr = np.arange(np.prod(grid.shape_zyx), dtype=np.int16).reshape(grid.shape_zyx) - 300
    write_dicom_series(tmp_path / "series", arr, grid.spacing, grid.origin, grid.direction)
    img = read_image(tmp_path / "series")
    assert np.array_equal(sitk.GetArrayFromImage(img), arr)
    assert ImageGrid.from_sitk(img).is_close(grid, tol_mm=1e-3)


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"definitely not a nifti file")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "junk.nii.gz")
    sitk.WriteImage(sitk.Image(8, 6, sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(ValueError, match="2-D"):
        read_image(tmp_path / "flat.nii.gz")
    with pytest.raises(ValueError, match="2-D"):
        read_image_grid(tmp_path / "flat.nii.gz")
    sitk.WriteImage(sitk.Image(8, 6, 1, sitk.sitkInt16), str(tmp_path / "oneslice.nrrd"))
    with pytest.raises(ValueError, match="2-D"):
        read_image(tmp_path / "oneslice.nrrd")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no DICOM series"):
        read_image(tmp_path / "empty_dir")


def test_failed_write_keeps_existing_file_and_leaves_nothing(tmp_path, int_image):
    img, _, _ = int_image
    target = tmp_path / "out.png"  # PNG cannot hold a 3-D int16 volume
    target.write_bytes(b"previous content")
    with pytest.raises(ValueError, match="cannot write"):
        write_image(img, target)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        write_image(img, tmp_path / "nope" / "out.nii.gz")


def test_atomic_output_discards_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_tensor_round_trip(int_image):
    img, grid, arr = int_image
    t, g = image_to_tensor(img)
    assert t.shape == (1, 1, *grid.shape_zyx) and t.dtype == torch.float32
    assert g == ImageGrid.from_sitk(img)
    assert torch.equal(t[0, 0], torch.as_tensor(arr, dtype=torch.float32))
    back = tensor_to_image(t + 0.4, g, pixel_type=sitk.sitkInt16)  # rounds to nearest
    assert back.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert ImageGrid.from_sitk(back) == g
    float_img = tensor_to_image(t[0, 0].double(), g)
    assert float_img.GetPixelID() == sitk.sitkFloat64


def test_tensor_to_image_clips_and_checks_shape(int_image):
    _, grid, _ = int_image
    t = torch.full((1, 1, *grid.shape_zyx), 300.6)
    t[0, 0, 0, 0, 0] = -5.0
    img = tensor_to_image(t, grid, pixel_type=sitk.sitkUInt8)
    a = sitk.GetArrayFromImage(img)
    assert a[0, 0, 0] == 0 and a.max() == 255
    with pytest.raises(ValueError, match="does not match grid"):
        tensor_to_image(torch.zeros(3, 4, 5), grid)
    with pytest.raises(ValueError, match=r"\(1, 1, D, H, W\)"):
        tensor_to_image(torch.zeros(2, 1, *grid.shape_zyx), grid)


def test_image_to_tensor_rejects_vector_images():
    vec = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    with pytest.raises(ValueError, match="scalar"):
        image_to_tensor(vec)


@pytest.mark.parametrize("pixel_type,np_type", [(sitk.sitkInt16, np.int16), (sitk.sitkUInt8, np.uint8),
                                                (sitk.sitkInt32, np.int32), (sitk.sitkFloat32, np.float32)])
def test_block_wise_cast_equals_the_whole_volume_cast(monkeypatch, pixel_type: int, np_type) -> None:
    """Casting a block of slices at a time gives what one rint/clip of the whole float64 volume
    gave, halves and values beyond the type's range included."""
    from MLVIRNETLib.io import images

    rng = np.random.default_rng(5)
    array = (rng.normal(scale=30000.0, size=(7, 5, 6)).astype(np.float32))
    array[0, 0, :4] = [0.5, 1.5, -2.5, 1e30]
    monkeypatch.setattr(images, "CAST_CHUNK_VOXELS", 40)  # 1 slice per block
    got = images.cast_to_pixel_type(array, pixel_type)
    if np.issubdtype(np_type, np.integer):
        info = np.iinfo(np_type)
        expected = np.clip(np.rint(array.astype(np.float64)), info.min, info.max).astype(np_type)
    else:
        expected = array.astype(np_type)
    assert got.dtype == np_type and np.array_equal(got, expected)
    grid = oblique_grid(size=(6, 5, 7))
    image = tensor_to_image(torch.from_numpy(array), grid, pixel_type=pixel_type)
    assert np.array_equal(sitk.GetArrayFromImage(image), expected)
    with pytest.raises(ValueError, match="pixel_type must be"):
        images.cast_to_pixel_type(array, sitk.sitkVectorFloat32)
