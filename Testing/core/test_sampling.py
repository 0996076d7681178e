"""sampling.sample_on_grid: the broadcast sampler equals sample() at the mapped world points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import oblique_grid, rotation_matrix

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
