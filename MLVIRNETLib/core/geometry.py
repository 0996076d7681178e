"""Coordinate frames of MLVIRNET and every conversion between them.

This module is the only place in the project that converts coordinates, normalises them or flips
axes; :mod:`MLVIRNETLib.core.sampling` is the only one that calls ``grid_sample``, with the
coordinate maps built here. Everything else goes through these two.

Frames
------
index
    Continuous voxel index ``(i, j, k)`` in **x, y, z order**, 0-based, voxel centres at integers.
world (LPS)
    Physical millimetres in the patient frame used by ITK/SimpleITK and every file on disk:
    ``world = origin + direction @ (spacing * index)``. ``direction`` holds the unit vectors of the
    index axes as its columns (SimpleITK's row-major 9-tuple).
RAS
    3D Slicer's world frame: ``(x, y, z)_RAS = (-x, -y, z)_LPS``. Only :func:`lps_to_ras` and
    :func:`ras_to_lps` (and the matrix helpers built on them) cross between the two.
normalised
    The ``[-1, 1]`` frame of ``grid_sample`` with ``align_corners=False`` (:data:`ALIGN_CORNERS`):
    -1 and +1 are the outer faces of the first and last voxel, so voxel ``i`` of ``n`` sits at
    ``(2 i + 1) / n - 1``. We choose ``align_corners=False`` because it keeps the field of view (the
    outer faces) fixed when a grid is coarsened by average pooling, which is what the pyramid does.

Array layouts
-------------
Image tensors are ``(N, C, D, H, W)`` with ``D = z``, ``H = y``, ``W = x`` (the layout of
``sitk.GetArrayFromImage``); grid shapes in that order are called ``shape_zyx``. Point and vector
arrays end in an axis of length 3 in **(x, y, z)** order; grid sizes in that order are ``size``.

Every change between the two orders goes through this module: :func:`xyz_to_zyx` and
:func:`zyx_to_xyz` (sizes, spacings, index tuples, index arrays along their last axis),
:attr:`ImageGrid.shape_zyx` and :attr:`ImageGrid.spacing_zyx`, :meth:`ImageGrid.array_index_to_world`
and :meth:`ImageGrid.world_to_array_index` (array indices such as the rows of ``np.argwhere``),
:func:`array_slices` (an index box as array slices) and :func:`index_axis_to_array_axis` /
:func:`array_axis_to_index_axis` (axis numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar, overload

import numpy as np
import torch

ALIGN_CORNERS = False
"""The one ``align_corners`` value used for every ``grid_sample``/``interpolate`` in MLVIRNET."""

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""Linear map between LPS and RAS (its own inverse)."""

Array = np.ndarray | torch.Tensor
_T = TypeVar("_T")


# ----------------------------------------------------------------------------------------------
# RAS <-> LPS
# ----------------------------------------------------------------------------------------------
def lps_to_ras(points: Array) -> Array:
    """Points or vectors ``(..., 3)`` from LPS to RAS (negate x and y). Returns a new array."""
    return _flip_xy(points)


def ras_to_lps(points: Array) -> Array:
    """Points or vectors ``(..., 3)`` from RAS to LPS (negate x and y). Returns a new array."""
    return _flip_xy(points)


def _flip_xy(points: Array) -> Array:
    if points.shape[-1] != 3:
        raise ValueError(f"expected points with a last axis of length 3, got shape {tuple(points.shape)}")
    sign = [-1.0, -1.0, 1.0]
    if isinstance(points, torch.Tensor):
        return points * torch.tensor(sign, dtype=points.dtype, device=points.device)
    return np.asarray(points, dtype=float) * np.asarray(sign)


def matrix_lps_to_ras(matrix_lps: np.ndarray) -> np.ndarray:
    """A 4x4 matrix whose *output* is LPS, rewritten so that its output is RAS.

    Use it for ``IJKToRAS = matrix_lps_to_ras(grid.index_to_world_matrix())``.
    """
    m = np.asarray(matrix_lps, dtype=float).copy()
    m[:3, :] = LPS_TO_RAS @ m[:3, :]
    return m


def matrix_ras_to_lps(matrix_ras: np.ndarray) -> np.ndarray:
    """Inverse of :func:`matrix_lps_to_ras` (the flip is its own inverse)."""
    return matrix_lps_to_ras(matrix_ras)


def world_transform_lps_to_ras(matrix_lps: np.ndarray) -> np.ndarray:
    """A 4x4 world->world transform in LPS rewritten to act on RAS points: ``F @ T @ F``."""
    f = np.eye(4)
    f[:3, :3] = LPS_TO_RAS
    return f @ np.asarray(matrix_lps, dtype=float) @ f


world_transform_ras_to_lps = world_transform_lps_to_ras


# ----------------------------------------------------------------------------------------------
# Array-index order: (z, y, x) arrays <-> (x, y, z) ITK indices, sizes and spacings
# ----------------------------------------------------------------------------------------------
@overload
def xyz_to_zyx(values: np.ndarray) -> np.ndarray: ...


@overload
def xyz_to_zyx(values: torch.Tensor) -> torch.Tensor: ...


@overload
def xyz_to_zyx(values: Sequence[_T]) -> tuple[_T, ...]: ...


def xyz_to_zyx(values: Any) -> Any:
    """ITK order ``(x, y, z)`` -> array order ``(z, y, x)``: reverses the last axis (of length 3).

    For sizes, spacings (mm), voxel indices and index arrays ``(..., 3)``, e.g. ``image.GetSize()``
    -> the shape of ``sitk.GetArrayFromImage(image)``. The order swap is its own inverse;
    :func:`zyx_to_xyz` is the same operation, named for the other direction.

    Args:
        values: a sequence of 3 items (any type: numbers, slices, ...), or a numpy array or torch
            tensor ``(..., 3)``.

    Returns:
        A tuple for a sequence; a new C-contiguous numpy array (same dtype) for a numpy array; a
        new tensor (same dtype and device) for a tensor.

    Raises:
        ValueError: the last axis (or the sequence) does not have length 3.
    """
    return _reverse_last_axis(values)


@overload
def zyx_to_xyz(values: np.ndarray) -> np.ndarray: ...


@overload
def zyx_to_xyz(values: torch.Tensor) -> torch.Tensor: ...


@overload
def zyx_to_xyz(values: Sequence[_T]) -> tuple[_T, ...]: ...


def zyx_to_xyz(values: Any) -> Any:
    """Array order ``(z, y, x)`` -> ITK order ``(x, y, z)``: reverses the last axis (of length 3).

    For array shapes, ``(z, y, x)`` spacings (mm), array indices and index arrays ``(..., 3)``, e.g.
    the rows of ``np.argwhere(mask)`` / ``torch.nonzero(mask)`` of a ``(D, H, W)`` mask -> voxel
    indices ``(i, j, k)`` for :meth:`ImageGrid.index_to_world`. Same argument and return types
    as :func:`xyz_to_zyx`.
    """
    return _reverse_last_axis(values)


def _reverse_last_axis(values: Any) -> Any:
    if isinstance(values, torch.Tensor):
        if values.ndim == 0 or values.shape[-1] != 3:
            raise ValueError(f"expected a last axis of length 3 (x, y, z or z, y, x), got shape {tuple(values.shape)}")
        return values.flip(-1)
    if isinstance(values, np.ndarray):
        if values.ndim == 0 or values.shape[-1] != 3:
            raise ValueError(f"expected a last axis of length 3 (x, y, z or z, y, x), got shape {values.shape}")
        return np.ascontiguousarray(values[..., ::-1])
    items = tuple(values)
    if len(items) != 3:
        raise ValueError(f"expected 3 values (x, y, z or z, y, x), got {len(items)}: {items!r}")
    return items[::-1]


def index_axis_to_array_axis(axis: int) -> int:
    """Array axis (0 = D = z, 1 = H = y, 2 = W = x) of index axis ``axis`` (0 = x, 1 = y, 2 = z)."""
    if axis not in (0, 1, 2):
        raise ValueError(f"an index axis must be 0, 1 or 2 (x, y, z), got {axis}")
    return 2 - int(axis)


def array_axis_to_index_axis(axis: int) -> int:
    """Index axis (0 = x, 1 = y, 2 = z) of array axis ``axis`` (0 = D = z, 1 = H = y, 2 = W = x)."""
    if axis not in (0, 1, 2):
        raise ValueError(f"an array axis must be 0, 1 or 2 (z, y, x), got {axis}")
    return 2 - int(axis)


def array_slices(index_lo: Sequence[int], index_hi: Sequence[int]) -> tuple[slice, slice, slice]:
    """The half-open voxel box ``index_lo <= (i, j, k) < index_hi`` (x, y, z order) as slices of a
    ``(D, H, W)`` array, i.e. ``(slice(k_lo, k_hi), slice(j_lo, j_hi), slice(i_lo, i_hi))``."""
    lo = xyz_to_zyx([int(v) for v in index_lo])
    hi = xyz_to_zyx([int(v) for v in index_hi])
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


# ----------------------------------------------------------------------------------------------
# Image grid
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageGrid:
    """Sampling grid of a 3-D image.

    Attributes:
        size: voxels per axis, ``(nx, ny, nz)``.
        spacing: voxel size in mm, ``(sx, sy, sz)``.
        origin: LPS position in mm of the centre of voxel ``(0, 0, 0)``.
        direction: row-major 3x3 matrix (9 floats) whose columns are the LPS unit vectors of the
            index axes, as ``sitk.Image.GetDirection()``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(s) for s in self.origin)
        direction = tuple(float(s) for s in np.asarray(self.direction, dtype=float).ravel())
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"grid size must be 3 positive integers (nx, ny, nz), got {self.size}")
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ValueError(f"grid spacing must be 3 positive finite mm values, got {self.spacing}")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise ValueError(f"grid origin must be 3 finite mm values, got {self.origin}")
        if len(direction) != 9:
            raise ValueError(f"grid direction must have 9 entries (3x3), got {len(direction)}")
        d = np.asarray(direction).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError(f"grid direction must be orthonormal, got {d.tolist()}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> "ImageGrid":
        """Grid of a 3-D ``SimpleITK.Image``."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3-D image, got a {image.GetDimension()}-D image of size {image.GetSize()}")
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_index_to_world_matrix(cls, matrix: np.ndarray, size: Sequence[int]) -> "ImageGrid":
        """Grid from a 4x4 index->LPS matrix (spacing folded into the columns) and ``(nx, ny, nz)``."""
        m = np.asarray(matrix, dtype=float)
        if m.shape != (4, 4):
            raise ValueError(f"expected a 4x4 matrix, got shape {m.shape}")
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        direction = m[:3, :3] / spacing
        return cls(tuple(size), tuple(spacing), tuple(m[:3, 3]), tuple(direction.ravel()))

    @classmethod
    def from_ijk_to_ras(cls, matrix_ras: np.ndarray, size: Sequence[int]) -> "ImageGrid":
        """Grid from Slicer's IJKToRAS 4x4 matrix and ``(nx, ny, nz)``."""
        return cls.from_index_to_world_matrix(matrix_ras_to_lps(matrix_ras), size)

    def copy_to_sitk(self, image) -> None:
        """Set spacing, origin and direction of a ``SimpleITK.Image`` (sizes must agree)."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match grid size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    # -- basic properties -----------------------------------------------------------------------
    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape ``(D, H, W) = (nz, ny, nx)``."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in array order ``(sz, sy, sx)``: the spacing along ``D``, ``H`` and ``W``."""
        return xyz_to_zyx(self.spacing)  # type: ignore[return-value]

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix, columns = LPS unit vectors of the index axes."""
        return np.asarray(self.direction).reshape(3, 3)

    @property
    def extent(self) -> np.ndarray:
        """Physical length of each index axis between outer voxel faces, mm, ``(x, y, z)``."""
        return np.asarray(self.size) * np.asarray(self.spacing)

    def index_to_world_matrix(self) -> np.ndarray:
        """4x4 matrix (float64) from index ``(i, j, k, 1)`` to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin
        return m

    def world_to_index_matrix(self) -> np.ndarray:
        """4x4 matrix (float64) from LPS mm to continuous index."""
        return np.linalg.inv(self.index_to_world_matrix())

    def index_to_normalized_matrix(self) -> np.ndarray:
        """4x4 matrix from index to normalised ``[-1, 1]`` coordinates (``align_corners=False``)."""
        n = np.asarray(self.size, dtype=float)
        m = np.eye(4)
        m[:3, :3] = np.diag(2.0 / n)
        m[:3, 3] = 1.0 / n - 1.0
        return m

    def world_to_normalized_matrix(self) -> np.ndarray:
        """4x4 matrix from LPS mm to normalised coordinates of this grid."""
        return self.index_to_normalized_matrix() @ self.world_to_index_matrix()

    def index_to_ras_matrix(self) -> np.ndarray:
        """Slicer's IJKToRAS matrix of this grid."""
        return matrix_lps_to_ras(self.index_to_world_matrix())

    # -- point conversions ----------------------------------------------------------------------
    def index_to_world(self, index: Array) -> Array:
        """Continuous indices ``(..., 3)`` (x, y, z) -> LPS mm ``(..., 3)``."""
        return apply_affine(self.index_to_world_matrix(), index)

    def world_to_index(self, points: Array) -> Array:
        """LPS mm ``(..., 3)`` -> continuous indices ``(..., 3)`` (x, y, z)."""
        return apply_affine(self.world_to_index_matrix(), points)

    def array_index_to_world(self, index_zyx: Array) -> Array:
        """Array indices ``(..., 3)`` in **(z, y, x)** order -> LPS mm ``(..., 3)``.

        For positions in a ``(D, H, W)`` array of this grid, e.g. the rows of ``np.argwhere(mask)``
        or ``torch.nonzero(mask)``, or their mean. numpy (any dtype) in -> float64 numpy out; an
        integer tensor is converted to float64, a floating tensor keeps its dtype.
        """
        if isinstance(index_zyx, torch.Tensor):
            index = zyx_to_xyz(index_zyx)
            return self.index_to_world(index if index.is_floating_point() else index.to(torch.float64))
        return self.index_to_world(zyx_to_xyz(np.asarray(index_zyx)).astype(float))

    def world_to_array_index(self, points: Array) -> Array:
        """LPS mm ``(..., 3)`` -> continuous array indices ``(..., 3)`` in **(z, y, x)** order.

        The inverse of :meth:`array_index_to_world`; round to index a ``(D, H, W)`` array. numpy in
        -> float64 numpy out, torch keeps dtype.
        """
        return xyz_to_zyx(self.world_to_index(points))

    def world_to_normalized(self, points: Array) -> Array:
        """LPS mm ``(..., 3)`` -> normalised ``grid_sample`` coordinates ``(..., 3)`` (x, y, z)."""
        return apply_affine(self.world_to_normalized_matrix(), points)

    def index_vectors_to_world(self, vectors: Array) -> Array:
        """Displacements in voxels along the index axes ``(..., 3)`` -> LPS mm ``(..., 3)``."""
        return apply_affine(self.index_to_world_matrix(), vectors, linear_only=True)

    def world_vectors_to_index(self, vectors: Array) -> Array:
        """Displacements in LPS mm ``(..., 3)`` -> voxels along the index axes ``(..., 3)``."""
        return apply_affine(self.world_to_index_matrix(), vectors, linear_only=True)

    def index_field_to_world(self, field: torch.Tensor) -> torch.Tensor:
        """A voxel-unit displacement field ``(N, 3, D, H, W)`` -> LPS mm, same shape."""
        _check_field(field)
        return self.index_vectors_to_world(field.movedim(1, -1)).movedim(-1, 1)

    def world_field_to_index(self, field: torch.Tensor) -> torch.Tensor:
        """An LPS-mm displacement field ``(N, 3, D, H, W)`` -> voxel units, same shape."""
        _check_field(field)
        return self.world_vectors_to_index(field.movedim(1, -1)).movedim(-1, 1)

    def index_points(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Integer voxel indices of all voxels as ``(D, H, W, 3)`` (x, y, z order)."""
        nx, ny, nz = self.size
        k, j, i = torch.meshgrid(
            torch.arange(nz, device=device, dtype=dtype),
            torch.arange(ny, device=device, dtype=dtype),
            torch.arange(nx, device=device, dtype=dtype),
            indexing="ij",
        )
        return torch.stack([i, j, k], dim=-1)

    def normalized_points(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Normalised ``grid_sample`` coordinates of all voxel centres of this grid as ``(D, H, W, 3)``
        (x, y, z order): ``(2 i + 1) / n - 1`` along each index axis (``align_corners=False``), the
        same as ``world_to_normalized(world_points())`` for any direction, origin and spacing,
        without the round trip through world coordinates."""
        axes = [((2.0 * torch.arange(n, dtype=torch.float64) + 1.0) / n - 1.0).to(dtype) for n in self.size]
        nx, ny, nz = self.size
        out = torch.empty((nz, ny, nx, 3), dtype=dtype)
        out[..., 0] = axes[0][None, None, :]
        out[..., 1] = axes[1][None, :, None]
        out[..., 2] = axes[2][:, None, None]
        return out.to(device) if device is not None else out

    def world_points(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """LPS mm of all voxel centres as ``(D, H, W, 3)`` (x, y, z order)."""
        # summed in float64 and then cast
        k, j, i = index_affine_terms(self.index_to_world_matrix(), self.size, device)
        return (k + j + i).to(dtype)

    def contains_world(self, points: Array, margin_voxels: float = 0.5) -> np.ndarray:
        """Boolean ``(...)``: points ``(..., 3)`` lie within the outer voxel faces (+ margin)."""
        idx = np.asarray(self.world_to_index(np.asarray(points, dtype=float)))
        lo = -margin_voxels
        hi = np.asarray(self.size) - 1 + margin_voxels
        return np.all((idx >= lo - 1e-6) & (idx <= hi + 1e-6), axis=-1)

    # -- derived grids --------------------------------------------------------------------------
    def resized(self, size: Sequence[int]) -> "ImageGrid":
        """Same field of view (outer voxel faces) and direction, sampled with ``size`` voxels."""
        new_size = np.asarray(size, dtype=int)
        if new_size.shape != (3,) or new_size.min() < 1:
            raise ValueError(f"size must be 3 positive integers (nx, ny, nz), got {size}")
        new_spacing = self.extent / new_size
        # the outer face stays put: origin - spacing/2 is invariant
        corner_index = (new_spacing / np.asarray(self.spacing) - 1.0) / 2.0
        new_origin = self.index_to_world(corner_index)
        return ImageGrid(tuple(new_size), tuple(new_spacing), tuple(new_origin), self.direction)

    def downsampled(self, factor: int = 2) -> "ImageGrid":
        """Grid of a ``factor``-times average pooling: every size must be divisible by ``factor``."""
        if any(s % factor for s in self.size):
            raise ValueError(f"grid size {self.size} is not divisible by {factor}")
        return self.resized(tuple(s // factor for s in self.size))

    def cropped(self, index_lo: Sequence[int], index_hi: Sequence[int]) -> "ImageGrid":
        """The sub-grid of voxels ``index_lo <= (i, j, k) < index_hi`` (x, y, z order, half-open).

        Same spacing and direction; voxel ``(i, j, k)`` of the result is voxel ``index_lo + (i, j, k)``
        of this grid, at exactly the same LPS position. Bounds may reach outside this grid (the
        result then extends the lattice beyond it), but every size must stay positive.
        """
        lo = np.asarray([int(v) for v in index_lo])
        hi = np.asarray([int(v) for v in index_hi])
        if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
            raise ValueError(
                f"crop bounds must be 3 integers each (x, y, z) with index_hi > index_lo, got "
                f"index_lo {tuple(index_lo)}, index_hi {tuple(index_hi)} (grid size {self.size})"
            )
        origin = self.index_to_world(lo.astype(float))
        return ImageGrid(tuple(hi - lo), self.spacing, tuple(origin), self.direction)

    def is_close(self, other: "ImageGrid", tol_mm: float = 1e-4) -> bool:
        """Same size and voxel positions within ``tol_mm`` at every corner."""
        if self.size != other.size:
            return False
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")).reshape(3, -1).T
        a = self.index_to_world(corners.astype(float))
        b = other.index_to_world(corners.astype(float))
        return bool(np.max(np.abs(a - b)) <= tol_mm)

    def describe(self) -> str:
        """Short human-readable description for error messages."""
        return (
            f"size {self.size}, spacing {tuple(round(s, 4) for s in self.spacing)} mm, "
            f"origin {tuple(round(o, 3) for o in self.origin)} mm"
        )


def normalized_to_index(coords: Array, n: int) -> Array:
    """Normalised ``grid_sample`` coordinates (``align_corners=False``) along an axis of ``n``
    voxels -> continuous voxel index along it (the inverse of
    :meth:`ImageGrid.index_to_normalized_matrix` on one axis): ``-1 -> -0.5``, ``1 -> n - 0.5``."""
    return ((coords + 1.0) * n - 1.0) / 2.0


# ----------------------------------------------------------------------------------------------
# Matrices on points
# ----------------------------------------------------------------------------------------------
def apply_affine(matrix: np.ndarray, points: Array, linear_only: bool = False) -> Array:
    """Apply a 4x4 matrix to points ``(..., 3)``; numpy in -> float64 numpy out, torch keeps dtype.

    With ``linear_only`` the translation is ignored (for vectors).
    """
    m = np.asarray(matrix, dtype=float)
    if points.shape[-1] != 3:
        raise ValueError(f"expected points with a last axis of length 3, got shape {tuple(points.shape)}")
    if isinstance(points, torch.Tensor):
        a = torch.as_tensor(m[:3, :3], dtype=points.dtype, device=points.device)
        out = points @ a.T
        if not linear_only:
            out = out + torch.as_tensor(m[:3, 3], dtype=points.dtype, device=points.device)
        return out
    p = np.asarray(points, dtype=float)
    out = p @ m[:3, :3].T
    return out if linear_only else out + m[:3, 3]


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
def _check_field(field: torch.Tensor) -> None:
    if field.ndim != 5 or field.shape[1] != 3:
        raise ValueError(f"expected a vector field of shape (N, 3, D, H, W), got {tuple(field.shape)}")


def index_affine_terms(
    matrix: np.ndarray, size: Sequence[int], device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``matrix @ (i, j, k, 1)`` at every voxel of a grid of ``size = (nx, ny, nz)``, as three terms.

    Returns float64 ``(k * m_z + t, j * m_y, i * m_x)`` of shapes ``(D, 1, 1, 3)``, ``(1, H, 1, 3)``
    and ``(1, 1, W, 3)`` (``m_*`` the first three columns of the 4x4 ``matrix``, ``t`` its last);
    their broadcast sum is the ``(D, H, W, 3)`` result. Building it by broadcasting is several
    times faster than a matrix product over all voxel indices.
    """
    m = torch.as_tensor(np.asarray(matrix, dtype=float), dtype=torch.float64, device=device)
    nx, ny, nz = (int(n) for n in size)
    i = torch.arange(nx, dtype=torch.float64, device=device)[None, None, :, None] * m[:3, 0]
    j = torch.arange(ny, dtype=torch.float64, device=device)[None, :, None, None] * m[:3, 1]
    k = torch.arange(nz, dtype=torch.float64, device=device)[:, None, None, None] * m[:3, 2]
    return k + m[:3, 3], j, i
