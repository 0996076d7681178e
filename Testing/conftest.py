"""Shared pytest fixtures: oblique, anisotropic grids, the shared-data location, a 3 mm breathing pair.

Helper functions live in ``Testing/helpers.py`` (tests import them from there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import bundled_ct_3mm, oblique_grid
from MLVIRNETLib.core.geometry import ImageGrid


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


@pytest.fixture(scope="session")
def breathing_pair_3mm() -> tuple[sitk.Image, sitk.Image]:
    """``(fixed, moving)``: the bundled CT at about 3 mm and a 10 mm synthetic-breathing partner."""
    from MLVIRNETLib.simulation.cases import synthetic_breathing_case

    fixed = bundled_ct_3mm()
    return fixed, synthetic_breathing_case(fixed, peak_mm=10.0, n_landmarks=10).moving


@pytest.fixture(scope="session")
def synthetic_4dct_3mm():
    """:func:`helpers.synthetic_4dct` with 4 phases at breathing amplitudes 0, 3, 6, 3 mm (phase 3 is
    phase 1's image again), 20 landmarks."""
    from helpers import synthetic_4dct

    return synthetic_4dct(n_phases=4, peak_mm=6.0, n_landmarks=20)
