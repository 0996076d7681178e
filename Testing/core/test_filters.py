"""core.filters: the shifted-sum Gaussian against the 1-D convolutions it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from MLVIRNETLib.core.filters import gaussian_kernel1d, gaussian_smooth


def _conv3d_reference(volume: torch.Tensor, sigma_xyz) -> torch.Tensor:
    """Separable Gaussian by ``F.conv3d`` with replicated borders (the implementation before #15)."""
    n, c = volume.shape[:2]
    out = volume.reshape(n * c, 1, *volume.shape[2:])
    for sigma, dim in zip(sigma_xyz, (4, 3, 2)):
        if sigma <= 0.2 or out.shape[dim] < 2:
            continue
        k = gaussian_kernel1d(sigma, dtype=out.dtype)
        r = (k.numel() - 1) // 2
        shape = [1, 1, 1, 1, 1]
        shape[dim] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = r
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.reshape(shape))
    return out.reshape(volume.shape)


@pytest.mark.parametrize("sigma", [(1.3, 0.4, 2.2), (0.1, 3.0, 0.7), (2.0, 2.0, 2.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_smooth_equals_conv3d(sigma, dtype) -> None:
    torch.manual_seed(0)
    volume = torch.rand(2, 3, 9, 14, 11, dtype=dtype) * 100.0 - 50.0
    tol = 1e-12 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(gaussian_smooth(volume, sigma), _conv3d_reference(volume, sigma), atol=tol, rtol=0)


def test_gaussian_smooth_leaves_its_input_alone() -> None:
    volume = torch.rand(1, 1, 6, 7, 8)
    before = volume.clone()
    gaussian_smooth(volume, (1.5, 1.5, 1.5))
    assert torch.equal(volume, before)


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_box_max_equals_max_pool3d(radius: int) -> None:
    """Three 1-D maxima equal one cubic ``max_pool3d`` (the border cut the same way), for masks and
    for grey values."""
    from MLVIRNETLib.core.filters import box_max

    g = torch.Generator().manual_seed(radius)
    grey = torch.randn(2, 1, 9, 11, 13, generator=g)
    mask = (torch.rand(1, 1, 12, 10, 9, generator=g) > 0.93).float()
    for volume in (grey, mask):
        k = 2 * radius + 1
        expected = F.max_pool3d(volume, k, stride=1, padding=radius) if radius else volume
        assert torch.equal(box_max(volume, radius), expected)
    expected = F.max_pool3d(mask, 2 * radius + 1, stride=1, padding=radius) if radius else mask
    assert torch.equal(box_max(mask > 0, radius), expected > 0)  # a binary dilation of a bool mask
    thin = torch.rand(1, 1, 2, 3, 9, generator=g)  # axes shorter than the box
    assert torch.equal(box_max(thin, radius), F.max_pool3d(thin, 2 * radius + 1, stride=1, padding=radius)
                       if radius else thin)


@pytest.mark.parametrize("antialias", [False, True])
def test_resampling_with_padding_leaves_its_input_alone(antialias: bool) -> None:
    """The padded resampling shifts a filtered copy in place, never the caller's volume, and gives
    ``sample(data - p) + p`` (zeros outside) on an oblique anisotropic grid with an origin."""
    from helpers import oblique_grid

    from MLVIRNETLib.core.filters import lowpass, resample_antialiased
    from MLVIRNETLib.core.sampling import sample_on_grid

    source = oblique_grid(size=(20, 18, 14), spacing=(0.7, 0.9, 2.0))
    target = source.resized((9, 8, 6))
    g = torch.Generator().manual_seed(1)
    data = torch.rand((1, 1) + tuple(source.size[::-1]), generator=g) * 100.0 - 1000.0
    before = data.clone()
    out = resample_antialiased(data, source, target, antialias=antialias, padding_value=-1024.0)
    assert torch.equal(data, before)
    filtered, grid = lowpass(data, source, target.spacing, target.direction_matrix) if antialias else (data, source)
    expected = sample_on_grid(filtered + 1024.0, grid, target, padding_mode="zeros") - 1024.0
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)
