"""registration.quality.check_quality against the plain formulas it computes, on an oblique
anisotropic grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import oblique_grid

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.registration.quality import MASK_MARGIN_VOXELS, check_quality


def _reference(fixed, moving, grid, deformation, fixed_mask, moving_mask):
    """The NCC weighted by the cubic ``max_pool3d`` of the fixed mask and the Dice of the masks,
    each image warped on its own, every sum in float64 over the whole grid."""
    phi = deformation.on_grid(grid)
    warped = phi.warp(moving, grid).double()
    k = 2 * MASK_MARGIN_VOXELS + 1
    w = F.max_pool3d((fixed_mask > 0.5).float(), k, stride=1, padding=MASK_MARGIN_VOXELS).double()
    a = fixed.double()
    ma, mb = (w * a).sum() / w.sum(), (w * warped).sum() / w.sum()
    cov = (w * (a - ma) * (warped - mb)).sum()
    ncc = float(cov / ((w * (a - ma) ** 2).sum() * (w * (warped - mb) ** 2).sum()).sqrt())
    fm, wm = fixed_mask > 0.5, phi.warp(moving_mask, grid) > 0.5
    dice = 2.0 * float((fm & wm).sum()) / float(fm.sum() + wm.sum())
    return ncc, dice


@pytest.fixture(scope="module")
def case():
    grid = oblique_grid(size=(30, 26, 22), spacing=(1.1, 0.8, 2.2))
    g = torch.Generator().manual_seed(7)
    shape = (1, 1) + tuple(grid.size[::-1])
    fixed = F.avg_pool3d(torch.rand(shape, generator=g), 3, stride=1, padding=1)
    moving = 0.7 * fixed + 0.3 * F.avg_pool3d(torch.rand(shape, generator=g), 3, stride=1, padding=1)
    zz, yy, xx = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape[2:]), indexing="ij")
    fixed_mask = ((xx / 0.6) ** 2 + (yy / 0.5) ** 2 + (zz / 0.7) ** 2 < 1).float()[None, None]
    moving_mask = ((xx / 0.55) ** 2 + (yy / 0.5) ** 2 + ((zz - 0.1) / 0.7) ** 2 < 1).float()[None, None]
    u = torch.randn((1, 3) + tuple(grid.size[::-1]), generator=g)
    deformation = Deformation(grid, F.avg_pool3d(u, 5, stride=1, padding=2) * 2.0)
    return fixed, moving, grid, deformation, fixed_mask, moving_mask


def test_quality_equals_the_weighted_formulas(case) -> None:
    result = check_quality(*case)
    ncc, dice = _reference(*case)
    assert result.ncc == pytest.approx(ncc, abs=1e-9)
    assert result.lung_dice == pytest.approx(dice, abs=1e-12)
    assert 0.3 < result.ncc < 0.99 and 0.5 < result.lung_dice < 0.99


def test_quality_without_masks_takes_the_whole_grid(case) -> None:
    fixed, moving, grid, deformation, _, _ = case
    result = check_quality(fixed, moving, grid, deformation)
    warped = deformation.warp(moving, grid).double().flatten()
    a = fixed.double().flatten()
    expected = float(torch.corrcoef(torch.stack([a, warped]))[0, 1])
    assert result.ncc == pytest.approx(expected, abs=1e-9)
    assert result.lung_dice is None and result.ok is (result.ncc >= result.ncc_threshold)
