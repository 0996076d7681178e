"""File integrity: is a written or read file complete, and are its values finite?

SimpleITK reads a truncated NIfTI file (``.nii`` or ``.nii.gz``) without a word, filling the
missing voxels with 0, and ITK's NIfTI and ``.tfm`` writers report a full disk only on the
console. The checks here compare what a file's header promises with what the file holds, by
streaming through it (a compressed file is decompressed in chunks, never held in memory):

* NIfTI-1/-2 (``.nii``, ``.nii.gz``): ``vox_offset + prod(dim) * bitpix / 8`` bytes (decompressed);
  a ``.gz`` stream must also end properly (gzip's length and CRC-32 trailer).
* MetaImage (``.mha``, ``.mhd`` + data file): ``DimSize``, ``ElementType`` and channels against
  the raw or zlib-compressed data.
* HDF5 (``.h5``, ``.hdf5``): the file must be as long as the end-of-file address in its superblock.
* ITK text transforms (``.tfm``, ``.txt``): the file must end with a complete ``FixedParameters``
  line, and a displacement field's ``Parameters`` must hold ``3 * prod(size)`` numbers.

NRRD files are not checked here: SimpleITK itself refuses a truncated NRRD with a clear message.
Every check raises ``ValueError`` naming the path it is given as ``shown`` (the user's path, also
when the file checked is a temporary one).
"""

from __future__ import annotations

import gzip
import itertools
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

PathLike = str | os.PathLike

_CHUNK = 1 << 20


class IncompleteWriteError(OSError):
    """A written file is incomplete (typically a full disk); nothing was published at the final path."""


# ----------------------------------------------------------------------------------------------
# NIfTI
# ----------------------------------------------------------------------------------------------
def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def nifti_expected_length(header: bytes, shown: PathLike) -> int | None:
    """Bytes a single-file NIfTI-1/-2 needs (header, extensions and voxel data) from its header.

    Returns:
        ``vox_offset + prod(dim[1:dim[0]+1]) * bitpix / 8``, or ``None`` for a header-only file of a
        ``.hdr``/``.img`` pair (its data is elsewhere).

    Raises:
        ValueError: the header is short or not a NIfTI header.
    """
    for endian in "<>":
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] == 348:
            if len(header) < 348:
                raise ValueError(f"{shown} is truncated: its NIfTI header is incomplete ({len(header)} of 348 bytes)")
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            magic = header[344:348]
            minimum = 352
            break
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] == 540:
            if len(header) < 540:
                raise ValueError(f"{shown} is truncated: its NIfTI-2 header is incomplete ({len(header)} of 540 bytes)")
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            magic = header[4:8]
            minimum = 544
            break
    else:
        raise ValueError(f"{shown} is not a NIfTI file (no valid header)")
    if magic[:3] in (b"ni1", b"ni2"):
        return None  # .hdr of a pair: the voxel data live in the .img file
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]) or bitpix <= 0 or bitpix % 8:
        raise ValueError(f"{shown} has a damaged NIfTI header (dim {list(dims)}, bitpix {bitpix})")
    count = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=np.float64))
    return max(int(vox_offset), minimum) + count * (bitpix // 8)


def _nifti_float_type(header: bytes) -> np.dtype | None:
    """The numpy type of a float NIfTI's voxels (float32/float64), else ``None``."""
    endian = "<" if struct.unpack("<i", header[:4])[0] in (348, 540) else ">"
    field = header[70:72] if struct.unpack(endian + "i", header[:4])[0] == 348 else header[12:14]
    code = struct.unpack(endian + "h", field)[0]
    kind = {16: "f4", 64: "f8"}.get(code)
    return np.dtype(endian + kind) if kind else None


def _nifti_chunks(p: Path) -> Iterator[bytes]:
    if _is_gzip(p):
        yield from _gunzip_chunks(p)
        return
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _gunzip_chunks(p: Path) -> Iterator[bytes]:
    """The decompressed content of a gzip file, at most ``4 * _CHUNK`` bytes at a time.

    zlib checks each member's CRC-32 and length trailer itself (``wbits=31``), in C, on large
    chunks: about twice as fast as :mod:`gzip`'s reader, which computes the CRC separately over
    small buffers. Members may follow each other (``cat a.gz b.gz``) and zero bytes may pad the
    end, as :mod:`gzip` allows.

    Raises:
        EOFError: the stream ends inside a member (a truncated file).
        gzip.BadGzipFile: bytes after a member that start no other member.
        zlib.error: damaged compressed data, or a CRC-32 or length mismatch.
    """
    limit = 4 * _CHUNK
    member = zlib.decompressobj(wbits=31)
    started = False  # has the current member been given any byte?
    with open(p, "rb") as fh:
        while raw := fh.read(_CHUNK):
            data = raw
            while data:
                if not started:
                    data = data.lstrip(b"\x00")  # zero padding between or after members
                    if not data:
                        break
                    if data[:1] != b"\x1f":
                        raise gzip.BadGzipFile("bytes after a gzip member that start no other member")
                    started = True
                out = member.decompress(data, limit)
                if out:
                    yield out
                if member.eof:
                    data = member.unused_data
                    member, started = zlib.decompressobj(wbits=31), False
                else:
                    data = member.unconsumed_tail
    while started and not member.eof:  # output still held back by the limit
        out = member.decompress(member.unconsumed_tail, limit)
        if not out:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        yield out


def check_nifti(path: PathLike, shown: PathLike | None = None) -> int:
    """Check that a ``.nii`` or ``.nii.gz`` file holds every byte its header promises.

    A ``.gz`` file is decompressed as a stream (1 MiB at a time) and must end with a valid gzip
    trailer (length and CRC-32). Float voxels are counted for NaN/Inf on the way (ITK's NIfTI
    reader silently turns NaN into 0).

    Returns:
        the number of NaN or infinite voxel values (0 for integer data).

    Raises:
        ValueError: truncated or damaged file, naming ``shown`` (default ``path``).
    """
    p = Path(path)
    shown = p if shown is None else shown
    total = 0
    nonfinite = 0
    pending = b""
    try:
        chunks = _nifti_chunks(p)
        first = b""
        while len(first) < 540 and (chunk := next(chunks, b"")):  # the header, whatever the chunking
            first += chunk
        expected = nifti_expected_length(first[:540], shown)
        if expected is None:
            return 0
        float_type = _nifti_float_type(first)
        data_start = expected - _data_bytes(first, shown)
        for chunk in itertools.chain([first], chunks):
            begin = total
            total += len(chunk)
            if float_type is None or total <= data_start:
                continue
            buf = pending + chunk[max(0, data_start - begin) :]
            usable = len(buf) - len(buf) % float_type.itemsize
            nonfinite += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:usable], dtype=float_type))))
            pending = buf[usable:]
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"{shown} is truncated or damaged: its gzip stream is broken after {total} decompressed bytes ({exc})"
        ) from None
    if expected is None:
        raise ValueError(f"{shown} is not a NIfTI file (no valid header)")
    if total < expected:
        raise ValueError(
            f"{shown} is truncated: its NIfTI header requires {expected} bytes of header and voxel data, "
            f"the file holds {total} ({100.0 * total / expected:.1f} %)"
        )
    return nonfinite


def _data_bytes(header: bytes, shown: PathLike) -> int:
    """Voxel data bytes of a NIfTI header (the expected length minus the data offset)."""
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            break
        if struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            break
    else:
        raise ValueError(f"{shown} is not a NIfTI file (no valid header)")
    return int(np.prod([int(d) for d in dims[1 : dims[0] + 1]], dtype=np.float64)) * (bitpix // 8)


# ----------------------------------------------------------------------------------------------
# MetaImage
# ----------------------------------------------------------------------------------------------
_MET_SIZES = {
    "MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
    "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def check_metaimage(path: PathLike, shown: PathLike | None = None) -> None:
    """Check that a ``.mha``/``.mhd`` file (and its data file) holds the voxel data its header promises.

    Raises:
        ValueError: truncated or damaged file, naming ``shown`` (default ``path``).
    """
    p = Path(path)
    shown = p if shown is None else shown
    fields: dict[str, str] = {}
    offset = 0
    with open(p, "rb") as fh:
        for raw_line in iter(lambda: fh.readline(4096), b""):
            offset += len(raw_line)
            key, sep, value = raw_line.decode("latin-1").partition("=")
            if not sep:
                continue
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    data_file = fields.get("ElementDataFile")
    etype = fields.get("ElementType")
    if data_file is None or etype not in _MET_SIZES or "DimSize" not in fields:
        return  # not a layout we can check; SimpleITK decides
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        raise ValueError(f"{shown} has a damaged MetaImage header") from None
    expected = int(np.prod(dims, dtype=np.float64)) * channels * _MET_SIZES[etype]
    if data_file.upper() == "LOCAL":
        data_path, start = p, offset
    elif data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
        return
    else:
        data_path = p.parent / data_file
        start = max(header_size, 0)
        if not data_path.is_file():
            raise ValueError(f"{shown}: its data file {data_path.name} is missing")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if not compressed:
        available = data_path.stat().st_size - start
        if header_size == -1:
            return  # data at the end of the file: any length >= expected is fine
        if available < expected:
            raise ValueError(
                f"{shown} is truncated: its header requires {expected} bytes of voxel data, "
                f"the file holds {max(available, 0)}"
            )
        return
    decomp = zlib.decompressobj()
    total = 0
    try:
        with open(data_path, "rb") as fh:
            fh.seek(start)
            while chunk := fh.read(_CHUNK):
                total += len(decomp.decompress(chunk))
                if decomp.eof:
                    break
            total += len(decomp.flush())
    except zlib.error as exc:
        raise ValueError(f"{shown} is damaged: its compressed voxel data cannot be decompressed ({exc})") from None
    if not decomp.eof or total < expected:
        raise ValueError(
            f"{shown} is truncated: its header requires {expected} bytes of voxel data, the compressed stream "
            f"holds {total} ({100.0 * total / max(expected, 1):.1f} %)"
        )


# ----------------------------------------------------------------------------------------------
# HDF5 and ITK text transforms
# ----------------------------------------------------------------------------------------------
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_hdf5(path: PathLike, shown: PathLike | None = None) -> None:
    """Check that an HDF5 file is as long as the end-of-file address in its superblock.

    Raises:
        ValueError: not an HDF5 file, or truncated, naming ``shown`` (default ``path``).
    """
    p = Path(path)
    shown = p if shown is None else shown
    with open(p, "rb") as fh:
        head = fh.read(64)
    if not head.startswith(_HDF5_SIGNATURE):
        raise ValueError(f"{shown} is not an HDF5 file (it may be truncated or damaged)")
    version = head[8]
    if version in (0, 1):
        size_offsets = head[13]
        base = 24 if version == 0 else 28
    elif version in (2, 3):
        size_offsets = head[9]
        base = 12
    else:
        return
    eof_at = base + 2 * size_offsets
    if size_offsets not in (2, 4, 8) or len(head) < eof_at + size_offsets:
        raise ValueError(f"{shown} is truncated: its HDF5 superblock is incomplete")
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[size_offsets]
    eof = struct.unpack(fmt, head[eof_at : eof_at + size_offsets])[0]
    size = p.stat().st_size
    if size < eof:
        raise ValueError(f"{shown} is truncated: HDF5 says the file is {eof} bytes long, it holds {size}")


def check_itk_text_transform(path: PathLike, shown: PathLike | None = None) -> None:
    """Check an ITK ``.tfm``/``.txt`` transform file for truncation (streamed, 1 MiB at a time).

    The last line must be a complete ``FixedParameters:`` line; for a file holding one
    ``DisplacementFieldTransform`` the ``Parameters:`` line must hold ``3 * prod(size)`` numbers.

    Raises:
        ValueError: truncated or damaged file, naming ``shown`` (default ``path``).
    """
    p = Path(path)
    shown = p if shown is None else shown
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(4096)
        fh.seek(max(0, size - 4096))
        tail = fh.read()
    lines = tail.rstrip(b"\n").split(b"\n")
    if not head.startswith(b"#Insight Transform File") or not tail.endswith(b"\n") or not lines[-1].startswith(
        b"FixedParameters:"
    ):
        raise ValueError(f"{shown} is truncated or damaged: it does not end with a complete FixedParameters line")
    if head.count(b"Transform:") != 1 or b"DisplacementFieldTransform" not in head:
        return
    fixed = lines[-1].split()[1:]
    if len(fixed) != 18:
        raise ValueError(f"{shown} is damaged: a 3-D displacement field needs 18 fixed parameters, found {len(fixed)}")
    try:
        expected = 3 * int(np.prod([float(v) for v in fixed[:3]]))
    except ValueError:
        raise ValueError(f"{shown} is damaged: its fixed parameters are not numbers") from None
    start = head.find(b"\nParameters:")
    if start < 0:
        raise ValueError(f"{shown} is damaged: it has no Parameters line")
    count = 0
    previous_ended_in_token = False
    with open(p, "rb") as fh:
        fh.seek(start + len(b"\nParameters:"))
        while chunk := fh.read(_CHUNK):
            end = chunk.find(b"\n")
            part = chunk if end < 0 else chunk[:end]
            count += len(part.split())
            if previous_ended_in_token and part[:1] and not part[:1].isspace():
                count -= 1  # a number split between two chunks
            if part:
                previous_ended_in_token = not part[-1:].isspace()
            if end >= 0:
                break
    if count != expected:
        raise ValueError(
            f"{shown} is truncated or damaged: its displacement field needs {expected} parameters, it holds {count}"
        )


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def check_file(path: PathLike, shown: PathLike | None = None) -> int:
    """Run the integrity check that fits ``path``'s suffix (see the module docstring); other suffixes pass.

    Returns:
        the number of NaN/Inf voxel values seen in the raw data (NIfTI only; 0 otherwise).

    Raises:
        ValueError: truncated or damaged file, naming ``shown`` (default ``path``).
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return check_nifti(p, shown)
    if name.endswith((".mha", ".mhd")):
        check_metaimage(p, shown)
    elif name.endswith((".h5", ".hdf5")):
        check_hdf5(p, shown)
    elif name.endswith((".tfm", ".txt")):
        check_itk_text_transform(p, shown)
    return 0


def check_input(path: PathLike, what: str = "image") -> None:
    """:func:`check_file` for an input, with the message ``cannot read {what} PATH: reason``.

    Raises:
        ValueError: truncated or damaged file, or NaN/Inf values in a NIfTI file's raw data.
    """
    try:
        bad = check_file(path)
    except ValueError as exc:
        text = str(exc)
        prefix = f"{path} "
        reason = text[len(prefix):] if text.startswith(prefix) else text
        raise ValueError(f"cannot read {what} {path}: {reason}") from None
    if bad:
        raise ValueError(
            f"{what} {path} holds {bad} NaN or infinite value(s); "
            "repair or replace them (e.g. with the background value) before using the file"
        )


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------
def count_nonfinite(image: sitk.Image) -> int:
    """Number of NaN or infinite values in a float image (scalar or vector); 0 for integer images.

    Counted slab by slab on SimpleITK's buffer (no copy of the image).
    """
    view = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(view.dtype, np.floating) and not np.issubdtype(view.dtype, np.complexfloating):
        return 0
    flat = view.reshape(view.shape[0], -1) if view.ndim > 1 else view.reshape(1, -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    return int(sum(np.count_nonzero(~np.isfinite(flat[i : i + step])) for i in range(0, flat.shape[0], step)))


def require_finite(image: sitk.Image, shown: PathLike, what: str = "image") -> None:
    """Refuse an image holding NaN or infinite values.

    Raises:
        ValueError: naming ``shown`` and the number of non-finite values.
    """
    bad = count_nonfinite(image)
    if bad:
        total = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel()
        raise ValueError(
            f"{what} {shown} holds {bad} NaN or infinite value(s) out of {total}; "
            "repair or replace them (e.g. with the background value) before using the file"
        )
