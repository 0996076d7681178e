"""A small chest-CT phantom written to disk, for the training tests (oblique, anisotropic grid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from helpers import rotation_matrix

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.simulation.phantoms import synthetic_chest_ct

CENTRE = np.array([15.0, -30.0, 250.0])  # LPS mm
SEMI_AXES = np.array([38.0, 55.0, 80.0])
OFFSET_X = 55.0


def phantom_grid(size=(44, 36, 48), spacing=(4.0, 4.4, 4.8)) -> ImageGrid:
    d = rotation_matrix((4.0, -3.0, 6.0)) @ np.diag([1.0, 1.0, -1.0])
    probe = ImageGrid(size, spacing, (0.0, 0.0, 0.0), tuple(d.ravel()))
    half = probe.index_to_world(np.asarray(size, dtype=float) / 2.0 - 0.5)
    return ImageGrid(size, spacing, tuple(CENTRE - half), tuple(d.ravel()))


def write_phantom(folder: Path, seed: int = 0, name: str = "ct") -> tuple[Path, Path]:
    """Write ``{name}.nii.gz`` (HU) and ``{name}_mask.nii.gz`` (1 = right, 2 = left lung) into ``folder``."""
    grid = phantom_grid()
    pts = grid.world_points(dtype=torch.float64).numpy() - CENTRE
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
    for label, sign in ((1, -1.0), (2, 1.0)):
        q = (pts - np.array([sign * OFFSET_X, 0.0, 0.0])) / SEMI_AXES
        labels[(q ** 2).sum(axis=-1) <= 1.0] = label
    mask = sitk.GetImageFromArray(labels)
    grid.copy_to_sitk(mask)
    ct = sitk.Cast(synthetic_chest_ct(mask, seed=seed), sitk.sitkInt16)
    ct_path, mask_path = folder / f"{name}.nii.gz", folder / f"{name}_mask.nii.gz"
    sitk.WriteImage(ct, str(ct_path))
    sitk.WriteImage(mask, str(mask_path))
    return ct_path, mask_path
