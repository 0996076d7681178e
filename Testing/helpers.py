"""Helper functions shared by the tests (fixtures stay in conftest.py):
``from helpers import oblique_grid``."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MLVIRNETLib.core.geometry import ImageGrid


def rotation_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Proper rotation from three Euler angles (degrees) about x, then y, then z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_grid(size=(14, 10, 12), spacing=(0.7, 1.3, 2.5), origin=(-12.5, 20.25, 33.0),
                 angles=(10.0, -20.0, 35.0), flip_z: bool = False) -> ImageGrid:
    """An oblique, anisotropic grid with a non-zero origin (optionally an improper direction)."""
    d = rotation_matrix(angles)
    if flip_z:
        d = d @ np.diag([1.0, 1.0, -1.0])
    return ImageGrid(size, spacing, origin, tuple(d.ravel()))


def bundled_ct_3mm() -> sitk.Image:
    """The bundled CT resampled to about 3 mm (60 x 63 x 82), int16 HU."""
    from MLVIRNETLib.paths import bundled_ct_path

    ct = sitk.ReadImage(str(bundled_ct_path()))
    grid = ImageGrid.from_sitk(ct).resized((60, 63, 82))
    reference = sitk.Image(list(grid.size), sitk.sitkInt16)
    grid.copy_to_sitk(reference)
    return sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
