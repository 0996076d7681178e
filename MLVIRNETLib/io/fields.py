"""Deformation fields on disk: vector images, ITK displacement-field transforms, ANTs/ITK transform lists.

Convention (the one of :class:`~MLVIRNETLib.core.deformation.Deformation`, ITK, ANTs and 3D Slicer):
the file holds the displacement ``u`` in **LPS mm** at the voxel centres of the *fixed* grid, and
maps fixed points to moving points, ``x_moving = x_fixed + u(x_fixed)``. Warping the moving image
with it (``M(x + u(x))``) gives the moving image resampled on the fixed grid.

Formats written (from the suffix):

``.nii``, ``.nii.gz``
    A NIfTI displacement field as 3D Slicer and ITK >= 5.4 expect it: ``dim = (5, X, Y, Z, 1, 3)``,
    intent code 1006 (``NIFTI_INTENT_DISPVECT``) and, as that intent requires, the vector
    components stored in **RAS** (x and y negated on disk). ITK >= 5.4 (SimpleITK >= 2.4, Slicer,
    ANTs built on ITK 5.4) converts them to LPS when reading, so every ITK-based reader gets LPS
    displacements; the header (geometry) is the one ITK writes. Older ITK readers (SimpleITK <= 2.3)
    do not convert and would see x and y with the wrong sign: use ``.nrrd``/``.mha``/``.h5`` with them.
    On reading, intent 1007 (``NIFTI_INTENT_VECTOR``, what ANTs and ITK write by default) means LPS
    components, 1006 means RAS components (converted by SimpleITK). A NIfTI field from NiftyReg/FSL
    (RAS components without intent 1006) needs its x and y negated (``geometry.ras_to_lps``).
``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``
    A 3-component float vector image with the fixed grid's geometry, LPS components.
``.h5``, ``.hdf5``, ``.tfm``, ``.txt``
    A ``SimpleITK.DisplacementFieldTransform`` written with ``sitk.WriteTransform`` (float64).
    ``.tfm``/``.txt`` is plain text and large (about 20 bytes per value); prefer ``.h5``.

Vector images are float32 unless ``dtype="float64"`` (float32 is ample: 1e-7 relative). SimpleITK's
``DisplacementFieldTransform`` needs float64 vectors: ``sitk.DisplacementFieldTransform(
sitk.ReadImage(path, sitk.sitkVectorFloat64))`` reads any of them.

Every file is checked before it is published (:mod:`MLVIRNETLib.io.integrity`) and every file read
is checked for truncation and for NaN/Inf values.

Reading also accepts, wherever a field is read (:func:`read_field`):

* an ITK ``CompositeTransform`` file (ANTs' ``Composite.h5``: affine + displacement field);
* a list of transform files in the order of ``antsApplyTransforms -t`` options, e.g.
  ``["out1Warp.nii.gz", "out0GenericAffine.mat"]``. The *first* listed transform acts first on a
  fixed point, as in ``antsApplyTransforms`` (``-t A -t B`` maps ``x`` to ``B(A(x))``; its
  documentation's "the last transform is applied first" speaks of moving the image). For
  ``antsRegistration``'s outputs the point map is ``x -> affine(warp(x))``, the same as ITK's
  ``CompositeTransform`` ``[affine, warp]`` (its queue applies the last-added transform first).

Lists and composites are evaluated exactly with SimpleITK (``TransformToDisplacementField``) on
the grid of the displacement field that acts first (for ANTs, the fixed image grid) or on a given
``reference`` grid.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation
from ..core.geometry import LPS_TO_RAS, ImageGrid
from .atomic import atomic_output
from .images import read_back_header, sitk_error_reason
from .integrity import check_file, check_input, count_nonfinite
from .native_stderr import held_native_stderr

PathLike = str | os.PathLike

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt")
LINEAR_SUFFIXES = (".mat",)
"""Read-only: ITK/ANTs linear transforms (``0GenericAffine.mat``), accepted in transform lists."""

NIFTI_INTENT_DISPVECT = 1006
NIFTI_INTENT_VECTOR = 1007


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
    """A batch-1 :class:`Deformation` -> 3-component vector image of LPS mm on its grid.

    Raises:
        ValueError: batch size other than 1.
    """
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


def sitk_to_deformation(
    image: sitk.Image, dtype: torch.dtype = torch.float32, device=None, source: PathLike | None = None
) -> Deformation:
    """A 3-D, 3-component vector image of LPS-mm displacements -> :class:`Deformation` (batch 1).

    Raises:
        ValueError: not 3-D, not 3 components, or NaN/infinite values (naming ``source`` and the count).
    """
    where = f" in {source}" if source is not None else ""
    if image.GetDimension() != 3:
        raise ValueError(
            f"a deformation field must be a 3-D image, got {image.GetDimension()}-D of size {image.GetSize()}{where}"
        )
    if image.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(
            f"a deformation field needs 3 components per voxel (x, y, z mm), got "
            f"{image.GetNumberOfComponentsPerPixel()} ({image.GetPixelIDTypeAsString()}){where}"
        )
    bad = count_nonfinite(image)
    if bad:
        raise ValueError(
            f"the deformation field{where or ''} contains {bad} non-finite (NaN or infinite) values "
            f"out of {3 * image.GetNumberOfPixels()}"
        )
    grid = ImageGrid.from_sitk(image)
    np_dtype = np.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else np.float64
    array = np.array(sitk.GetArrayViewFromImage(image), dtype=np_dtype)  # (D, H, W, 3): one copy
    u = torch.from_numpy(array).movedim(-1, 0)[None].to(dtype=dtype, device=device).contiguous()
    return Deformation(grid, u)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _itk_nifti_header(grid: ImageGrid, pixel: int, probe: Path) -> bytes:
    """The NIfTI-1 header ITK writes for a 3-component field on ``grid``, with intent DISPVECT.

    ITK writes the header of a one-voxel field with the same spacing, origin and direction (the
    geometry fields do not depend on the size); the sizes and the intent code are then set.
    """
    if max(grid.size) > 32767:
        raise ValueError(f"a NIfTI-1 field cannot hold a grid of size {grid.size}; use .nrrd, .mha or .h5")
    tiny = sitk.Image([1, 1, 1], pixel, 3)
    tiny.SetSpacing(grid.spacing)
    tiny.SetOrigin(grid.origin)
    tiny.SetDirection(grid.direction)
    try:
        sitk.WriteImage(tiny, str(probe), False)
        raw = probe.read_bytes()
    finally:
        probe.unlink(missing_ok=True)
    if len(raw) < 352 or struct.unpack("<i", raw[:4])[0] != 348:
        raise OSError(f"ITK wrote an unexpected NIfTI header ({len(raw)} bytes)")
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    header = bytearray(raw[:vox_offset])
    dims = list(struct.unpack("<8h", header[40:56]))
    if dims[0] != 5 or dims[4:6] != [1, 3]:
        raise OSError(f"ITK wrote an unexpected NIfTI dim field {dims} for a vector image")
    dims[1:4] = grid.size
    header[40:56] = struct.pack("<8h", *dims)
    header[68:70] = struct.pack("<h", NIFTI_INTENT_DISPVECT)
    return bytes(header)


def _write_nifti_field(u: torch.Tensor, grid: ImageGrid, tmp: Path, np_dtype: type, compress_level: int | None) -> None:
    """Stream ``u`` (3, D, H, W; LPS) to ``tmp`` as a DISPVECT NIfTI (RAS components), slab by slab;
    gzip at ``compress_level`` (``None``: a plain ``.nii``)."""
    pixel = sitk.sitkVectorFloat32 if np_dtype == np.float32 else sitk.sitkVectorFloat64
    header = _itk_nifti_header(grid, pixel, tmp.with_name(tmp.name + ".header-probe.nii"))
    depth, height, width = u.shape[1:]
    step = max(1, (8 << 20) // max(1, height * width * np.dtype(np_dtype).itemsize))
    little = np.dtype(np_dtype).newbyteorder("<")
    with open(tmp, "wb") as raw:
        compress = compress_level is not None
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compress_level, mtime=0) if compress else raw
        torch_dtype = torch.float32 if np_dtype == np.float32 else torch.float64
        try:
            out.write(header)
            for c in range(3):
                sign = float(LPS_TO_RAS[c, c])  # DISPVECT components are RAS (geometry's LPS -> RAS map)
                for z0 in range(0, depth, step):
                    slab = (u[c, z0 : z0 + step].detach().to("cpu", torch_dtype) * sign).numpy()
                    out.write(slab.astype(little, copy=False).tobytes())
        finally:
            if compress:
                out.close()
        raw.flush()
        os.fsync(raw.fileno())


def _verify_field_file(tmp: Path, shown: Path) -> None:
    check_file(tmp, shown)
    if field_format(shown) == "image" and not tmp.name.lower().endswith((".nii", ".nii.gz")):
        read_back_header(tmp, shown)


FIELD_COMPRESSION_LEVEL = 0
"""gzip level of ``.nii.gz`` fields by default: 0 stores the data in gzip's uncompressed blocks
(still a valid ``.nii.gz`` for every reader). A float32 displacement field hardly compresses, and
compressing a full-resolution field costs many times the time of storing it (docs/performance.md,
"Files"). Pass ``compress_level`` for smaller files."""


_FINITE_CHUNK = 1 << 22
"""Values per piece when a field is checked for NaN/Inf (the check's temporaries stay this small)."""


def _all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite, checked piece by piece: ``torch.isfinite`` of a whole
    full-resolution field allocates several copies of it."""
    flat = values.reshape(-1)
    return all(bool(torch.isfinite(piece).all()) for piece in flat.split(_FINITE_CHUNK))


def write_field(deformation: Deformation, path: PathLike, dtype: str = "float32",
                compress_level: int = FIELD_COMPRESSION_LEVEL) -> Path:
    """Write a batch-1 deformation atomically; the format comes from the suffix (module docstring).

    The file is checked (read back or its length compared with its header) before it is published:
    a full disk gives an error and an earlier file at ``path`` survives.

    Args:
        dtype: ``"float32"`` or ``"float64"`` for vector images (transforms are always float64).
        compress_level: gzip level 0-9 of a ``.nii.gz`` field (see :data:`FIELD_COMPRESSION_LEVEL`);
            other formats ignore it.

    Raises:
        ValueError: unsupported suffix, batch > 1, or a non-finite displacement.
        FileNotFoundError: the output folder does not exist.
        IsADirectoryError: ``path`` is a folder.
        OSError: the file could not be written completely (full disk:
            :class:`~MLVIRNETLib.io.integrity.IncompleteWriteError`) or the folder refuses files.
    """
    if Path(path).is_dir():
        raise IsADirectoryError(f"output path {path} is a folder; give a file name such as field.nii.gz")
    kind = field_format(path)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if isinstance(compress_level, bool) or not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be an integer from 0 to 9, got {compress_level!r}")
    if deformation.displacement.shape[0] != 1:
        batch = deformation.displacement.shape[0]
        raise ValueError(f"only a single deformation (batch 1) can be written, got batch {batch}")
    if not _all_finite(deformation.displacement):
        raise ValueError("the deformation contains non-finite displacements; nothing written")
    target = Path(path)
    name = target.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        np_dtype = np.float32 if dtype == "float32" else np.float64
        with atomic_output(target, verify=_verify_field_file) as tmp:
            level = compress_level if name.endswith(".gz") else None
            _write_nifti_field(deformation.displacement[0], deformation.grid, tmp, np_dtype, level)
    elif kind == "image":
        pixel = sitk.sitkVectorFloat32 if dtype == "float32" else sitk.sitkVectorFloat64
        image = deformation_to_sitk(deformation, pixel)
        with atomic_output(target, verify=_verify_field_file) as tmp:
            try:
                sitk.WriteImage(image, str(tmp), True)
            except RuntimeError as exc:
                raise OSError(f"cannot write deformation field {target}: {sitk_error_reason(exc)}") from None
    else:
        transform = sitk.DisplacementFieldTransform(deformation_to_sitk(deformation, sitk.sitkVectorFloat64))
        with atomic_output(target, verify=_verify_field_file) as tmp:
            try:
                sitk.WriteTransform(transform, str(tmp))
            except RuntimeError as exc:
                raise OSError(f"cannot write deformation field {target}: {sitk_error_reason(exc)}") from None
    return target


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
_ANTS_WARP = re.compile(r"^(?P<prefix>.*)1Warp\.nii(\.gz)?$")


def _flatten(transform: sitk.Transform) -> list[sitk.Transform]:
    """ITK queue order (the last one acts first on a point), composites expanded in place."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        out: list[sitk.Transform] = []
        for i in range(composite.GetNumberOfTransforms()):
            out.extend(_flatten(composite.GetNthTransform(i)))
        return out
    return [transform]


def _sitk_error(p: Path, exc: RuntimeError) -> ValueError:
    reason = sitk_error_reason(exc)
    if "suffix" in reason or "TransformIO" in str(exc):
        reason = "not a transform file SimpleITK can read (damaged or truncated?)"
    return ValueError(f"cannot read deformation field {p}: {reason}")


def check_itk_hdf5(path: PathLike, shown: str | None = None) -> None:
    """Check the structure of an ITK HDF5 transform file with h5py, before ITK reads it.

    ITK trusts the sizes stored in the file: a displacement field of size zero, or parameters that
    do not fill the stored grid, corrupt its heap and end the process after the error is reported.
    This check reads only the small datasets: every ``TransformGroup/N`` must name its
    ``TransformType``; a displacement field must hold 18 fixed parameters (size, origin,
    spacing, direction) with a positive integer size and positive spacing, and exactly
    ``3 * nx * ny * nz`` finite parameters.

    Raises:
        ValueError: naming ``shown`` (default ``path``) and what is wrong.
    """
    import h5py

    name = shown or str(path)
    try:
        with h5py.File(path, "r") as f:
            group = f.get("TransformGroup")
            if not isinstance(group, h5py.Group) or len(group) == 0:
                raise ValueError(f"{name} is an HDF5 file but not an ITK transform file (no TransformGroup)")
            for key in group:
                _check_h5_transform(group[key], f"{name} transform {key}")
    except OSError as exc:
        raise ValueError(f"cannot read {name} as HDF5: {' '.join(str(exc).split())}") from None


def _check_h5_transform(item, name: str) -> None:
    import h5py

    if not isinstance(item, h5py.Group) or "TransformType" not in item:
        raise ValueError(f"{name}: no TransformType")
    kind = item["TransformType"][()]
    kind = kind[0] if np.ndim(kind) else kind
    kind = kind.decode("utf-8", "replace") if isinstance(kind, bytes) else str(kind)
    if not kind.startswith("DisplacementFieldTransform"):
        return
    fixed = np.asarray(item.get("TransformFixedParameters", np.zeros(0))[()], dtype=float).ravel()
    params = item.get("TransformParameters")
    if fixed.size != 18:
        raise ValueError(f"{name}: a 3-D displacement field needs 18 fixed parameters, the file holds {fixed.size}")
    size, spacing = fixed[:3], fixed[6:9]
    if np.any(size < 1) or np.any(size != np.round(size)) or np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"{name}: displacement field of size {size.tolist()} and spacing {spacing.tolist()}; "
                         "the size must be positive whole numbers and the spacing positive")
    count = 0 if params is None else int(np.prod(params.shape))
    expected = 3 * int(np.prod(size))
    if count != expected:
        raise ValueError(f"{name}: the displacement field of size {[int(v) for v in size]} needs {expected} "
                         f"parameters, the file holds {count}")


def _read_piece(p: Path) -> list[sitk.Transform]:
    """One file -> transforms in ITK queue order; fields as float64 ``DisplacementFieldTransform``."""
    if not p.exists():
        raise FileNotFoundError(f"deformation field not found: {p}")
    if not p.is_file():
        raise ValueError(f"cannot read deformation field {p}: not a regular file")
    name = p.name.lower()
    if not name.endswith(IMAGE_SUFFIXES + TRANSFORM_SUFFIXES + LINEAR_SUFFIXES):
        field_format(p)  # raises the "unsupported" message
    check_input(p, "deformation field")
    try:
        with held_native_stderr():  # ITK/HDF5 diagnostics are dropped when the read fails
            if name.endswith(IMAGE_SUFFIXES):
                image = sitk.ReadImage(str(p))
                sitk_to_deformation(image, source=p)  # shape and NaN checks with the file's name
                return [sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))]
            if name.endswith((".h5", ".hdf5")):
                check_itk_hdf5(p)
            return _flatten(sitk.ReadTransform(str(p)))
    except RuntimeError as exc:
        raise _sitk_error(p, exc) from None


def _compose(queue: list[sitk.Transform], reference: ImageGrid | None, shown: str) -> sitk.Image:
    """Evaluate ``queue`` (ITK order) as a displacement image on ``reference`` or the first-acting field's grid."""
    if reference is None:
        fields = [t for t in queue if t.GetName() == "DisplacementFieldTransform"]
        if not fields:
            kinds = ", ".join(t.GetName() for t in queue)
            raise ValueError(
                f"{shown} holds only linear transforms ({kinds}): no displacement field defines the fixed grid; "
                "pass reference= (the fixed image's grid)"
            )
        reference = ImageGrid.from_sitk(sitk.DisplacementFieldTransform(fields[-1]).GetDisplacementField())
    composite = sitk.CompositeTransform(queue)
    return sitk.TransformToDisplacementField(
        composite,
        sitk.sitkVectorFloat64,
        list(reference.size),
        list(reference.origin),
        list(reference.spacing),
        list(reference.direction),
    )


def read_field(
    path: PathLike | Sequence[PathLike],
    dtype: torch.dtype = torch.float32,
    device=None,
    reference: ImageGrid | None = None,
) -> Deformation:
    """Read a deformation field (fixed -> moving, LPS mm) -> batch-1 :class:`Deformation`.

    Args:
        path: a field written by :func:`write_field` or by ITK/ANTs/Slicer (any suffix of the module
            docstring); an ITK composite transform file (ANTs ``Composite.h5``); or a list of files
            in ``antsApplyTransforms -t`` order, e.g. ``["out1Warp.nii.gz", "out0GenericAffine.mat"]``
            (the first listed acts first on a fixed point; see the module docstring).
        dtype, device: of the returned displacement.
        reference: the grid to evaluate a composite or list on; default the grid of the displacement
            field that acts first (ANTs: the fixed image grid). Required when there is no field.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: unsupported suffix; unreadable, truncated or damaged file; NaN/infinite values;
            not a 3-D 3-component displacement field; an ANTs ``1Warp`` file whose affine
            ``0GenericAffine.mat`` lies beside it (pass both, or the ``Composite.h5``).
    """
    if isinstance(path, (str, os.PathLike)):
        paths = [Path(path)]
    else:
        paths = [Path(p) for p in path]
        if not paths:
            raise ValueError("read_field needs at least one file")
    shown = str(paths[0]) if len(paths) == 1 else "[" + ", ".join(str(p) for p in paths) + "]"
    if len(paths) == 1:
        p = paths[0]
        match = _ANTS_WARP.match(p.name)
        affine = p.with_name(f"{match['prefix']}0GenericAffine.mat") if match else None
        if affine is not None and affine.is_file():
            raise ValueError(
                f"{p} is the deformable part of an ANTs registration whose affine part {affine} lies beside it; "
                f"alone it misses the affine. Read both: read_field([{str(p)!r}, {str(affine)!r}]), "
                "or the Composite.h5 of antsRegistration --write-composite-transform 1"
            )
    queue: list[sitk.Transform] = []
    for p in reversed(paths):  # antsApplyTransforms -t order -> ITK queue (the last in the queue acts first)
        queue.extend(_read_piece(p))
    if len(queue) == 1 and queue[0].GetName() == "DisplacementFieldTransform" and reference is None:
        image = sitk.DisplacementFieldTransform(queue[0]).GetDisplacementField()
    elif len(queue) == 1 and queue[0].GetName() not in ("DisplacementFieldTransform",) and len(paths) == 1 and (
        paths[0].name.lower().endswith(TRANSFORM_SUFFIXES) and reference is None
    ):
        kind = queue[0].GetName()
        article = "an" if kind[:1] in "AEIOU" else "a"
        raise ValueError(f"{shown} holds {article} {kind}, not a displacement field transform")
    else:
        try:
            image = _compose(queue, reference, shown)
        except RuntimeError as exc:
            raise ValueError(f"cannot compose the transforms of {shown}: {sitk_error_reason(exc)}") from None
    return sitk_to_deformation(image, dtype=dtype, device=device, source=shown)
