"""Tests of the training data sources: synthetic breathing pairs (truth checked by warping), 4D-CT
phase pairs and CSV manifests, on a phantom CT with an oblique, anisotropic grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_phantom import phantom_grid, write_phantom

from MLVIRNETLib.training.config import AppearanceConfig, SyntheticMotionConfig
from MLVIRNETLib.training.pairs import ManifestSource, MixedSource, PhaseSource, labels_to_channels
from MLVIRNETLib.training.synthetic_pairs import SyntheticSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (32, 32, 32)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    ct, mask = write_phantom(folder, seed=0, name="a")
    ct_b, mask_b = write_phantom(folder, seed=1, name="b")
    return folder, ct, mask, ct_b, mask_b


@pytest.fixture(scope="module")
def source(phantom):
    _, ct, mask, _, _ = phantom
    motion = SyntheticMotionConfig(peak_mm=(12.0, 12.0), noise_hu=(0.0, 0.0), translation_mm=2.0, rotation_deg=2.0)
    return SyntheticSource([str(ct)], SIZE, motion, masks=[str(mask)], labels=[str(mask)])


def _corr(a: torch.Tensor, b: torch.Tensor, sel: torch.Tensor) -> float:
    x, y = a[sel] - a[sel].mean(), b[sel] - b[sel].mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


@pytest.mark.parametrize("swap", [False, True])
def test_truth_maps_fixed_to_moving(source, swap):
    """Warping the moving image with the known truth gives back the fixed image (much better than
    no warping); the truth has the requested peak inside the lungs."""
    pair = source.make_pair(0, torch.Generator().manual_seed(5), swap=swap, with_truth=True)
    assert pair.grid.size == SIZE and pair.fixed.shape == (1, 1, 32, 32, 32)
    assert float(pair.fixed.min()) >= 0 and float(pair.fixed.max()) <= 1
    assert pair.fixed_masks.shape == (1, 2, 32, 32, 32)  # right and left lung channels
    lung = pair.fixed_masks.sum(dim=1, keepdim=True) > 0.5
    warped = pair.truth.warp(pair.moving, pair.grid)
    assert _corr(pair.fixed, warped, lung) > _corr(pair.fixed, pair.moving, lung) + 0.1
    assert _corr(pair.fixed, warped, lung) > 0.9
    warped_masks = pair.truth.warp(pair.moving_masks, pair.grid, padding_mode="zeros")
    before = float(((pair.fixed_masks - pair.moving_masks) ** 2).mean())
    after = float(((pair.fixed_masks - warped_masks) ** 2).mean())
    assert after < 0.5 * before
    assert 8.0 < float(pair.truth.displacement.norm(dim=1).max()) < 20.0


def test_identical_pairs_have_no_motion_and_the_identity_as_truth(phantom):
    """``identical_probability: 1``: the same scan twice (noise-free here), truth the identity."""
    _, ct, mask, _, _ = phantom
    motion = SyntheticMotionConfig(peak_mm=(12.0, 12.0), noise_hu=(0.0, 0.0), translation_mm=5.0, rotation_deg=3.0,
                                   identical_probability=1.0)
    src = SyntheticSource([str(ct)], SIZE, motion, masks=[str(mask)])
    pair = src.make_pair(0, torch.Generator().manual_seed(4), with_truth=True)
    assert "identical" in pair.name
    assert torch.allclose(pair.fixed, pair.moving, atol=1e-5)
    assert float(pair.truth.displacement.abs().max()) < 1e-4
    # validation pairs (a given peak) always move
    moved = src.make_pair(0, torch.Generator().manual_seed(4), peak_mm=12.0, with_truth=True)
    assert float(moved.truth.displacement.norm(dim=1).max()) > 8.0


def test_appearance_changes_the_images_not_the_truth(phantom):
    """With every acquisition difference on, the pair differs from the plain one only in its
    intensities: same grid, same motion (truth), same masks."""
    _, ct, mask, _, _ = phantom
    motion = SyntheticMotionConfig(peak_mm=(10.0, 10.0), noise_hu=(0.0, 0.0))
    look = AppearanceConfig(thick_slice_probability=1, slice_thickness_mm=(12.0, 12.0), low_dose_probability=1,
                            hu_offset_hu=30, fov_cut_probability=1)
    plain = SyntheticSource([str(ct)], SIZE, motion, masks=[str(mask)])
    real = SyntheticSource([str(ct)], SIZE, motion, masks=[str(mask)], appearance=look)
    a = plain.make_pair(0, torch.Generator().manual_seed(8), swap=False, with_truth=True)
    b = real.make_pair(0, torch.Generator().manual_seed(8), swap=False, with_truth=True)
    assert a.grid == b.grid and torch.equal(a.truth.displacement, b.truth.displacement)
    assert torch.equal(a.fixed_masks, b.fixed_masks) and torch.equal(a.moving_masks, b.moving_masks)
    assert not torch.equal(a.fixed, b.fixed) and not torch.equal(a.moving, b.moving)
    # validation pairs (a given peak) keep the plain appearance
    c = plain.make_pair(0, torch.Generator().manual_seed(8), peak_mm=10.0, swap=False)
    d = real.make_pair(0, torch.Generator().manual_seed(8), peak_mm=10.0, swap=False)
    assert torch.equal(c.fixed, d.fixed) and torch.equal(c.moving, d.moving)


def test_same_generator_seed_same_pair(source):
    a = source.sample(torch.Generator().manual_seed(11))
    b = source.sample(torch.Generator().manual_seed(11))
    c = source.sample(torch.Generator().manual_seed(12))
    assert torch.equal(a.fixed, b.fixed) and torch.equal(a.moving, b.moving) and a.grid == b.grid
    assert not torch.equal(a.moving, c.moving)


def test_density_change_follows_mass_conservation(phantom):
    """A(x) = S(d(x)): where det J_d > 1, a voxel of A holds the mass of a larger piece of S, so A
    is denser (brighter) than the CT sampled without the density model; where det J_d < 1, darker."""
    _, ct, mask, _, _ = phantom
    kw = dict(peak_mm=(15.0, 15.0), noise_hu=(0.0, 0.0), random_mm=(0.0, 0.0), translation_mm=0.0, rotation_deg=0.0)
    with_d = SyntheticSource([str(ct)], SIZE, SyntheticMotionConfig(density_change=True, **kw), masks=[str(mask)])
    without = SyntheticSource([str(ct)], SIZE, SyntheticMotionConfig(density_change=False, **kw), masks=[str(mask)])
    a = with_d.make_pair(0, torch.Generator().manual_seed(3), swap=False, with_truth=True)
    b = without.make_pair(0, torch.Generator().manual_seed(3), swap=False, with_truth=True)
    det = a.truth.jacobian_determinant()
    diff = a.fixed - b.fixed  # normalised units: HU / 1300
    # in lung parenchyma (below -500 HU, well inside the mask): A + 1000 HU = (S(d(x)) + 1000 HU) det J
    sel = (a.fixed_masks.sum(dim=1, keepdim=True) > 0.99) & (b.fixed < 0.38)
    predicted = b.fixed * (det - 1.0)
    assert int(sel.sum()) > 500
    assert float(diff[sel & (det > 1.05)].mean()) > 0.005
    assert _corr(diff, predicted, sel) > 0.8
    assert 0.8 < float(diff[sel].sum() / predicted[sel].sum()) < 1.25


def test_validation_pairs_cover_peaks_and_directions(source):
    pairs = source.validation_pairs([5.0, 10.0], seed=0)
    assert len(pairs) == 4 and all(p.truth is not None for p in pairs)
    assert sum("swapped" in p.name for p in pairs) == 2


def test_phase_source_pairs(phantom):
    _, ct, mask, ct_b, mask_b = phantom
    src = PhaseSource([str(ct), str(ct_b)], SIZE, masks=[str(mask), str(mask_b)])
    assert len(src) == 2
    pair = src.sample(torch.Generator().manual_seed(0))
    assert pair.grid.size == SIZE and pair.fixed_masks.shape == (1, 1, 32, 32, 32)
    assert not torch.equal(pair.fixed, pair.moving)
    mixed = MixedSource([src], [1.0])
    assert mixed.sample(torch.Generator().manual_seed(0)).grid.size == SIZE


def test_manifest_with_labels_and_landmarks(phantom, tmp_path):
    folder, ct, mask, ct_b, mask_b = phantom
    grid = phantom_grid()
    pts = grid.index_to_world(np.array([[20.0, 18.0, 24.0], [10.0, 15.0, 30.0]]))
    np.savetxt(tmp_path / "f.csv", pts, delimiter=",", header="x,y,z", comments="")
    np.savetxt(tmp_path / "m.csv", pts + [0.0, 0.0, 5.0], delimiter=",", header="x,y,z", comments="")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(
        "fixed,moving,fixed_mask,moving_mask,fixed_labels,moving_labels,fixed_landmarks,moving_landmarks\n"
        f"{ct},{ct_b},{mask},{mask_b},{mask},{mask_b},f.csv,m.csv\n"
        f"{ct_b},{ct},,,,,,\n"
    )
    src = ManifestSource(str(csv_path), SIZE)
    assert len(src) == 2
    first, second = src.pairs
    assert first.fixed_masks.shape == (1, 2, 32, 32, 32)  # labels 1 and 2
    assert np.allclose(first.moving_points - first.fixed_points, [0.0, 0.0, 5.0])
    assert second.fixed_masks is None and second.fixed_points is None


def test_manifest_errors_name_line_and_column(tmp_path, phantom):
    _, ct, _, _, _ = phantom
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,moving,extra\na,b,c\n")
    with pytest.raises(ValueError, match="unknown columns \\['extra'\\]"):
        ManifestSource(str(bad), SIZE)
    bad.write_text(f"fixed,moving\n{ct},missing.nii.gz\n")
    with pytest.raises(FileNotFoundError, match="line 2: moving file not found"):
        ManifestSource(str(bad), SIZE)


def test_labels_to_channels():
    lab = torch.tensor([0, 3, 1, 3], dtype=torch.float32).reshape(1, 1, 1, 1, 4)
    ch = labels_to_channels(lab)
    assert ch.shape == (1, 2, 1, 1, 4)
    assert ch[0, :, 0, 0].tolist() == [[0, 0, 1, 0], [0, 1, 0, 1]]
    with pytest.raises(ValueError, match="no nonzero"):
        labels_to_channels(torch.zeros(1, 1, 2, 2, 2))

