"""Acquisition differences between the two scans of a synthetic pair, on the network grid.

A synthetic pair is one CT seen twice, so without help the network only ever sees scans from the
same scanner, dose, slice thickness and field of view. Real pairs differ in all of these
(COPDGene: inhale at 200 mAs, exhale at 50 mAs; archives keep 2.5 to 8 mm slices; a follow-up
scan covers another part of the chest). :func:`apply_appearance` gives one image of the pair such
differences. Every function works on HU tensors ``(1, 1, D, H, W)`` on a grid whose third axis
(``z``, tensor dimension ``D``) is the slice direction of the source scan, as network grids are
(crops and resizes of the scan's own grid). The ground truth, a map in world mm, stays valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.filters import gaussian_smooth
from ..core.geometry import ImageGrid, index_axis_to_array_axis
from ..preprocessing.pair import AIR_HU
from ..simulation.acquisition import correlated_noise
from .config import AppearanceConfig

__all__ = ["AppearanceDraw", "draw_appearance", "apply_appearance", "thicker_slices", "correlated_noise",
           "cut_field_of_view", "uniform"]


def thicker_slices(hu: torch.Tensor, grid: ImageGrid, thickness_mm: float) -> torch.Tensor:
    """``hu`` as if reconstructed with slices ``thickness_mm`` thick along the grid's z axis.

    A box slice profile of width ``T`` has the variance of ``T**2 / 12``; the image already holds
    about one voxel of it (``s_z**2 / 12``), so the Gaussian that is added has
    ``sigma**2 = (T**2 - s_z**2) / 12``. Slices no thicker than the voxel change nothing.
    """
    s_z = float(grid.spacing[2])
    var = (float(thickness_mm) ** 2 - s_z**2) / 12.0
    if var <= 0:
        return hu
    return gaussian_smooth(hu, [0.0, 0.0, math.sqrt(var) / s_z])


def cut_field_of_view(hu: torch.Tensor, axis: int, fraction: float, upper: bool) -> torch.Tensor:
    """``hu`` with the part ``fraction`` of the box at one face along grid axis ``axis`` (0 = x,
    1 = y, 2 = z) replaced by air: a scan with a smaller field of view, padded as the preprocessing
    pads it."""
    dim = 2 + index_axis_to_array_axis(axis)  # after the (N, C) dimensions
    n = hu.shape[dim]
    k = int(round(float(fraction) * n))
    if k <= 0:
        return hu
    out = hu.clone()
    index = torch.arange(n - k, n) if upper else torch.arange(0, k)
    out.index_fill_(dim, index, AIR_HU)
    return out


@dataclass(frozen=True)
class AppearanceDraw:
    """The random choices of :func:`apply_appearance` for one pair (``None`` = not applied).

    Attributes:
        thickness_mm, thick_image: slice thickness and which image (0 or 1) gets it.
        noise_hu, noisy_image: low-dose noise and which image gets it.
        offsets_hu: calibration offset of each image.
        cut: ``(image, axis, fraction, upper)`` of a field-of-view cut.
    """

    thickness_mm: float | None = None
    thick_image: int = 0
    noise_hu: float | None = None
    noisy_image: int = 0
    offsets_hu: tuple[float, float] = (0.0, 0.0)
    cut: tuple[int, int, float, bool] | None = None


def uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    """One value drawn uniformly from ``[lo, hi]`` (float64 draws, as every pair choice)."""
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _chance(generator: torch.Generator, probability: float) -> bool:
    return float(torch.rand((), generator=generator, dtype=torch.float64)) < probability


def _which(generator: torch.Generator) -> int:
    return int(torch.randint(2, (1,), generator=generator))


def draw_appearance(config: AppearanceConfig, generator: torch.Generator) -> AppearanceDraw:
    """Draw the differences of one pair (always the same number of random values, so later draws
    of ``generator`` do not depend on which differences were chosen)."""
    thick = _chance(generator, config.thick_slice_probability)
    thickness, thick_image = uniform(generator, *config.slice_thickness_mm), _which(generator)
    noisy = _chance(generator, config.low_dose_probability)
    noise, noisy_image = uniform(generator, *config.low_dose_noise_hu), _which(generator)
    offsets = (uniform(generator, -config.hu_offset_hu, config.hu_offset_hu),
               uniform(generator, -config.hu_offset_hu, config.hu_offset_hu))
    cut = _chance(generator, config.fov_cut_probability)
    # slices are cut most often in real scans (the scan range differs): z twice as likely
    axis = (0, 1, 2, 2)[int(torch.randint(4, (1,), generator=generator))]
    cut_draw = (_which(generator), axis, uniform(generator, *config.fov_cut_fraction), bool(_which(generator)))
    return AppearanceDraw(thickness if thick else None, thick_image, noise if noisy else None, noisy_image,
                          offsets, cut_draw if cut else None)


def apply_appearance(images: tuple[torch.Tensor, torch.Tensor], grid: ImageGrid, draw: AppearanceDraw,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair ``images`` (HU, ``(1, 1, D, H, W)`` on ``grid``) with the differences of ``draw``:
    slice thickness, then calibration offset, then low-dose noise, then the field-of-view cut."""
    out = list(images)
    if draw.thickness_mm is not None:
        out[draw.thick_image] = thicker_slices(out[draw.thick_image], grid, draw.thickness_mm)
    out = [img + off if off else img for img, off in zip(out, draw.offsets_hu)]
    if draw.noise_hu is not None:
        k = draw.noisy_image
        out[k] = out[k] + correlated_noise(tuple(out[k].shape), draw.noise_hu, generator)
    if draw.cut is not None:
        k, axis, fraction, upper = draw.cut
        out[k] = cut_field_of_view(out[k], axis, fraction, upper)
    return out[0], out[1]
