"""``mlvirnet register``: a real run with --json, and every bad input failing early with one line."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import rotation_matrix

from MLVIRNETLib.cli import main
from MLVIRNETLib.cli.settings import add_registration_arguments, registration_settings
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.io.fields import read_field
from MLVIRNETLib.paths import bundled_ct_path
from MLVIRNETLib.registration.presets import options_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Fixed and moving CT (3 mm, oblique, non-zero origin) and a lung-ish mask, written to disk."""
    folder = tmp_path_factory.mktemp("cli")
    full = sitk.ReadImage(str(bundled_ct_path()))
    ref = ImageGrid.from_sitk(full)
    spacing = np.array([3.0, 3.2, 3.5])
    size = np.round((ref.extent - 20.0) / spacing).astype(int)
    d = rotation_matrix((3.0, -4.0, 5.0))
    centre = ref.index_to_world((np.asarray(ref.size) - 1) / 2.0)
    origin = centre - d @ ((size - 1) / 2.0 * spacing)
    grid = ImageGrid(tuple(int(s) for s in size), tuple(spacing), tuple(origin), tuple(d.ravel()))

    def resample(shift) -> sitk.Image:
        t = sitk.TranslationTransform(3, tuple(float(v) for v in shift))
        return sitk.Resample(full, list(grid.size), t, sitk.sitkLinear, grid.origin, grid.spacing, grid.direction,
                             -1024.0, sitk.sitkInt16)

    fixed = resample((0.0, 0.0, 0.0))
    moving = resample((2.0, -3.0, 4.0))
    paths = {"fixed": folder / "fixed.nii.gz", "moving": folder / "moving.nii.gz", "folder": folder}
    sitk.WriteImage(fixed, str(paths["fixed"]))
    sitk.WriteImage(moving, str(paths["moving"]))
    mask = sitk.Cast(fixed < -400, sitk.sitkUInt8)
    paths["mask"] = folder / "mask.nii.gz"
    sitk.WriteImage(mask, str(paths["mask"]))
    wrong = sitk.Image(mask)
    wrong.SetOrigin(tuple(np.asarray(mask.GetOrigin()) + 7.0))
    paths["wrong_mask"] = folder / "wrong_mask.nii.gz"
    sitk.WriteImage(wrong, str(paths["wrong_mask"]))
    arr = sitk.GetArrayFromImage(fixed).astype(np.float32)
    const = sitk.GetImageFromArray(np.full_like(arr, 7.0))
    const.CopyInformation(fixed)
    paths["constant"] = folder / "constant.nii.gz"
    sitk.WriteImage(const, str(paths["constant"]))
    arr[3, 4, 5] = np.nan
    nan = sitk.GetImageFromArray(arr)
    nan.CopyInformation(fixed)
    paths["nan"] = folder / "nan.nrrd"  # SimpleITK's NIfTI round trip does not keep NaN
    sitk.WriteImage(nan, str(paths["nan"]))
    flat = sitk.GetImageFromArray(sitk.GetArrayFromImage(fixed)[10])
    paths["flat"] = folder / "flat.nii.gz"
    sitk.WriteImage(flat, str(paths["flat"]))
    paths["grid"] = grid
    return paths


FAST = ["--grid-size", "32", "32", "32", "--refine", "10", "--model", "none", "--quiet"]


def test_register_writes_the_field_and_one_json_object(images, tmp_path, capsys) -> None:
    field = tmp_path / "field.nii.gz"
    warped = tmp_path / "warped.nii.gz"
    rc = main(["register", str(images["fixed"]), str(images["moving"]), "-o", str(field), "--warped", str(warped),
               "--fixed-mask", str(images["mask"]), "--json", *FAST])
    out = capsys.readouterr()
    assert rc == 0
    lines = [line for line in out.out.splitlines() if line.strip()]
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["model_used"] is None
    assert set(info["timings"]) >= {"affine", "preprocess", "refine", "field", "total"}
    assert 0.0 <= info["folding_fraction"] < 0.01
    assert info["network_grid"] == [32, 32, 32]
    deformation = read_field(field)
    assert deformation.grid.is_close(images["grid"], tol_mm=1e-3)
    # moving(x) = fixed(x + t) with t = (2, -3, 4), so x_moving = x_fixed - t
    centre = images["grid"].index_to_world((np.asarray(images["grid"].size) - 1) / 2.0)
    u = deformation.displacement_at(torch.tensor(np.array([centre]), dtype=torch.float32))[0, 0].numpy()
    np.testing.assert_allclose(u, [-2.0, 3.0, -4.0], atol=1.0)
    w = sitk.ReadImage(str(warped))
    assert ImageGrid.from_sitk(w).is_close(images["grid"], tol_mm=1e-3)
    assert w.GetPixelID() == sitk.sitkInt16


def _fails(args, capsys, match: str, folder) -> None:
    before = sorted(os.listdir(folder))
    rc = main(["register", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err and match in err[-1], err
    assert err[-1].startswith("mlvirnet register: error:")
    assert sorted(os.listdir(folder)) == before  # nothing written, not even temporary files


@pytest.mark.parametrize(
    "moving_key,extra,match",
    [
        ("flat", [], "3-D"),
        ("constant", [], "constant"),
        ("nan", [], "NaN"),
        ("moving", ["--fixed-mask", "wrong_mask"], "different grid"),
        ("moving", ["--refine", "-1"], "--refine"),
        ("missing", [], "not found"),
    ],
)
def test_bad_inputs(images, tmp_path, capsys, moving_key, extra, match) -> None:
    moving = images.get(moving_key, images["folder"] / "does_not_exist.nii.gz")
    extra = [str(images[e]) if e in images else e for e in extra]
    _fails([str(images["fixed"]), str(moving), "-o", str(tmp_path / "f.nii.gz"), *FAST, *extra], capsys, match, tmp_path)


def test_bad_outputs(images, tmp_path, capsys) -> None:
    fixed, moving = str(images["fixed"]), str(images["moving"])
    _fails([fixed, moving, "-o", str(tmp_path / "no_such_dir" / "f.nii.gz"), *FAST], capsys, "does not exist", tmp_path)
    _fails([fixed, moving, "-o", str(tmp_path), *FAST], capsys, "folder", tmp_path)
    _fails([fixed, moving, "-o", str(tmp_path / "f.png"), *FAST], capsys, "unsupported", tmp_path)
    before = images["moving"].stat().st_mtime_ns
    _fails([fixed, moving, "-o", moving, *FAST], capsys, "same file as the MOVING input", images["folder"])
    assert images["moving"].stat().st_mtime_ns == before
    _fails([fixed, moving, "-o", str(tmp_path / "f.nii.gz"), "--warped", fixed, *FAST], capsys,
           "same file as the FIXED input", tmp_path)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            _fails([fixed, moving, "-o", str(locked / "f.nii.gz"), *FAST], capsys, "not writable", locked)
        finally:
            locked.chmod(0o700)


def test_cuda_without_a_gpu(images, tmp_path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    _fails([str(images["fixed"]), str(images["moving"]), "-o", str(tmp_path / "f.nii.gz"), "--device", "cuda", *FAST],
           capsys, "no CUDA GPU", tmp_path)


def test_help_says_the_pixel_type_of_warped(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "in MOVING's pixel type" in text and "rounded to whole HU" in text and "--warped-float32" in text


def test_warped_float32(images, tmp_path, capsys) -> None:
    warped = tmp_path / "warped.nrrd"
    rc = main(["register", str(images["fixed"]), str(images["moving"]), "-o", str(tmp_path / "f.nii.gz"), "--warped",
               str(warped), "--warped-float32", "--fixed-mask", str(images["mask"]), "--no-affine", "--grid-size",
               "32", "32", "32", "--refine", "2", "--model", "none", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    w = sitk.ReadImage(str(warped))
    assert w.GetPixelID() == sitk.sitkFloat32
    assert not np.array_equal(sitk.GetArrayFromImage(w), np.round(sitk.GetArrayFromImage(w)))
    _fails([str(images["fixed"]), str(images["moving"]), "-o", str(tmp_path / "g.nii.gz"), "--warped-float32", *FAST],
           capsys, "needs --warped", tmp_path)


@pytest.mark.parametrize("preset,refine_ran", [("fast", False), ("standard", True)])
def test_preset_chooses_the_stages(images, tmp_path, capsys, preset: str, refine_ran: bool) -> None:
    """--preset fast runs no refinement; --preset standard does; explicit options still win."""
    field = tmp_path / "field.nii.gz"
    rc = main(["register", str(images["fixed"]), str(images["moving"]), "-o", str(field), "--json", "--quiet",
               "--preset", preset, "--model", "none", "--grid-size", "32", "32", "32",
               *(["--refine", "5"] if refine_ran else [])])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (info["timings"]["refine"] > 0.01) == refine_ran
    assert read_field(field).grid.is_close(images["grid"], tol_mm=1e-3)


@pytest.mark.parametrize("argv", [[], ["--preset", "accurate"], ["--preset", "fast"]])
def test_the_presets_network_settings_are_followed(argv: list[str]) -> None:
    """The experimental network flags are gone from the CLI: the preset's network settings are
    what register and batch use."""
    parser = argparse.ArgumentParser()
    add_registration_arguments(parser)
    options, _ = registration_settings(parser.parse_args(argv))
    assert options.network == options_for(argv[1] if argv else 'standard').network
    for flag in ("--symmetric-network", "--no-both-ways-fallback"):
        with pytest.raises(SystemExit):
            parser.parse_args([flag])


def test_unknown_preset_and_compression_are_refused(images, tmp_path, capsys) -> None:
    for extra, match in ((["--preset", "fastest"], "invalid choice"), (["--field-compression", "12"], "invalid choice")):
        with pytest.raises(SystemExit) as exc:
            main(["register", str(images["fixed"]), str(images["moving"]), "-o", str(tmp_path / "f.nii.gz"), *extra])
        assert exc.value.code == 2
        assert match in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_field_compression_level(images, tmp_path, capsys) -> None:
    """The default .nii.gz field is stored (level 0); --field-compression 6 gives a smaller file with
    the same values."""
    stored, packed = tmp_path / "stored.nii.gz", tmp_path / "packed.nii.gz"
    common = [str(images["fixed"]), str(images["moving"]), "--preset", "fast", "--model", "none", "--quiet",
              "--grid-size", "32", "32", "32", "--no-affine"]
    assert main(["register", *common, "-o", str(stored)]) == 0
    assert main(["register", *common, "-o", str(packed), "--field-compression", "6"]) == 0
    assert packed.stat().st_size < stored.stat().st_size
    assert torch.equal(read_field(stored).displacement, read_field(packed).displacement)


def test_the_grid_size_option_and_its_former_spelling(capsys) -> None:
    parser = argparse.ArgumentParser()
    add_registration_arguments(parser)
    options, _ = registration_settings(parser.parse_args(["--grid-size", "32", "48", "64", "--refine", "3"]))
    assert options.grid.size == (32, 48, 64) and options.refinement.iterations == 3
    old = parser.parse_args(["--network-size", "32", "48", "64"])
    assert old.grid_size == [32, 48, 64] and "--network-size is deprecated" in capsys.readouterr().err
    assert registration_settings(parser.parse_args(["--no-affine"]))[0].affine is None
    # one rule, the options' own: a refined grid is a multiple of the largest level factor
    with pytest.raises(ValueError, match="grid.size .* must be divisible"):
        registration_settings(parser.parse_args(["--grid-size", "30", "32", "32"]))
    assert registration_settings(parser.parse_args(["--grid-size", "30", "32", "32", "--refine", "0"]))[0]
