"""Shared pytest fixtures: oblique, anisotropic grids and the shared-data location."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

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


@pytest.fixture
def grid() -> ImageGrid:
    return oblique_grid()


@pytest.fixture
def sitk_image(grid: ImageGrid) -> sitk.Image:
    """A smooth random image on ``grid`` (float32)."""
    rng = np.random.default_rng(0)
    arr = rng.normal(size=grid.shape_zyx).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    grid.copy_to_sitk(img)
    return sitk.SmoothingRecursiveGaussian(img, 1.5)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The development data beside the checkout (``../shared/data``); not in a user's clone."""


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (it is only on the development machines)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (use with ``pytest.mark.usefixtures``), restored after.

    The registration-sized problems in the tests gain nothing from two threads, and on a busy
    (shared) CPU two OpenMP threads waiting for each other made such modules 15 times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bundled_ct_3mm() -> sitk.Image:
    """The bundled CT resampled to about 3 mm (60 x 63 x 82), int16 HU."""
    from MLVIRNETLib.paths import bundled_ct_path

    ct = sitk.ReadImage(str(bundled_ct_path()))
    grid = ImageGrid.from_sitk(ct).resized((60, 63, 82))
    reference = sitk.Image(list(grid.size), sitk.sitkInt16)
    grid.copy_to_sitk(reference)
    return sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)


@pytest.fixture(scope="session")
def breathing_pair_3mm() -> tuple[sitk.Image, sitk.Image]:
    """``(fixed, moving)``: the bundled CT at about 3 mm and a 10 mm synthetic-breathing partner."""
    from MLVIRNETLib.simulation.cases import synthetic_breathing_case

    fixed = bundled_ct_3mm()
    return fixed, synthetic_breathing_case(fixed, peak_mm=10.0, n_landmarks=10).moving
