"""Deformation-field files: round trips checked against SimpleITK's own DisplacementFieldTransform."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.io.fields import read_field, write_field

FORMATS = ["nii", "nii.gz", "nrrd", "mha", "mhd", "h5", "tfm"]


def smooth_deformation(grid) -> Deformation:
    """A smooth, non-linear displacement (mm) with different x, y, z components."""

    def fn(x):
        c = x - x.mean(dim=(0, 1, 2))
        return torch.stack(
            [
                2.0 * torch.sin(c[..., 1] / 7.0) + 0.5,
                -1.5 * torch.cos(c[..., 2] / 9.0) + 0.03 * c[..., 0],
                1.2 * torch.sin(c[..., 0] / 5.0) * torch.cos(c[..., 1] / 11.0) - 0.7,
            ],
            dim=-1,
        )

    return Deformation.from_function(grid, fn, dtype=torch.float64)


@pytest.fixture
def field_grid():
    return oblique_grid(size=(10, 12, 8), spacing=(0.8, 1.3, 2.5), origin=(-31.7, 12.25, 104.5))


def interior_points(grid, n=40, seed=1):
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0.2, np.asarray(grid.size) - 1.2, size=(n, 3))
    return grid.index_to_world(idx)


def sitk_transform(path, kind):
    if kind == "transform":
        return sitk.DisplacementFieldTransform(sitk.ReadTransform(str(path)))
    image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(image)


@pytest.mark.parametrize("ext", FORMATS)
def test_written_field_agrees_with_sitk_transform_point(tmp_path, field_grid, ext):
    d = smooth_deformation(field_grid)
    path = write_field(d, tmp_path / f"field.{ext}", dtype="float64")
    kind = "transform" if ext in ("h5", "tfm") else "image"
    tx = sitk_transform(path, kind)
    pts = interior_points(field_grid)
    ours = d.map_points(torch.as_tensor(pts))[0].numpy()
    theirs = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    assert np.max(np.abs(ours - theirs)) <= 1e-4
    # the displacement is really non-trivial and anisotropic
    assert np.max(np.linalg.norm(ours - pts, axis=1)) > 1.0


@pytest.mark.parametrize("ext", FORMATS)
def test_read_field_round_trip(tmp_path, field_grid, ext):
    d = smooth_deformation(field_grid)
    path = write_field(d, tmp_path / f"field.{ext}")
    back = read_field(path, dtype=torch.float64)
    assert back.grid.is_close(field_grid, tol_mm=1e-4)
    tol = 1e-5 if ext not in ("h5", "tfm") else 1e-12  # float32 storage for images by default
    assert torch.max(torch.abs(back.displacement - d.displacement)) <= tol
    pts = torch.as_tensor(interior_points(field_grid))
    assert torch.max(torch.abs(back.map_points(pts) - d.map_points(pts))) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["field.mhd", "field.zraw"] if ext == "mhd" else [f"field.{ext}"]
    )


def test_nifti_field_is_dispvect_with_ras_components_and_itk_header(tmp_path, field_grid):
    """NIfTI fields carry intent 1006 (Slicer); that intent means RAS components on disk (ITK >= 5.4)."""
    d = smooth_deformation(field_grid)
    path = write_field(d, tmp_path / "field.nii", dtype="float64")
    raw = path.read_bytes()
    dims = struct.unpack("<8h", raw[40:56])
    intent = struct.unpack("<h", raw[68:70])[0]
    offset = int(struct.unpack("<f", raw[108:112])[0])
    assert dims[:6] == (5, 10, 12, 8, 1, 3) and intent == 1006
    data = np.frombuffer(raw[offset:], dtype="<f8").reshape(3, 8, 12, 10)  # component-major, then z, y, x
    expected = d.displacement[0].numpy() * np.array([-1.0, -1.0, 1.0])[:, None, None, None]
    assert np.allclose(data, expected, atol=1e-12)
    # the header is ITK's own for this field, except the intent code
    itk_path = tmp_path / "itk.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 12, 10, 3)), isVector=True), str(itk_path), False)
    ref = sitk.ReadImage(str(itk_path))
    field_grid.copy_to_sitk(ref)
    sitk.WriteImage(ref, str(itk_path), False)
    itk_raw = itk_path.read_bytes()
    assert itk_raw[:68] == raw[:68] and itk_raw[70:offset] == raw[70:offset]
    # SimpleITK reads LPS back, and the .gz file is the same stream compressed
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.allclose(np.moveaxis(back, -1, 0), d.displacement[0].numpy(), atol=1e-12)
    gz = write_field(d, tmp_path / "field.nii.gz", dtype="float64")
    assert gzip.decompress(gz.read_bytes()) == raw


def test_float32_field_reads_as_sitk_displacement_transform_after_cast(tmp_path, field_grid):
    """The README recipe for the default float32 files."""
    d = smooth_deformation(field_grid)
    path = write_field(d, tmp_path / "field.nii.gz")
    tx = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    pts = interior_points(field_grid)
    theirs = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    assert np.max(np.abs(d.map_points(torch.as_tensor(pts))[0].numpy() - theirs)) <= 1e-4


def test_read_field_errors(tmp_path, field_grid):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_field(tmp_path / "missing.nii.gz")
    scalar = sitk.Image(4, 4, 4, sitk.sitkFloat32)
    sitk.WriteImage(scalar, str(tmp_path / "scalar.nii.gz"))
    with pytest.raises(ValueError, match="3 components"):
        read_field(tmp_path / "scalar.nii.gz")
    sitk.WriteTransform(sitk.AffineTransform(3), str(tmp_path / "affine.h5"))
    with pytest.raises(ValueError, match="not a displacement field"):
        read_field(tmp_path / "affine.h5")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        read_field(tmp_path / "junk.nii.gz")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported"):
        read_field(tmp_path / "x.png")


def test_write_field_errors_leave_nothing(tmp_path, field_grid):
    d = smooth_deformation(field_grid)
    with pytest.raises(ValueError, match="unsupported"):
        write_field(d, tmp_path / "field.png")
    two = Deformation(field_grid, torch.cat([d.displacement, d.displacement]))
    with pytest.raises(ValueError, match="batch"):
        write_field(two, tmp_path / "field.nii.gz")
    bad = d.displacement.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        write_field(Deformation(field_grid, bad), tmp_path / "field.h5")
    with pytest.raises(FileNotFoundError):
        write_field(d, tmp_path / "no_such_dir" / "field.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", [0, -1])
def test_a_non_finite_value_in_any_piece_of_the_field_is_refused(tmp_path, field_grid, monkeypatch, where) -> None:
    """The NaN/Inf check runs piece by piece (bounded memory); a bad value in the first or the last
    piece, with pieces smaller than one component, still stops the write."""
    from MLVIRNETLib.io import fields

    monkeypatch.setattr(fields, "_FINITE_CHUNK", 7)
    bad = smooth_deformation(field_grid).displacement.clone()
    bad.view(-1)[where] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        write_field(Deformation(field_grid, bad), tmp_path / "field.nii.gz")
    assert list(tmp_path.iterdir()) == []
