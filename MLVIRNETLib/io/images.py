"""Reading and writing 3-D images, and converting them to and from tensors.

Supported inputs: every single-file format SimpleITK reads (NIfTI ``.nii``/``.nii.gz``, NRRD
``.nrrd``/``.nhdr``, MetaImage ``.mha``/``.mhd``, ...) and a folder holding one DICOM series.
Outputs are written atomically: the file appears complete under its final name or not at all.

Tensors use the layout of :mod:`MLVIRNETLib.core.geometry`: ``(1, 1, D, H, W)`` with ``D = z``, and the
geometry travels separately as an :class:`~MLVIRNETLib.core.geometry.ImageGrid` (LPS mm).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.geometry import ImageGrid
from .atomic import PathLike, atomic_output
from .integrity import check_file, check_input, require_finite
from .native_stderr import held_native_stderr


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def _dicom_series_files(folder: Path) -> list[str]:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ValueError(f"{folder} is a folder but holds no DICOM series (no readable DICOM files found)")
    if len(ids) > 1:
        raise ValueError(
            f"{folder} holds {len(ids)} DICOM series ({', '.join(ids)}); pass a folder with exactly one series"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def sitk_error_reason(exc: RuntimeError) -> str:
    """The informative line of a SimpleITK ``RuntimeError`` (the reader's or writer's own complaint)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for marker in ("[nrrd]", "ITK ERROR", "ERROR", "Unable", "Could not"):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[-1]
    return lines[-1] if lines else "unknown error"


def _check_3d(image: sitk.Image, path: PathLike) -> sitk.Image:
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 3 and min(size) == 1 and size[2] == 1:
        raise ValueError(f"{path} is a 2-D image stored as 3-D (size {size}); a 3-D volume is required")
    if dim == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise ValueError(f"{path} is a {dim}-D image of size {size}; a 3-D volume is required")
    return image


def read_image(path: PathLike) -> sitk.Image:
    """Read a 3-D image file or a folder holding one DICOM series.

    Files are checked before SimpleITK reads them (:func:`~MLVIRNETLib.io.integrity.check_file`:
    a truncated or damaged NIfTI/MetaImage file is refused instead of read with zeros), and
    float images must hold only finite values.

    Returns:
        the ``SimpleITK.Image`` with its LPS geometry.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable, truncated or damaged file, NaN or infinite voxels, not a 3-D image
            (2-D, single slice, 4-D with several volumes), or a folder with no or several DICOM series.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with held_native_stderr():  # ITK/GDCM/HDF5 diagnostics are dropped when the read fails
            if p.is_dir():
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(_dicom_series_files(p))
                image = reader.Execute()
            else:
                if not p.is_file():
                    raise ValueError(f"cannot read image {p}: not a regular file")
                image = _read_checked(p)
    except RuntimeError as exc:  # SimpleITK reports unreadable files as RuntimeError
        raise ValueError(f"cannot read image {p}: {sitk_error_reason(exc)}") from None
    except PermissionError:
        raise ValueError(f"cannot read image {p}: permission denied") from None
    image = _check_3d(image, p)
    require_finite(image, p)
    return image


def _read_checked(p: Path) -> sitk.Image:
    """``sitk.ReadImage`` with the integrity check of ``p`` run beside it, in a second thread.

    Both decompress the file, and both release the GIL while they do, so side by side they take
    little more than one of them (docs/performance.md, "Files"). The check decides: its error is raised
    whether or not SimpleITK read the file (a truncated NIfTI reads without error, with zeros).

    Raises:
        ValueError: from :func:`check_input`.
        RuntimeError: SimpleITK could not read a file that passed the check.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(check_input, p)
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError:
            checked.result()  # a damaged file: the check names the problem
            raise
        checked.result()
    return image


def image_header(path: PathLike) -> sitk.ImageFileReader:
    """A reader of the image file ``path`` with its header read (size, dimension, geometry, tags).

    Raises:
        ValueError: the header cannot be read.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with held_native_stderr():
            reader.ReadImageInformation()
    except RuntimeError:
        raise ValueError(f"cannot read image header of {path}") from None
    return reader


def read_image_grid(path: PathLike) -> ImageGrid:
    """The :class:`ImageGrid` of an image file or DICOM folder, reading only the header when possible."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    if p.is_dir():
        return ImageGrid.from_sitk(read_image(p))
    reader = image_header(p)
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 and size[3] == 1:
        return ImageGrid.from_sitk(read_image(p))
    if dim != 3 or size[2] == 1:
        raise ValueError(f"{p} is a {dim}-D image of size {size}; a 3-D volume is required")
    return ImageGrid(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def write_image(image: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (format from the suffix); returns the path.

    The written file is checked before it is published (:func:`~MLVIRNETLib.io.integrity.check_file`
    plus its header read back): a full disk gives an error, never a truncated file, and an earlier
    file at ``path`` survives any failure.

    Raises:
        FileNotFoundError: the output folder does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: SimpleITK cannot write this image to this format.
        OSError: the file could not be written completely (full disk:
            :class:`~MLVIRNETLib.io.integrity.IncompleteWriteError`), or the folder refuses files.
    """
    target = Path(path)
    with atomic_output(target, verify=lambda tmp, shown: _verify_written_image(tmp, shown, image)) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:
            raise ValueError(f"cannot write image {target}: {sitk_error_reason(exc)}") from None
    return target


def read_back_header(tmp: Path, shown: Path) -> sitk.ImageFileReader:
    """The header of a just-written image file ``tmp`` (published as ``shown``), read back.

    Raises:
        ValueError: the header cannot be read (the message names ``shown``).
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"{shown} cannot be read back: {sitk_error_reason(exc)}") from None
    return reader


def _verify_written_image(tmp: Path, shown: Path, image: sitk.Image) -> None:
    check_file(tmp, shown)
    reader = read_back_header(tmp, shown)
    if tuple(reader.GetSize()[:3]) != tuple(image.GetSize()[:3]):
        raise ValueError(f"{shown} reads back with size {reader.GetSize()}, expected {image.GetSize()}")


# ----------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------
def image_to_tensor(
    image: sitk.Image, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[torch.Tensor, ImageGrid]:
    """A scalar 3-D image -> ``(tensor (1, 1, D, H, W), grid)``; values are converted to ``dtype``."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got a {image.GetDimension()}-D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel "
            f"({image.GetPixelIDTypeAsString()})"
        )
    grid = ImageGrid.from_sitk(image)
    array = sitk.GetArrayFromImage(image)  # a copy: the tensor must not share SimpleITK's buffer
    if array.dtype == np.uint16 or array.dtype == np.uint32 or array.dtype == np.uint64:
        array = array.astype(np.int64)  # torch lacks some unsigned types
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype=dtype, device=device)
    return tensor[None, None], grid


_INTEGER_LIMITS = {
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt32: np.int32,
    sitk.sitkUInt64: np.uint64,
    sitk.sitkInt64: np.int64,
}
_FLOAT_TYPES = {sitk.sitkFloat32: np.float32, sitk.sitkFloat64: np.float64}


def numpy_type_of(pixel_type: int) -> type:
    """The numpy scalar type of a SimpleITK scalar integer or float ``pixel_type``.

    Raises:
        ValueError: another pixel type.
    """
    if pixel_type in _INTEGER_LIMITS:
        return _INTEGER_LIMITS[pixel_type]
    if pixel_type in _FLOAT_TYPES:
        return _FLOAT_TYPES[pixel_type]
    raise ValueError(f"pixel_type must be a SimpleITK scalar integer or float type id, got {pixel_type!r}")


CAST_CHUNK_VOXELS = 1 << 22
"""Voxels converted at a time by :func:`cast_to_pixel_type` (its float64 temporaries stay this small)."""


def cast_to_pixel_type(array: np.ndarray, pixel_type: int) -> np.ndarray:
    """``array`` in the numpy type of SimpleITK's ``pixel_type``: integer types are rounded to the
    nearest integer and clipped to the type's range, float types converted. The work is done a
    block of the first axis at a time, so a large volume needs no full-size temporary copy.

    Raises:
        ValueError: ``pixel_type`` is not a SimpleITK scalar integer or float type id.
    """
    if pixel_type in _FLOAT_TYPES:
        return array.astype(_FLOAT_TYPES[pixel_type], copy=False)
    if pixel_type not in _INTEGER_LIMITS:
        raise ValueError(f"pixel_type must be a SimpleITK scalar integer or float type id, got {pixel_type!r}")
    np_type = _INTEGER_LIMITS[pixel_type]
    info = np.iinfo(np_type)
    out = np.empty(array.shape, dtype=np_type)
    if array.ndim == 0 or array.size == 0:
        out[...] = np.clip(np.rint(np.asarray(array, dtype=np.float64)), info.min, info.max)
        return out
    step = max(1, CAST_CHUNK_VOXELS // max(1, array[0].size))
    for i in range(0, array.shape[0], step):
        block = np.rint(array[i:i + step].astype(np.float64))
        np.clip(block, info.min, info.max, out=block)
        out[i:i + step] = block
    return out


def tensor_to_image(tensor: torch.Tensor | np.ndarray, grid: ImageGrid, pixel_type: int | None = None) -> sitk.Image:
    """A ``(1, 1, D, H, W)`` or ``(D, H, W)`` tensor on ``grid`` -> ``SimpleITK.Image``.

    Args:
        tensor: values; ``(D, H, W)`` must equal ``grid.shape_zyx``.
        grid: geometry to stamp on the image.
        pixel_type: a SimpleITK scalar pixel id (``sitk.sitkInt16``, ...); integer types are
            rounded to the nearest integer and clipped to the type's range. ``None`` keeps the
            tensor's dtype (float32 for float16/bfloat16).
    """
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        array = t.cpu().numpy()
    else:
        array = np.asarray(tensor)
    if array.ndim == 5:
        if array.shape[:2] != (1, 1):
            raise ValueError(f"expected a tensor of shape (1, 1, D, H, W) or (D, H, W), got {array.shape}")
        array = array[0, 0]
    if array.ndim != 3:
        raise ValueError(f"expected a tensor of shape (1, 1, D, H, W) or (D, H, W), got {array.shape}")
    if tuple(array.shape) != grid.shape_zyx:
        raise ValueError(f"tensor spatial shape {array.shape} (D, H, W) does not match grid {grid.describe()}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if pixel_type is not None:
        array = cast_to_pixel_type(array, pixel_type)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    grid.copy_to_sitk(image)
    return image
