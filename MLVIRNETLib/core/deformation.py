"""Dense deformations in world coordinates: warping, composition, resampling, Jacobians.

A :class:`Deformation` is the map ``y(x) = x + u(x)`` for LPS points ``x`` (mm), stored as the
displacement ``u`` (LPS mm, channels x, y, z) at the voxel centres of an :class:`ImageGrid`.
Between voxels ``u`` is trilinear; outside the grid it is continued by its border value, so a
deformation can be evaluated at any point and on any grid.

Convention: a deformation computed by registering *moving* to *fixed* lives on the fixed grid and
maps fixed points to moving points, ``x_moving = x_fixed + u(x_fixed)``; the warped moving image
is ``M(y(x))`` (the resampling direction of ITK, Slicer, ANTs and elastix).

Composition: ``(a ∘ b)(x) = a(b(x))`` (``b`` acts first). Warping by ``a ∘ b`` equals warping
by ``a`` and then warping the result by ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ImageGrid, index_axis_to_array_axis
from .progress import ProgressFn
from .sampling import check_volume, sample


@dataclass
class Deformation:
    """``y(x) = x + u(x)`` with ``displacement`` ``u`` of shape ``(N, 3, D, H, W)`` in LPS mm on ``grid``."""

    grid: ImageGrid
    displacement: torch.Tensor

    def __post_init__(self) -> None:
        u = self.displacement
        if not isinstance(u, torch.Tensor) or u.ndim != 5 or u.shape[1] != 3:
            shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"displacement must have shape (N, 3, D, H, W), got {shape}")
        check_volume(u, self.grid, "displacement")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def identity(cls, grid: ImageGrid, batch: int = 1, device=None, dtype=torch.float32) -> "Deformation":
        """Zero displacement on ``grid``."""
        return cls(grid, torch.zeros((batch, 3, *grid.shape_zyx), device=device, dtype=dtype))

    @classmethod
    def from_voxel_displacement(cls, grid: ImageGrid, displacement_vox: torch.Tensor) -> "Deformation":
        """From a displacement in voxels along the index axes of ``grid``, ``(N, 3, D, H, W)``."""
        return cls(grid, grid.index_field_to_world(displacement_vox))

    @classmethod
    def from_function(cls, grid: ImageGrid, fn, device=None, dtype=torch.float32) -> "Deformation":
        """From a function mapping LPS points ``(D, H, W, 3)`` (float64) to displacements, same shape."""
        x = grid.world_points(device=device, dtype=torch.float64)
        u = torch.as_tensor(fn(x), dtype=torch.float64, device=device)
        return cls(grid, u.movedim(-1, 0)[None].to(dtype).contiguous())

    # -- properties -----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.displacement.shape[0])

    def to(self, *args, **kwargs) -> "Deformation":
        return Deformation(self.grid, self.displacement.to(*args, **kwargs))

    def detach(self) -> "Deformation":
        return Deformation(self.grid, self.displacement.detach())

    # -- evaluation -----------------------------------------------------------------------------
    def displacement_at(self, points: torch.Tensor) -> torch.Tensor:
        """``u`` at LPS points -> ``(N, ..., 3)``.

        ``points`` is ``(P, 3)`` (shared by the batch) or ``(B, ..., 3)`` with ``B`` equal to the
        batch size or 1 (broadcast).
        """
        u = self.displacement
        n = u.shape[0]
        if points.shape[-1] != 3 or points.ndim < 2:
            raise ValueError(f"points must have shape (P, 3) or (N, ..., 3), got {tuple(points.shape)}")
        if points.ndim == 2:
            points = points[None]
        if points.shape[0] not in (1, n):
            raise ValueError(f"points batch {points.shape[0]} (shape {tuple(points.shape)}) does not match batch {n}")
        lead = points.shape[1:-1]
        flat = points.reshape(points.shape[0], -1, 1, 1, 3).expand(n, -1, 1, 1, 3)
        out = sample(u, self.grid, flat.to(u.dtype))  # (N, 3, P, 1, 1)
        return out[..., 0, 0].movedim(1, -1).reshape(n, *lead, 3)

    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        """``y(x) = x + u(x)`` for LPS points ``(N, ..., 3)`` or ``(..., 3)`` -> ``(N, ..., 3)``."""
        return points + self.displacement_at(points)

    def points(self) -> torch.Tensor:
        """``y`` at the voxel centres of ``grid``: ``(N, D, H, W, 3)`` LPS mm."""
        x = self.grid.world_points(device=self.displacement.device, dtype=self.displacement.dtype)
        return x[None] + self.displacement.movedim(1, -1)

    def on_grid(self, grid: ImageGrid) -> "Deformation":
        """The same map evaluated on another grid (prolongation/restriction by trilinear sampling)."""
        if grid.is_close(self.grid, tol_mm=1e-6):
            return Deformation(grid, self.displacement)
        x = grid.world_points(device=self.displacement.device, dtype=self.displacement.dtype)
        return Deformation(grid, sample(self.displacement, self.grid, x))

    def compose(self, inner: "Deformation") -> "Deformation":
        """``self ∘ inner``: ``x -> self(inner(x))``, on ``inner``'s grid."""
        if inner.batch_size != self.batch_size:
            raise ValueError(f"cannot compose batch sizes {self.batch_size} and {inner.batch_size}")
        y_inner = inner.points()
        u = inner.displacement + sample(self.displacement, self.grid, y_inner).to(inner.displacement.dtype)
        return Deformation(inner.grid, u)

    # -- warping --------------------------------------------------------------------------------
    def warp(
        self, image: torch.Tensor, image_grid: ImageGrid, mode: str = "bilinear", padding_mode: str = "border"
    ) -> torch.Tensor:
        """``M(y(x))`` on this deformation's grid for ``image`` ``(N, C, D', H', W')`` on ``image_grid``."""
        check_volume(image, image_grid, "image")
        if image.shape[0] != self.batch_size:
            raise ValueError(
                f"image batch {image.shape[0]} (shape {tuple(image.shape)}) does not match deformation batch "
                f"{self.batch_size}"
            )
        return sample(image, image_grid, self.points(), mode=mode, padding_mode=padding_mode)

    def warp_labels(
        self, labels: torch.Tensor, image_grid: ImageGrid, mode: str = "nearest", num_labels: int | None = None
    ) -> torch.Tensor:
        """Warp an integer label map ``(N, 1, D', H', W')``.

        ``mode="nearest"`` picks the nearest label; ``mode="linear"`` interpolates one-hot channels
        trilinearly and takes the arg-max (smoother boundaries; memory grows with the label count).
        Outside the image the label is 0.
        """
        check_volume(labels, image_grid, "labels")
        if labels.shape[1] != 1:
            raise ValueError(f"labels must have one channel, got shape {tuple(labels.shape)}")
        if mode == "nearest":
            out = self.warp(labels.to(self.displacement.dtype), image_grid, mode="nearest", padding_mode="zeros")
            return out.round().to(labels.dtype)
        if mode != "linear":
            raise ValueError(f"label warping mode must be 'nearest' or 'linear', got {mode!r}")
        n = int(num_labels if num_labels is not None else int(labels.max()) + 1)
        onehot = F.one_hot(labels[:, 0].long(), n).movedim(-1, 1).to(self.displacement.dtype)
        probs = self.warp(onehot, image_grid, mode="bilinear", padding_mode="zeros")
        # outside the image all channels are 0: arg-max picks label 0 there
        return probs.argmax(dim=1, keepdim=True).to(labels.dtype)

    # -- regularity -----------------------------------------------------------------------------
    def jacobian_determinant(self, progress: ProgressFn | None = None) -> torch.Tensor:
        """``det(I + du/dx)`` at every voxel, ``(N, 1, D, H, W)``, derivatives in world mm.

        Central differences inside, one-sided at the border. ``progress(fraction, message)`` is
        called after each of 8 z slabs.
        """
        return jacobian_determinant(self.displacement, self.grid, progress)

    def folding_fraction(self, mask: torch.Tensor | None = None, progress: ProgressFn | None = None) -> torch.Tensor:
        """Fraction of voxels (inside ``mask`` if given, ``(N, 1, D, H, W)``) with ``det J <= 0``; ``(N,)``."""
        return folding_fraction(self.jacobian_determinant(progress), mask)


def spatial_gradient(field: torch.Tensor, grid: ImageGrid) -> torch.Tensor:
    """World-space gradient of a vector field.

    Args:
        field: ``(N, 3, D, H, W)``.
        grid: its grid.

    Returns:
        ``(N, D, H, W, 3, 3)`` with ``[..., c, a] = d field_c / d x_a`` (x_a LPS mm).
    """
    check_volume(field, grid, "field")
    # d/d index along x, y, z (tensor dims 2 + their array axis); edge_order 1 at the border
    grads = []
    for axis, n in enumerate(grid.size):
        dim = 2 + index_axis_to_array_axis(axis)
        if n < 2:
            grads.append(torch.zeros_like(field))
        else:
            grads.append(torch.gradient(field, dim=dim)[0])
    g_index = torch.stack(grads, dim=-1).movedim(1, -2)  # (N, D, H, W, 3[c], 3[index axis])
    # chain rule: d/dx = d/dindex @ dindex/dx, dindex/dx = inverse of the linear part of index->world
    inv = torch.as_tensor(np.linalg.inv(grid.index_to_world_matrix()[:3, :3]), dtype=field.dtype, device=field.device)
    return g_index @ inv


def jacobian_determinant(
    displacement: torch.Tensor, grid: ImageGrid, progress: ProgressFn | None = None
) -> torch.Tensor:
    """``det(I + grad u)`` for ``u`` ``(N, 3, D, H, W)`` in mm on ``grid`` -> ``(N, 1, D, H, W)``.

    With ``M`` the linear part of the grid's index -> world map and ``G = du/d index`` (central
    differences inside, one-sided at the border), ``grad u = G M^-1``, so
    ``det(I + grad u) = det((M + G) M^-1) = det(M + G) / det(M)``: nine derivative volumes and one
    closed-form determinant per voxel (:func:`det3`), without a matrix product per voxel.

    Computed in 8 z slabs, each with one slice of its neighbours on either side for the central
    differences (the same values as at once; the derivatives of one slab at a time are held, not
    the whole field's nine components), with ``progress(fraction, message)`` after each.
    """
    check_volume(displacement, grid, "displacement")
    dtype = torch.float32 if displacement.dtype in (torch.float16, torch.bfloat16) else displacement.dtype
    n, _, depth, height, width = displacement.shape
    out = torch.empty((n, depth, height, width), dtype=dtype, device=displacement.device)
    m = np.asarray(grid.index_to_world_matrix(), dtype=float)[:3, :3]
    inv_det_m = 1.0 / float(np.linalg.det(m))
    nx, ny, _ = grid.size
    step = max(1, -(-depth // 8))
    for z0 in range(0, depth, step):
        z1 = min(depth, z0 + step)
        lo, hi = max(0, z0 - 1), min(depth, z1 + 1)  # the halo slices
        u = displacement[:, :, lo:hi].to(dtype)
        per_axis = []  # d u / d index along x, y, z (tensor dims 2 + their array axis)
        for axis, size in enumerate(grid.size):
            if size < 2:
                per_axis.append(torch.zeros_like(u[:, :, z0 - lo : z1 - lo]))
            else:
                d = torch.gradient(u, dim=2 + index_axis_to_array_axis(axis))[0]
                per_axis.append(d[:, :, z0 - lo : z1 - lo])
        entries = [[per_axis[b][:, c] + float(m[c, b]) for b in range(3)] for c in range(3)]
        out[:, z0:z1] = det3(entries) * inv_det_m
        del per_axis, entries
        if progress is not None:
            progress(z1 / depth, "Jacobian determinant")
    return out[:, None]


def det3(m) -> torch.Tensor:
    """Determinants of 3 x 3 matrices by cofactor expansion along the first row: the same values
    as ``torch.linalg.det`` to float rounding, in a few elementwise products instead of an LU
    factorisation per matrix.

    Args:
        m: a ``(..., 3, 3)`` tensor, or a 3 x 3 nested sequence ``m[row][column]`` of tensors that
            broadcast together (one volume per entry).

    Returns:
        ``(...)``, or the broadcast shape of the entries.
    """
    if isinstance(m, torch.Tensor):
        m = [[m[..., r, c] for c in range(3)] for r in range(3)]
    (a, b, c), (d, e, f), (g, h, i) = m
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def folding_fraction(det: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of voxels with ``det <= 0`` per batch item; ``det`` and ``mask`` ``(N, 1, D, H, W)``."""
    folded = (det <= 0).to(torch.float64)
    if mask is None:
        return folded.flatten(1).mean(dim=1)
    if mask.shape != det.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match Jacobian shape {tuple(det.shape)}")
    m = (mask > 0).to(torch.float64).flatten(1)
    return (folded.flatten(1) * m).sum(1) / m.sum(1).clamp_min(1)


def compose_all(deformations: Sequence[Deformation], grid: ImageGrid | None = None) -> Deformation:
    """``d[0] ∘ d[1] ∘ ... ∘ d[-1]`` (the last acts first), evaluated exactly on ``grid``.

    ``grid`` defaults to the last deformation's grid. Each factor is sampled at the points where the
    chain needs it, so the result is the true composition of the trilinear fields on ``grid``.
    """
    if not deformations:
        raise ValueError("compose_all needs at least one deformation")
    target = grid if grid is not None else deformations[-1].grid
    first = deformations[-1]
    x = target.world_points(device=first.displacement.device, dtype=first.displacement.dtype)
    y = x[None].expand(first.batch_size, *x.shape)
    for d in reversed(deformations):
        y = d.map_points(y)
    return Deformation(target, (y - x[None]).movedim(-1, 1).contiguous())
