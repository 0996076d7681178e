"""Sampling volumes on :class:`~MLVIRNETLib.core.geometry.ImageGrid` s at world points: the only
place in MLVIRNET that calls ``grid_sample``.

Every coordinate map used here (world -> normalised, target index -> source normalised) comes from
:mod:`MLVIRNETLib.core.geometry`; this module only checks shapes and interpolates.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ALIGN_CORNERS, ImageGrid, index_affine_terms, index_axis_to_array_axis, normalized_to_index


def check_volume(data: torch.Tensor, grid: ImageGrid, name: str = "volume") -> None:
    """Raise ``ValueError`` unless ``data`` is ``(N, C, D, H, W)`` with spatial shape ``grid.shape_zyx``."""
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, C, D, H, W), got {type(data).__name__}")
    if data.ndim != 5:
        raise ValueError(f"{name} must have shape (N, C, D, H, W), got {tuple(data.shape)}")
    if tuple(data.shape[2:]) != grid.shape_zyx:
        raise ValueError(
            f"{name} has shape {tuple(data.shape)} (N, C, D, H, W) but its grid expects (D, H, W) = "
            f"{grid.shape_zyx} (grid {grid.describe()})"
        )


def sample(
    data: torch.Tensor,
    grid: ImageGrid,
    points: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Sample a volume living on ``grid`` at LPS world points.

    Args:
        data: ``(N, C, D, H, W)`` values on ``grid``.
        grid: the grid of ``data``.
        points: LPS mm, ``(N, d, h, w, 3)`` or ``(d, h, w, 3)`` (shared by the batch), x y z order.
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        padding_mode: value outside the grid: ``"border"``, ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(N, C, d, h, w)`` sampled values.
    """
    check_volume(data, grid, "data")
    if points.shape[-1] != 3 or points.ndim not in (4, 5):
        raise ValueError(f"points must have shape (N, d, h, w, 3) or (d, h, w, 3), got {tuple(points.shape)}")
    if points.ndim == 4:
        points = points.unsqueeze(0).expand(data.shape[0], *points.shape)
    elif points.shape[0] != data.shape[0]:
        raise ValueError(f"points batch {points.shape[0]} does not match data batch {data.shape[0]}")
    coords = grid.world_to_normalized(points.to(torch.float32) if points.dtype in (torch.float16, torch.bfloat16) else points)
    if coords.dtype != data.dtype:
        coords = coords.to(data.dtype)
    return grid_sample(data, coords, mode=mode, padding_mode=padding_mode)


MIN_POINTS_PER_THREAD = 32_768
""":func:`grid_sample` splits a CPU call over threads only when each gets at least this many points."""

_POOL: list[ThreadPoolExecutor] = []


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads, made on first use (and again when the count changes)."""
    if not _POOL or _POOL[0]._max_workers != workers:  # noqa: SLF001 - the size it was made with
        if _POOL:
            _POOL.pop().shutdown(wait=False)
        _POOL.append(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlvirnet-sample"))
    return _POOL[0]


def _chunks(coords: torch.Tensor, parts: int) -> list[tuple[int, int]]:
    """``parts`` ranges ``[lo, hi)`` along dim 1 (the output depth) of ``(N, d, h, w, 3)`` coords."""
    depth = coords.shape[1]
    bounds = [round(i * depth / parts) for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


class _ThreadedGridSample(torch.autograd.Function):
    """``grid_sample`` of a constant volume (no gradient to the volume) at ``coords``, split along
    the output depth over the intra-op threads.

    PyTorch's CPU ``grid_sampler_3d`` (forward and backward) runs on one thread for a batch of one;
    each chunk here is one such call, in a thread of its own (ATen releases the GIL), and the
    pieces are concatenated: the values and the gradient are those of one ``grid_sample`` call.
    """

    @staticmethod
    def forward(ctx, data, coords, interpolation: int, padding: int):  # type: ignore[override]
        parts = _chunks(coords, torch.get_num_threads())
        pool = _pool(len(parts))

        def run(bounds: tuple[int, int]) -> torch.Tensor:
            lo, hi = bounds
            return torch.grid_sampler(data, coords[:, lo:hi], interpolation, padding, ALIGN_CORNERS)

        out = torch.cat(list(pool.map(run, parts)), dim=2)
        ctx.save_for_backward(data, coords)
        ctx.settings = (interpolation, padding, parts)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        data, coords = ctx.saved_tensors
        interpolation, padding, parts = ctx.settings
        return None, _threaded_backward(grad_out, data, coords, interpolation, padding, parts), None, None


def _threaded_backward(grad_out: torch.Tensor, data: torch.Tensor, coords: torch.Tensor, interpolation: int,
                       padding: int, parts: list[tuple[int, int]]) -> torch.Tensor:
    """The gradient of ``grid_sample`` with respect to ``coords``, one chunk of ``parts`` per thread."""
    grad_out = grad_out.contiguous()

    def run(bounds: tuple[int, int]) -> torch.Tensor:
        lo, hi = bounds
        _, grad_coords = torch.ops.aten.grid_sampler_3d_backward(
            grad_out[:, :, lo:hi], data, coords[:, lo:hi].contiguous(), interpolation, padding, ALIGN_CORNERS,
            [False, True],
        )
        return grad_coords

    if len(parts) == 1:
        return run(parts[0])
    return torch.cat(list(_pool(len(parts)).map(run, parts)), dim=1)


def sampler_backward(grad_out: torch.Tensor, data: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
                     padding_mode: str = "border") -> torch.Tensor:
    """The gradient with respect to ``coords`` ``(N, d, h, w, 3)`` of ``sum(grad_out * grid_sample(data,
    coords))``, for a constant 5-D ``data`` (split over the CPU threads as :func:`grid_sample` does)."""
    if data.device.type == "cpu" and _threaded(data, coords, mode):
        parts = _chunks(coords, torch.get_num_threads())
    else:
        parts = [(0, coords.shape[1])]
    return _threaded_backward(grad_out, data, coords, _INTERPOLATION[mode], _PADDING[padding_mode], parts)


_INTERPOLATION = {"bilinear": 0, "nearest": 1, "bicubic": 2}
_PADDING = {"zeros": 0, "border": 1, "reflection": 2}


def grid_sample(data: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "border") -> torch.Tensor:
    """``F.grid_sample(data, coords, mode, padding_mode, align_corners=False)``, on several CPU threads.

    For a ``(N, C, D, H, W)`` volume on the CPU that needs no gradient and enough points
    (:data:`MIN_POINTS_PER_THREAD` per thread), the points are split over ``torch.get_num_threads()``
    threads (PyTorch's own CPU kernel uses one); the gradient to ``coords`` is kept. Everywhere else
    this is ``F.grid_sample``. The values are the same as those of one ``F.grid_sample`` call.
    """
    if _threaded(data, coords, mode):
        return _ThreadedGridSample.apply(data, coords, _INTERPOLATION[mode], _PADDING[padding_mode])
    return F.grid_sample(data, coords, mode=mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)


def _threaded(data: torch.Tensor, coords: torch.Tensor, mode: str) -> bool:
    """Whether :func:`grid_sample` splits this call over threads (see there)."""
    threads = torch.get_num_threads()
    return (data.device.type == "cpu" and data.ndim == 5 and threads > 1 and not data.requires_grad
            and mode in ("bilinear", "nearest") and coords.shape[1] >= threads
            and coords[..., 0].numel() >= threads * MIN_POINTS_PER_THREAD)


def resample_to_grid(
    data: torch.Tensor,
    source: ImageGrid,
    target: ImageGrid,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Resample ``(N, C, D, H, W)`` values from ``source`` onto ``target`` (identity mapping)."""
    dtype = data.dtype if data.dtype == torch.float64 else torch.float32
    pts = target.world_points(device=data.device, dtype=dtype)
    return sample(data, source, pts, mode=mode, padding_mode=padding_mode)


def sample_on_grid(
    data: torch.Tensor,
    source: ImageGrid,
    target: ImageGrid,
    matrix: np.ndarray | None = None,
    offset: torch.Tensor | None = None,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Sample ``data`` on ``source`` at ``p(x) = matrix @ x + offset(x)`` for every voxel ``x`` of ``target``.

    Same values as :func:`sample` at those world points, but the sampling coordinates are built by
    broadcasting (the map index -> normalised coordinates of ``source`` is affine), without any
    matrix product over all voxels: several times faster and lighter for large grids.

    Args:
        data: ``(N, C, D, H, W)`` values on ``source``.
        source: the grid of ``data``.
        target: where to evaluate.
        matrix: optional 4x4 LPS affine applied to the target points (identity if ``None``).
        offset: optional ``(N or 1, 3, d, h, w)`` LPS mm added after ``matrix``, on ``target``
            (e.g. a displacement, for warping).
        mode, padding_mode: as in :func:`sample`.

    Returns:
        ``(N, C, *target.shape_zyx)``.
    """
    check_volume(data, source, "data")
    m = source.world_to_normalized_matrix()
    if matrix is not None:
        a = np.asarray(matrix, dtype=float)
        if a.shape != (4, 4):
            raise ValueError(f"matrix must be 4x4, got shape {a.shape}")
        m = m @ a
    m = m @ target.index_to_world_matrix()  # index of target -> normalised of source
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    lin = m[:3, :3]
    if (offset is None and mode == "bilinear" and padding_mode in ("border", "zeros") and data.is_floating_point()
            and np.allclose(lin, np.diag(np.diag(lin)), rtol=0, atol=1e-12 * np.abs(lin).max())):
        return _separable_linear(data, source, np.diag(lin), m[:3, 3], target, zeros=padding_mode == "zeros")
    k, j, i = index_affine_terms(m, target.size, data.device)
    coords = ((k.to(dtype) + j.to(dtype)) + i.to(dtype))[None]  # (1, D, H, W, 3)
    n = data.shape[0]
    if offset is not None:
        check_volume(offset, target, "offset")
        if offset.shape[1] != 3 or offset.shape[0] not in (1, n):
            raise ValueError(f"offset must have shape ({n} or 1, 3, D, H, W), got {tuple(offset.shape)}")
        lin = torch.as_tensor(source.world_to_normalized_matrix()[:3, :3], dtype=dtype, device=data.device)
        o = offset.to(dtype)
        coords = coords + (lin[:, 0, None, None, None] * o[:, 0:1] + lin[:, 1, None, None, None] * o[:, 1:2]
                           + lin[:, 2, None, None, None] * o[:, 2:3]).movedim(1, -1)
    coords = coords.expand(n, *coords.shape[1:]).to(data.dtype if data.is_floating_point() else dtype)
    return grid_sample(data, coords, mode=mode, padding_mode=padding_mode)


def inside_weight(coords: torch.Tensor, shape_zyx: tuple[int, int, int]) -> torch.Tensor:
    """What trilinear ``grid_sample`` of an all-ones ``(N, 1, *shape_zyx)`` volume with zero padding
    gives at ``coords`` ``(N, d, h, w, 3)`` (normalised, ``align_corners=False``), without sampling:
    1 inside the outer voxel centres, falling linearly to 0 one voxel beyond them. Returns
    ``(N, 1, d, h, w)``.
    """
    weight = None
    for axis, n in enumerate(reversed(shape_zyx)):  # coords are (x, y, z); x runs along W
        pos = normalized_to_index(coords[..., axis], n)
        w = torch.minimum(pos + 1.0, n - pos).clamp(0.0, 1.0)
        weight = w if weight is None else weight * w
    return weight[:, None]


def _separable_linear(
    data: torch.Tensor, source: ImageGrid, scale: np.ndarray, shift: np.ndarray, target: ImageGrid,
    zeros: bool = False,
) -> torch.Tensor:
    """Trilinear sampling with border (or, with ``zeros``, zero) padding when target axis ``a`` maps
    to source axis ``a`` alone.

    ``normalised_a = scale_a * index_a + shift_a`` (x, y, z); the interpolation is done one axis at
    a time, which equals ``grid_sample`` (``align_corners=False``) and is much cheaper for large
    targets. Only the source voxels the target reaches take part (a view of that box, no copy),
    and the axes are interpolated in the order that keeps the intermediate volumes smallest (the
    axes the target shrinks first), so that a small box of a large image costs what the box holds.
    Zero padding interpolates towards zero one voxel beyond the outer voxel centres, as
    ``grid_sample`` does.
    """
    steps = []
    out = data
    device = data.device
    for axis in (0, 1, 2):  # index axes x, y, z: tensor dims 4, 3, 2 of (N, C, D, H, W)
        dim = 2 + index_axis_to_array_axis(axis)
        n_src = source.size[axis]
        # the indices and weights are worked out on the host (no wait for a device), then moved
        idx = torch.arange(target.size[axis], dtype=torch.float64)
        pos = normalized_to_index(scale[axis] * idx + shift[axis], n_src)
        if zeros:
            pos = pos.clamp(-1.0, float(n_src))  # beyond one voxel outside, both neighbours are zero
        else:
            pos = pos.clamp(0.0, n_src - 1.0)  # border padding clips the coordinate
        lo = pos.floor()
        w = (pos - lo).to(device=device, dtype=out.dtype)
        lo = lo.long()
        hi = lo + 1
        # zero padding: a neighbour outside the source is a zero (its sample is zeroed below)
        lo_out, hi_out = (lo < 0) | (lo > n_src - 1), (hi < 0) | (hi > n_src - 1)
        lo, hi = lo.clamp(0, n_src - 1), hi.clamp(0, n_src - 1)
        first, last = int(lo.min()), int(hi.max())
        out = out.narrow(dim, first, last - first + 1)  # the voxels the target reaches along this axis
        zeroed = [torch.nonzero(o).flatten().to(device) if bool(o.any()) else None for o in (lo_out, hi_out)]
        steps.append((dim, (lo - first).to(device), (hi - first).to(device), w, zeroed,
                      target.size[axis] / (last - first + 1)))
    for dim, lo, hi, w, (lo_zero, hi_zero), _ in sorted(steps, key=lambda step: step[-1]):
        shape = [1] * out.ndim
        shape[dim] = w.numel()
        a = out.index_select(dim, lo)
        b = out.index_select(dim, hi)
        if lo_zero is not None:
            a.index_fill_(dim, lo_zero, 0.0)
        if hi_zero is not None:
            b.index_fill_(dim, hi_zero, 0.0)
        out = torch.lerp(a, b, w.reshape(shape))
    return out


def to_batch_tensor(array: np.ndarray, device=None, dtype=torch.float32) -> torch.Tensor:
    """A ``(D, H, W)`` array (SimpleITK layout) -> ``(1, 1, D, H, W)`` tensor."""
    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"expected a 3-D array (D, H, W), got shape {a.shape}")
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)[None, None]
