"""Another acquisition of the same anatomy: thicker slices, coarser voxels, a lower dose.

Real pairs differ in how they were scanned, not only in the motion between them. COPDGene, for
example, scans inhale at 200 mAs and exhale at 50 mAs, and many archives keep 2.5 mm slices.
:func:`simulate_acquisition` turns a CT into such a scan of the same field of view, so that a
synthetic pair can be made harder while its ground truth (a map in world mm) stays valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..core.filters import gaussian_smooth, resample_antialiased
from ..core.geometry import ImageGrid
from ..preprocessing.pair import image_to_hu_tensor

__all__ = ["AcquisitionOptions", "LOW_DOSE_THICK_SLICE", "correlated_noise", "simulate_acquisition"]


@dataclass(frozen=True)
class AcquisitionOptions:
    """How the simulated scan is acquired.

    Attributes:
        spacing_mm: voxel size ``(x, y, z)`` of the new scan, mm; the slice thickness equals the
            z spacing (the source is low-pass filtered to it before sampling).
        noise_hu: standard deviation of the added noise, HU (0 = none).
        noise_correlation_mm: Gaussian sigma, mm, that correlates the noise in space (CT noise is
            not white: the reconstruction kernel smooths it); the noise is rescaled to ``noise_hu``
            after smoothing.
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 2.5)
    noise_hu: float = 40.0
    noise_correlation_mm: float = 0.7

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in self.spacing_mm):
            raise ValueError(f"spacing_mm must be 3 finite values > 0, got {self.spacing_mm}")
        if not (math.isfinite(float(self.noise_hu)) and float(self.noise_hu) >= 0):
            raise ValueError(f"noise_hu must be a finite value >= 0, got {self.noise_hu}")
        if not (math.isfinite(float(self.noise_correlation_mm)) and float(self.noise_correlation_mm) >= 0):
            raise ValueError(f"noise_correlation_mm must be a finite value >= 0, got {self.noise_correlation_mm}")


LOW_DOSE_THICK_SLICE = AcquisitionOptions(spacing_mm=(1.0, 1.0, 2.5), noise_hu=40.0, noise_correlation_mm=0.7)
"""The COPDGene-like exhale scan: 1 x 1 x 2.5 mm voxels, low-dose noise (about 40 HU at 50 mAs,
twice the 200 mAs noise of a sharp-kernel chest CT)."""


def simulate_acquisition(image: sitk.Image, options: AcquisitionOptions = LOW_DOSE_THICK_SLICE,
                         seed: int = 0) -> sitk.Image:
    """``image`` (CT in HU) scanned again over the same field of view with ``options``.

    The new grid keeps the origin corner, the direction and the physical extent of ``image`` (its
    size is rounded to whole voxels of ``options.spacing_mm``); the values are anti-aliased to
    the new voxel size, then correlated Gaussian noise of ``options.noise_hu`` is added.

    Returns:
        a float32 ``sitk.Image`` in HU on the new grid.

    Raises:
        ValueError: ``image`` is not a 3-D scalar SimpleITK image.
    """
    if not isinstance(image, sitk.Image) or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("image must be a 3-D scalar SimpleITK image")
    hu, grid = image_to_hu_tensor(image)
    target = _grid_with_spacing(grid, options.spacing_mm)
    values = resample_antialiased(hu, grid, target)
    if options.noise_hu > 0:
        values = values + _correlated_noise(target, options, seed)
    out = sitk.GetImageFromArray(values[0, 0].numpy().astype(np.float32))
    target.copy_to_sitk(out)
    return out


def _grid_with_spacing(grid: ImageGrid, spacing_mm: tuple[float, float, float]) -> ImageGrid:
    """The grid over the same box as ``grid`` (same outer corner and direction) with voxels of
    about ``spacing_mm``."""
    size = tuple(max(1, int(round(e / s))) for e, s in zip(grid.extent, spacing_mm))
    return grid.resized(size)


def correlated_noise(shape: tuple[int, ...], std_hu: float, generator: torch.Generator,
                     sigma_vox: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Gaussian noise ``(N, C, D, H, W)`` of standard deviation ``std_hu``, smoothed by
    ``sigma_vox = (sx, sy, sz)`` voxels and rescaled to ``std_hu`` (CT noise is not white: the
    reconstruction kernel correlates it)."""
    noise = torch.randn(shape, generator=generator)
    if max(sigma_vox) > 0.2:
        noise = gaussian_smooth(noise, sigma_vox)
    return noise * (float(std_hu) / noise.std().clamp_min(1e-12))


def _correlated_noise(grid: ImageGrid, options: AcquisitionOptions, seed: int) -> torch.Tensor:
    """:func:`correlated_noise` on ``grid`` with the deviation and correlation (mm) of ``options``."""
    gen = torch.Generator().manual_seed(int(seed))
    sigma_vox = [options.noise_correlation_mm / s for s in grid.spacing]  # x, y, z
    return correlated_noise((1, 1, *grid.shape_zyx), options.noise_hu, gen, sigma_vox)
