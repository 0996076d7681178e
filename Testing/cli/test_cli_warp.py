"""``mlvirnet warp``: compared with SimpleITK's resampler; labels; refusal to overwrite; no partial output."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.cli import main
from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.io.fields import write_field


@pytest.fixture
def setup(tmp_path):
    moving_grid = oblique_grid(size=(20, 18, 14), spacing=(1.1, 0.8, 2.0), origin=(-12.0, 7.5, 40.0))
    fixed_grid = oblique_grid(size=(16, 14, 12), spacing=(1.0, 1.0, 1.8), origin=(-9.0, 9.0, 43.0), angles=(5.0, -15.0, 30.0))
    x = moving_grid.world_points(dtype=torch.float64)
    values = 100.0 * torch.sin(x[..., 0] / 6.0) * torch.cos(x[..., 1] / 9.0) + 3.0 * x[..., 2]
    moving = sitk.GetImageFromArray(values.numpy().astype(np.float32))
    moving_grid.copy_to_sitk(moving)
    sitk.WriteImage(moving, str(tmp_path / "moving.nrrd"))

    def fn(p):
        c = p - p.mean(dim=(0, 1, 2))
        return torch.stack([1.5 * torch.sin(c[..., 1] / 8.0), -torch.cos(c[..., 2] / 7.0), 0.8 * torch.sin(c[..., 0] / 5.0)], -1)

    deformation = Deformation.from_function(fixed_grid, fn, dtype=torch.float64)
    write_field(deformation, tmp_path / "field.h5")
    return tmp_path, moving, deformation


def test_warp_matches_sitk_resample(setup, capsys):
    tmp_path, moving, deformation = setup
    assert main(["warp", str(tmp_path / "moving.nrrd"), str(tmp_path / "field.h5"), "-o", str(tmp_path / "out.nii.gz")]) == 0
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetPixelID() == sitk.sitkFloat32
    assert ImageGrid.from_sitk(out).is_close(deformation.grid, tol_mm=1e-4)
    tx = sitk.DisplacementFieldTransform(sitk.ReadTransform(str(tmp_path / "field.h5")))
    ref = sitk.Resample(moving, out, tx, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    a, b = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(ref)
    inside = np.isfinite(b)
    assert inside.mean() > 0.5
    assert np.max(np.abs(a[inside] - b[inside])) < 1e-3 * np.abs(b[inside]).max()
    assert "wrote" in capsys.readouterr().out


def test_warp_labels_nearest_keeps_type(setup):
    tmp_path, moving, deformation = setup
    labels = sitk.Cast(sitk.BinaryThreshold(moving, 0.0, 1e9, 3, 0), sitk.sitkUInt8)
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    assert main(["warp", str(tmp_path / "labels.nii.gz"), str(tmp_path / "field.h5"), "-o", str(tmp_path / "wl.nrrd"), "--label"]) == 0
    out = sitk.ReadImage(str(tmp_path / "wl.nrrd"))
    assert out.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(out))) <= {0, 3}
    tx = sitk.DisplacementFieldTransform(sitk.ReadTransform(str(tmp_path / "field.h5")))
    ref = sitk.GetArrayFromImage(sitk.Resample(labels, out, tx, sitk.sitkNearestNeighbor, 0))
    assert np.mean(sitk.GetArrayFromImage(out) == ref) > 0.99  # ties at exact half-voxel positions may differ


def test_warp_refuses_to_overwrite_moving(setup, capsys):
    tmp_path, _, _ = setup
    before = (tmp_path / "moving.nrrd").read_bytes()
    assert main(["warp", str(tmp_path / "moving.nrrd"), str(tmp_path / "field.h5"), "-o", str(tmp_path / "moving.nrrd")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "moving.nrrd").read_bytes() == before


def test_warp_bad_inputs_leave_no_output(setup, capsys):
    tmp_path, _, _ = setup
    out = tmp_path / "out.nii.gz"
    sitk.WriteImage(sitk.Image(10, 10, sitk.sitkFloat32), str(tmp_path / "flat.nii.gz"))
    (tmp_path / "junk.mha").write_bytes(b"junk")
    cases = [
        ([str(tmp_path / "flat.nii.gz"), str(tmp_path / "field.h5")], "2-D"),
        ([str(tmp_path / "junk.mha"), str(tmp_path / "field.h5")], "cannot read image"),
        ([str(tmp_path / "moving.nrrd"), str(tmp_path / "missing.h5")], "not found"),
        ([str(tmp_path / "moving.nrrd"), str(tmp_path / "moving.nrrd")], "3 components"),
    ]
    for inputs, message in cases:
        assert main(["warp", *inputs, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
        assert not out.exists()
    assert main(["warp", str(tmp_path / "moving.nrrd"), str(tmp_path / "field.h5"), "-o", str(tmp_path / "labels_float.nrrd"), "--label"]) == 2
    assert "integer label map" in capsys.readouterr().err
    assert not (tmp_path / "labels_float.nrrd").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_warp_cuda_without_a_gpu_is_one_line(setup, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    tmp_path, _, _ = setup
    out = tmp_path / "out.nii.gz"
    assert main(["warp", str(tmp_path / "moving.nrrd"), str(tmp_path / "field.h5"), "-o", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlvirnet warp: error:") and "no CUDA GPU" in err[0]
    assert main(["warp", str(tmp_path / "moving.nrrd"), str(tmp_path / "field.h5"), "-o", str(out), "--device", "gpu"]) == 2
    assert "device must be one of" in capsys.readouterr().err
    assert not out.exists()


def test_warp_checks_the_output_before_any_work(setup, capsys):
    tmp_path, _, _ = setup
    args = [str(tmp_path / "moving.nrrd"), str(tmp_path / "field.h5"), "-o"]
    cases = [(str(tmp_path), "is a folder"), (str(tmp_path / "no_such_dir" / "out.nii.gz"), "does not exist")]
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((str(locked / "out.nii.gz"), "not writable"))
    for out, message in cases:
        assert main(["warp", *args, out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.name == "out.nii.gz"]


def test_warp_through_an_ants_style_list_matches_simpleitks_composite(setup):
    """``warp MOVING 1Warp.nii.gz 0GenericAffine.mat``: the warp acts first on a fixed point, then the
    affine (antsApplyTransforms -t order), like SimpleITK's composite of [affine, warp]."""
    tmp_path, moving, deformation = setup
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.02, 0.03, 0.0, -0.02, 0.98, 0.01, 0.0, 0.02, 1.01))
    affine.SetTranslation((1.5, -2.0, 0.75))
    affine.SetCenter(tuple(float(v) for v in deformation.grid.index_to_world((np.asarray(deformation.grid.size) - 1) / 2)))
    sitk.WriteTransform(affine, str(tmp_path / "out0GenericAffine.mat"))
    write_field(deformation, tmp_path / "warp_part.nii.gz")
    out = tmp_path / "listed.nii.gz"
    assert main(["warp", str(tmp_path / "moving.nrrd"), str(tmp_path / "warp_part.nii.gz"),
                 str(tmp_path / "out0GenericAffine.mat"), "-o", str(out)]) == 0
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.ReadTransform(str(tmp_path / "field.h5"))))
    got = sitk.ReadImage(str(out))
    ref = sitk.Resample(moving, got, composite, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    a, b = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(ref)
    inside = np.isfinite(b)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(a[inside], b[inside], atol=0.05)
