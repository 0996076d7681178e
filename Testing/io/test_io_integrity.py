"""Hostile inputs and outputs: full disks, truncated and NaN files, killed writers, odd output paths,
and ANTs/ITK transform composites read as one field."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import oblique_grid

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.io.atomic import atomic_output
from MLVIRNETLib.io.fields import read_field, write_field
from MLVIRNETLib.io.images import read_image, write_image
from MLVIRNETLib.io.integrity import IncompleteWriteError


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 5 MiB tmpfs, unmounted afterwards."""
    folder = tmp_path / "disk"
    _mount_tmpfs(folder, "size=5m")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def random_field(size, seed=0) -> Deformation:
    """Incompressible (random) displacements: the file size is about 12 bytes per voxel."""
    grid = oblique_grid(size=size, spacing=(0.9, 1.1, 2.0), origin=(-20.0, 5.0, 40.0))
    rng = np.random.default_rng(seed)
    u = torch.as_tensor(rng.normal(scale=3.0, size=(1, 3, *grid.shape_zyx)), dtype=torch.float32)
    return Deformation(grid, u)


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill the file system of ``folder`` until about ``leave_bytes`` are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


@pytest.mark.parametrize("name", ["f.nii.gz", "f.nii", "f.tfm", "f.h5", "f.nrrd", "f.mha"])
def test_full_disk_keeps_the_earlier_field_byte_identical(small_disk, name):
    target = small_disk / name
    small = random_field((20, 20, 10) if name != "f.tfm" else (8, 8, 6), seed=1)
    write_field(small, target)
    before = target.read_bytes()
    fill(small_disk, leave_bytes=200_000)
    big = random_field((60, 60, 40), seed=2)  # ~1.7 MB as float32, far more as text
    with pytest.raises((OSError, ValueError)) as info:
        write_field(big, target)
    message = str(info.value)
    assert str(target) in message and ".tmp" not in message
    assert target.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([name, "filler.bin"])


def test_full_disk_image_write_fails_loudly(small_disk, sitk_image):
    target = small_disk / "warped.nii.gz"
    big = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 80, 80)).astype(np.float32))
    fill(small_disk, leave_bytes=100_000)
    with pytest.raises(IncompleteWriteError, match="warped.nii.gz.*disk full"):
        write_image(big, target)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]


def test_truncated_nifti_image_is_refused(tmp_path, sitk_image):
    path = write_image(sitk_image, tmp_path / "ct.nii.gz")
    raw = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"cannot read image .*cut\.nii\.gz: .*(truncated|damaged)"):
        read_image(cut)
    plain = write_image(sitk_image, tmp_path / "ct.nii", compress=False)
    (tmp_path / "cut.nii").write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_image(tmp_path / "cut.nii")
    mha = write_image(sitk_image, tmp_path / "ct.mha")
    (tmp_path / "cut.mha").write_bytes(mha.read_bytes()[:-50])
    with pytest.raises(ValueError, match=r"cut\.mha.*truncated"):
        read_image(tmp_path / "cut.mha")
    assert read_image(path).GetSize() == sitk_image.GetSize()  # the complete file still reads


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha"])
def test_nan_and_inf_voxels_are_refused_in_every_format(tmp_path, sitk_image, ext):
    arr = sitk.GetArrayFromImage(sitk_image)
    arr[1, 2, 3] = np.nan
    arr[2, 2, 2] = np.inf
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(sitk_image)
    path = tmp_path / f"nan.{ext}"
    sitk.WriteImage(bad, str(path))
    with pytest.raises(ValueError, match=rf"nan\.{ext.replace('.', '[.]')} holds 2 NaN or infinite"):
        read_image(path)


@pytest.mark.parametrize("ext", ["nii.gz", "tfm", "h5"])
def test_truncated_field_is_refused(tmp_path, ext):
    path = write_field(random_field((12, 10, 8)), tmp_path / f"f.{ext}")
    raw = path.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=rf"cannot read deformation field .*cut\.{ext}"):
        read_field(cut)


def test_nan_field_is_refused_with_count(tmp_path):
    d = random_field((6, 5, 4))
    image = sitk.GetImageFromArray(np.moveaxis(d.displacement[0].numpy(), 0, -1).copy(), isVector=True)
    d.grid.copy_to_sitk(image)
    arr = sitk.GetArrayFromImage(image)
    arr[0, 0, 0, 1] = np.nan
    bad = sitk.GetImageFromArray(arr, isVector=True)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(tmp_path / "nan.nrrd"))
    with pytest.raises(ValueError, match=r"nan\.nrrd contains 1 non-finite"):
        read_field(tmp_path / "nan.nrrd")


KILLED_WRITER = """
import os, sys, time
from MLVIRNETLib.io.atomic import atomic_output
with atomic_output(sys.argv[1]) as tmp:
    tmp.write_bytes(b"partial")
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_writer_leftovers_are_removed_by_the_next_write(tmp_path, sig):
    target = tmp_path / "out.bin"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=30)
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and not target.exists()
    # a temporary folder of a live process (this one) is left alone
    with atomic_output(tmp_path / "live.bin") as live_tmp:
        live_tmp.write_bytes(b"x")
        with atomic_output(tmp_path / "other.bin") as tmp:
            tmp.write_bytes(b"complete")
        assert live_tmp.parent.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.bin", "other.bin"]


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    _mount_tmpfs(folder, "size=1m,ro")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_and_odd_output_paths_give_one_clear_message(read_only_folder, tmp_path, sitk_image):
    target = read_only_folder / "warped.nii.gz"
    with pytest.raises(OSError) as info:
        write_image(sitk_image, target)
    assert str(info.value).count("\n") == 0 and str(target) in str(info.value) and "read-only" in str(info.value)
    assert ".tmp" not in str(info.value)
    if Path("/proc").is_dir():
        name = f"mlvirnet-{uuid.uuid4().hex}.nii.gz"
        with pytest.raises(OSError, match=rf"/proc/{name}.*does not allow creating files"):
            write_image(sitk_image, Path("/proc") / name)
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_field(random_field((4, 4, 4)), tmp_path / "adir")


# ----------------------------------------------------------------------------------------------
# ANTs / ITK composites
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def ants_like(tmp_path):
    """An affine + displacement field as antsRegistration writes them, and SimpleITK's composite."""
    grid = oblique_grid(size=(14, 12, 9), spacing=(0.8, 1.3, 2.5), origin=(-31.7, 12.25, 104.5))
    warp = Deformation.from_function(
        grid,
        lambda x: torch.stack(
            [
                2.0 * torch.sin((x[..., 1] - 10.0) / 6.0),
                1.5 * torch.cos((x[..., 2] - 100.0) / 8.0),
                0.8 * torch.sin((x[..., 0] + 30.0) / 5.0),
            ],
            dim=-1,
        ),
        dtype=torch.float64,
    )
    field = sitk.GetImageFromArray(np.moveaxis(warp.displacement[0].numpy(), 0, -1).copy(), isVector=True)
    grid.copy_to_sitk(field)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.05, 0.04, -0.02, -0.03, 0.97, 0.05, 0.01, -0.04, 1.02))
    affine.SetTranslation((2.5, -1.75, 3.0))
    affine.SetCenter((-25.0, 18.0, 110.0))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(field)))  # acts first on a point
    sitk.WriteTransform(composite, str(tmp_path / "Composite.h5"))
    sitk.WriteTransform(affine, str(tmp_path / "out0GenericAffine.mat"))
    sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), str(tmp_path / "out1Warp.nii.gz"))
    return grid, composite, tmp_path


def test_ants_composite_and_list_map_points_like_sitk_composite(ants_like):
    grid, composite, folder = ants_like
    rng = np.random.default_rng(4)
    pts = grid.index_to_world(rng.uniform(0.2, np.asarray(grid.size) - 1.2, size=(50, 3)))
    theirs = np.array([composite.TransformPoint(tuple(p)) for p in pts])
    from_h5 = read_field(folder / "Composite.h5", dtype=torch.float64)
    from_list = read_field([folder / "out1Warp.nii.gz", folder / "out0GenericAffine.mat"], dtype=torch.float64)
    for d in (from_h5, from_list):
        assert d.grid.is_close(grid, tol_mm=1e-4)
        ours = d.map_points(torch.as_tensor(pts))[0].numpy()
        assert np.max(np.abs(ours - theirs)) <= 1e-3
    # the order matters: the reversed list is a different map
    wrong = read_field([folder / "out0GenericAffine.mat", folder / "out1Warp.nii.gz"], dtype=torch.float64)
    assert np.max(np.abs(wrong.map_points(torch.as_tensor(pts))[0].numpy() - theirs)) > 0.05
    # the warp alone, with its affine beside it, is refused instead of silently dropping the affine
    with pytest.raises(ValueError, match="0GenericAffine.mat lies beside it"):
        read_field(folder / "out1Warp.nii.gz")
    with pytest.raises(ValueError, match="only linear transforms"):
        read_field(folder / "out0GenericAffine.mat")


# ----------------------------------------------------------------------------------------------
# The gzip stream of a .nii.gz, checked with zlib (io.integrity._gunzip_chunks)
# ----------------------------------------------------------------------------------------------
def _payload(n: int, seed: int = 0) -> bytes:
    """Half random, half runs of one byte: output chunks both shorter and longer than the input."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, n // 2, dtype=np.uint8).tobytes() + bytes(n - n // 2)


@pytest.mark.parametrize("layout", ["one member", "two members", "zero padding", "padding between members"])
@pytest.mark.parametrize("level", [0, 6])
def test_gunzip_chunks_equal_pythons_gzip(tmp_path, layout, level):
    import gzip

    from MLVIRNETLib.io.integrity import _CHUNK, _gunzip_chunks

    a, b = _payload(3 * _CHUNK + 12345, 1), _payload(9 * _CHUNK + 7, 2)  # b: 4.5 MiB of zeros, one output limit
    ga, gb = gzip.compress(a, compresslevel=level), gzip.compress(b, compresslevel=level)
    raw = {"one member": ga, "two members": ga + gb, "zero padding": ga + bytes(5000),
           "padding between members": ga + bytes(_CHUNK + 3) + gb}[layout]
    path = tmp_path / "x.gz"
    path.write_bytes(raw)
    chunks = list(_gunzip_chunks(path))
    assert b"".join(chunks) == gzip.decompress(raw)
    assert max(map(len, chunks)) <= 4 * _CHUNK


@pytest.mark.parametrize("damage", ["crc", "length", "data", "truncated", "garbage after"])
def test_damaged_gzip_stream_is_refused_like_pythons_gzip(tmp_path, damage, sitk_image):
    import gzip

    from MLVIRNETLib.io.integrity import check_nifti

    good = write_image(sitk_image, tmp_path / "ct.nii.gz")
    raw = bytearray(good.read_bytes())
    if damage == "crc":
        raw[-8] ^= 0xFF
    elif damage == "length":
        raw[-1] ^= 0x01
    elif damage == "data":
        raw[len(raw) // 2] ^= 0x55
    elif damage == "truncated":
        raw = raw[:-5]
    else:
        raw += b"not gzip"
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises((OSError, EOFError, ValueError)):  # what Python's own reader does with it
        gzip.decompress(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.nii\.gz is truncated or damaged"):
        check_nifti(bad)
    assert check_nifti(good) == 0
