"""sampling.sample_on_grid: the broadcast sampler equals sample() at the mapped world points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import oblique_grid, rotation_matrix

from MLVIRNETLib.core.geometry import apply_affine
from MLVIRNETLib.core.sampling import sample, sample_on_grid


def _affine() -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rotation_matrix((3.0, -5.0, 4.0)) * 1.03
    a[:3, 3] = (2.5, -1.0, 3.0)
    return a


@pytest.mark.parametrize("flip_z", [False, True])
@pytest.mark.parametrize("with_matrix", [False, True])
@pytest.mark.parametrize("with_offset", [False, True])
def test_sample_on_grid_matches_sample(flip_z: bool, with_matrix: bool, with_offset: bool) -> None:
    source = oblique_grid(flip_z=flip_z)
    target = oblique_grid(size=(9, 7, 8), spacing=(1.1, 0.9, 2.0), origin=(-10.0, 22.0, 35.0), angles=(-5, 15, 30))
    rng = np.random.default_rng(0)
    data = torch.as_tensor(rng.normal(size=(2, 2, *source.shape_zyx)), dtype=torch.float64)
    matrix = _affine() if with_matrix else None
    offset = torch.as_tensor(rng.normal(scale=2.0, size=(2, 3, *target.shape_zyx))) if with_offset else None
    pts = target.world_points(dtype=torch.float64)
    if matrix is not None:
        pts = apply_affine(matrix, pts)
    pts = pts[None].expand(2, *pts.shape)
    if offset is not None:
        pts = pts + offset.movedim(1, -1)
    for mode, padding in (("bilinear", "border"), ("nearest", "zeros")):
        ref = sample(data, source, pts, mode=mode, padding_mode=padding)
        out = sample_on_grid(data, source, target, matrix, offset, mode=mode, padding_mode=padding)
        assert out.shape == (2, 2, *target.shape_zyx)
        torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)


def test_sample_on_grid_checks_shapes() -> None:
    source = oblique_grid()
    target = oblique_grid(size=(4, 4, 4))
    data = torch.zeros((1, 1, *source.shape_zyx))
    with pytest.raises(ValueError, match="4x4"):
        sample_on_grid(data, source, target, matrix=np.eye(3))
    with pytest.raises(ValueError, match="offset"):
        sample_on_grid(data, source, target, offset=torch.zeros((1, 2, 4, 4, 4)))


@pytest.mark.parametrize("flip_z", [False, True])
def test_axis_aligned_fast_path_matches_sample(flip_z: bool) -> None:
    """Target and source with the same (oblique) direction: the separable path equals grid_sample."""
    source = oblique_grid(flip_z=flip_z)
    # a sub-box of the source, resampled finer and reaching beyond the source (border padding)
    target = source.cropped((-2, 1, 2), (source.size[0] + 2, 8, 11)).resized((23, 15, 19))
    rng = np.random.default_rng(3)
    data = torch.as_tensor(rng.normal(size=(1, 3, *source.shape_zyx)), dtype=torch.float64)
    ref = sample(data, source, target.world_points(dtype=torch.float64))
    out = sample_on_grid(data, source, target)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_axis_aligned_fast_path_on_a_small_box_of_a_large_image(padding_mode: str, dtype: torch.dtype) -> None:
    """A box deep inside a larger oblique, anisotropic source, shrunk along x and enlarged along y
    and z (the separable path takes only the voxels the box reaches and reorders the axes): it
    equals grid_sample, and a box touching the source's corner (zero padding reached) does too."""
    source = oblique_grid(size=(40, 36, 30), spacing=(0.7, 1.3, 2.5))
    inner = source.cropped((12, 9, 8), (30, 17, 14)).resized((7, 19, 15))
    corner = source.cropped((-2, -1, 27), (5, 4, 32)).resized((9, 3, 8))
    rng = np.random.default_rng(5)
    data = torch.as_tensor(rng.normal(size=(1, 2, *source.shape_zyx)), dtype=dtype)
    for target in (inner, corner):
        ref = sample(data.double(), source, target.world_points(dtype=torch.float64), padding_mode=padding_mode)
        out = sample_on_grid(data, source, target, padding_mode=padding_mode)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref, atol=1e-9 if dtype == torch.float64 else 1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# the threaded sampler against the one it replaces
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def two_threads_small_chunks(monkeypatch):
    """Two torch threads and a threshold low enough that small test volumes take the threaded path."""
    from MLVIRNETLib.core import sampling

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(sampling, "MIN_POINTS_PER_THREAD", 16)
    yield
    torch.set_num_threads(before)


def _displacement_and_points(dtype=torch.float32):
    """A smooth displacement in mm on an oblique, anisotropic grid, and world points reaching outside it."""
    source = oblique_grid()
    idx = source.index_points(dtype=torch.float64)
    u = torch.stack([torch.sin(idx[..., 0] / 3.0) * 4.0, torch.cos(idx[..., 1] / 2.0) * 2.5,
                     idx[..., 2] * 0.3 - 1.0], dim=0)[None].to(dtype)  # (1, 3, D, H, W) mm
    target = oblique_grid(size=(11, 9, 13), spacing=(1.1, 0.9, 2.0), origin=(-14.0, 18.0, 30.0), angles=(-5, 15, 30))
    rng = np.random.default_rng(5)
    pts = target.world_points(dtype=torch.float64) + torch.as_tensor(rng.normal(scale=1.5, size=(13, 9, 11, 3)))
    return source, u, pts.to(dtype)[None]


@pytest.mark.parametrize("padding", ["border", "zeros"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_threaded_grid_sample_equals_grid_sample(two_threads_small_chunks, mode: str, padding: str) -> None:
    """Values (mm) to 1e-5 mm and the gradient to the points equal one F.grid_sample call."""
    import torch.nn.functional as F

    from MLVIRNETLib.core.sampling import _threaded, grid_sample

    source, u, pts = _displacement_and_points()
    coords = source.world_to_normalized(pts)
    assert _threaded(u, coords, mode), "the test must exercise the threaded path"
    c1 = coords.clone().requires_grad_(True)
    c2 = coords.clone().requires_grad_(True)
    ref = F.grid_sample(u, c1, mode=mode, padding_mode=padding, align_corners=False)
    out = grid_sample(u, c2, mode=mode, padding_mode=padding)
    assert (out - ref).abs().max() <= 1e-5
    weights = torch.linspace(-1.0, 2.0, ref.numel()).reshape(ref.shape)
    (ref * weights).sum().backward()
    (out * weights).sum().backward()
    torch.testing.assert_close(c2.grad, c1.grad, atol=1e-5, rtol=0)


def test_sampler_backward_equals_autograd(two_threads_small_chunks) -> None:
    import torch.nn.functional as F

    from MLVIRNETLib.core.sampling import sampler_backward

    source, u, pts = _displacement_and_points(torch.float64)
    coords = source.world_to_normalized(pts).requires_grad_(True)
    out = F.grid_sample(u, coords, padding_mode="border", align_corners=False)
    grad_out = torch.cos(torch.arange(out.numel(), dtype=torch.float64)).reshape(out.shape)
    (out * grad_out).sum().backward()
    got = sampler_backward(grad_out, u, coords.detach(), "bilinear", "border")
    torch.testing.assert_close(got, coords.grad, atol=1e-12, rtol=0)


def test_grid_sample_keeps_autograd_for_a_volume_that_needs_it(two_threads_small_chunks) -> None:
    """A volume with requires_grad (training) takes F.grid_sample and gets its gradient."""
    from MLVIRNETLib.core.sampling import grid_sample

    source, u, pts = _displacement_and_points()
    u = u.clone().requires_grad_(True)
    grid_sample(u, source.world_to_normalized(pts)).sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


def test_inside_weight_equals_sampling_ones() -> None:
    import torch.nn.functional as F

    from MLVIRNETLib.core.sampling import inside_weight

    rng = np.random.default_rng(1)
    coords = torch.as_tensor(rng.uniform(-1.4, 1.4, size=(2, 6, 7, 8, 3)), dtype=torch.float64)
    ones = torch.ones((2, 1, 5, 9, 4), dtype=torch.float64)
    ref = F.grid_sample(ones, coords, padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(inside_weight(coords, (5, 9, 4)), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("flip_z", [False, True])
def test_axis_aligned_fast_path_with_zero_padding_matches_sample(flip_z: bool) -> None:
    """The separable path with zero padding equals grid_sample, inside and up to 2 voxels outside."""
    source = oblique_grid(flip_z=flip_z)
    target = source.cropped((-2, -1, -3), (source.size[0] + 2, source.size[1] + 1, 11)).resized((23, 17, 19))
    rng = np.random.default_rng(4)
    data = torch.as_tensor(rng.normal(size=(1, 2, *source.shape_zyx)), dtype=torch.float64)
    ref = sample(data, source, target.world_points(dtype=torch.float64), padding_mode="zeros")
    out = sample_on_grid(data, source, target, padding_mode="zeros")
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)
