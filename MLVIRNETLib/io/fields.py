"""Deformation fields on disk: vector images and ITK displacement-field transforms.

Convention (the one of :class:`~MLVIRNETLib.core.deformation.Deformation`, ITK, ANTs and 3D Slicer):
the file holds the displacement ``u`` in **LPS mm** at the voxel centres of the *fixed* grid, and
maps fixed points to moving points, ``x_moving = x_fixed + u(x_fixed)``. Warping the moving image
with it (``M(x + u(x))``) gives the moving image resampled on the fixed grid.

Formats (from the suffix):

``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``
    A 3-component float vector image (float32 unless ``dtype`` says otherwise) with the fixed
    grid's size, spacing, origin and direction. NIfTI note: NIfTI's own world frame is RAS, and
    tools disagree on the frame of *vector components* (NiftyReg and FSL write RAS). We write, and
    expect, **LPS components**, as ITK/SimpleITK and ANTs do (intent code 1007 = vector); with
    SimpleITK 2.5 the components are stored on disk exactly as given and read back unchanged
    (checked by ``Testing/io/test_io_fields.py``). A NIfTI field from NiftyReg/FSL needs its x and y
    components negated (``geometry.ras_to_lps``) before use.
``.h5``, ``.hdf5``, ``.tfm``, ``.txt``
    A ``SimpleITK.DisplacementFieldTransform`` written with ``sitk.WriteTransform`` (float64).
    ``.tfm``/``.txt`` is plain text and large (about 20 bytes per value); prefer ``.h5``. A
    composite transform holding exactly one displacement field is accepted on reading.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid
from .atomic import atomic_output

PathLike = str | os.PathLike

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt")


def field_format(path: PathLike) -> str:
    """``"image"`` or ``"transform"`` from the file name; ``ValueError`` for anything else."""
    name = Path(path).name.lower()
    if any(name.endswith(s) for s in IMAGE_SUFFIXES):
        return "image"
    if any(name.endswith(s) for s in TRANSFORM_SUFFIXES):
        return "transform"
    raise ValueError(
        f"unsupported deformation field file {path}: use one of {', '.join(IMAGE_SUFFIXES + TRANSFORM_SUFFIXES)}"
    )


def deformation_to_sitk(deformation: Deformation, pixel_type: int = sitk.sitkVectorFloat64) -> sitk.Image:
    """A batch-1 :class:`Deformation` -> 3-component vector image of LPS mm on its grid."""
    u = deformation.displacement
    if u.shape[0] != 1:
        raise ValueError(f"only a single deformation (batch 1) can be written, got batch {u.shape[0]}")
    # build the image directly in the requested precision: no float64 copy of a float32 field
    dtype = torch.float32 if pixel_type == sitk.sitkVectorFloat32 else torch.float64
    array = u[0].detach().to("cpu", dtype).movedim(0, -1).contiguous().numpy()  # (D, H, W, 3), components x y z
    image = sitk.GetImageFromArray(array, isVector=True)
    deformation.grid.copy_to_sitk(image)
    if pixel_type not in (sitk.sitkVectorFloat32, sitk.sitkVectorFloat64):
        image = sitk.Cast(image, pixel_type)
    return image


def sitk_to_deformation(image: sitk.Image, dtype: torch.dtype = torch.float32, device=None) -> Deformation:
    """A 3-D, 3-component vector image of LPS-mm displacements -> :class:`Deformation` (batch 1)."""
    if image.GetDimension() != 3:
        raise ValueError(f"a deformation field must be a 3-D image, got {image.GetDimension()}-D of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(
            f"a deformation field needs 3 components per voxel (x, y, z mm), got "
            f"{image.GetNumberOfComponentsPerPixel()} ({image.GetPixelIDTypeAsString()})"
        )
    grid = ImageGrid.from_sitk(image)
    array = sitk.GetArrayFromImage(image).astype(np.float64)  # (D, H, W, 3)
    if not np.all(np.isfinite(array)):
        raise ValueError("the deformation field contains non-finite values")
    u = torch.as_tensor(array).movedim(-1, 0)[None].to(dtype=dtype, device=device).contiguous()
    return Deformation(grid, u)


def write_field(deformation: Deformation, path: PathLike, dtype: str = "float32") -> Path:
    """Write a batch-1 deformation atomically; the format comes from the suffix (module docstring).

    Args:
        dtype: ``"float32"`` or ``"float64"`` for vector images (transforms are always float64).

    Raises:
        ValueError: unsupported suffix, batch > 1, or a non-finite displacement.
        FileNotFoundError: the output folder does not exist.
    """
    kind = field_format(path)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not torch.all(torch.isfinite(deformation.displacement)):
        raise ValueError("the deformation contains non-finite displacements; nothing written")
    target = Path(path)
    if kind == "image":
        pixel = sitk.sitkVectorFloat32 if dtype == "float32" else sitk.sitkVectorFloat64
        image = deformation_to_sitk(deformation, pixel)
        with atomic_output(target) as tmp:
            sitk.WriteImage(image, str(tmp), True)
    else:
        transform = sitk.DisplacementFieldTransform(deformation_to_sitk(deformation, sitk.sitkVectorFloat64))
        with atomic_output(target) as tmp:
            sitk.WriteTransform(transform, str(tmp))
    return target


def _displacement_transform(transform: sitk.Transform, path: Path) -> sitk.DisplacementFieldTransform:
    name = transform.GetName()
    if name == "DisplacementFieldTransform":
        return sitk.DisplacementFieldTransform(transform)
    if name == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        parts = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
        if len(parts) == 1:
            return _displacement_transform(parts[0], path)
        kinds = [p.GetName() for p in parts]
        raise ValueError(f"{path} holds a composite of {len(parts)} transforms ({kinds}); expected one displacement field")
    raise ValueError(f"{path} holds a {name}, not a displacement field transform")


def read_field(path: PathLike, dtype: torch.dtype = torch.float32, device=None) -> Deformation:
    """Read a deformation field written by :func:`write_field` (or ITK/ANTs/Slicer) -> batch-1 :class:`Deformation`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported suffix, unreadable file, not a 3-D 3-component displacement field.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"deformation field not found: {p}")
    kind = field_format(p)
    try:
        if kind == "image":
            image = sitk.ReadImage(str(p))
        else:
            image = _displacement_transform(sitk.ReadTransform(str(p)), p).GetDisplacementField()
    except RuntimeError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"cannot read deformation field {p}: {lines[-1].strip() if lines else exc}") from None
    return sitk_to_deformation(image, dtype=dtype, device=device)
