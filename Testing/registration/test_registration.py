"""Acceptance tests of MLVIRNETLib.registration.pipeline.register on real CT with known breathing motion.

The bundled CT is resampled onto oblique, anisotropic grids (about 3 mm) with non-zero origins;
the moving scan is generated from the whole bundled CT on its own grid (a different field of view
with real anatomy), so ground truth is the synthetic deformation in world coordinates.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import rotation_matrix

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.progress import Progress
from MLVIRNETLib.networks.cascade import MultilevelNet, NetworkConfig, build_network
from MLVIRNETLib.paths import bundled_ct_path
from MLVIRNETLib.preprocessing.lungmask import segment_lungs
from MLVIRNETLib.preprocessing.pair import preprocess_pair
from MLVIRNETLib.registration import (
    RegistrationCancelled,
    RegistrationOptions,
    cpu_bf16_supported,
    register,
    validate_pair,
    warp_image,
)
from MLVIRNETLib.registration.affine import compose_affine
from MLVIRNETLib.registration.options import hu_messages
from MLVIRNETLib.registration.pipeline import _check_overlap
from MLVIRNETLib.simulation.breathing import breathing_deformation, make_synthetic_pair, rigid_matrix, sample_landmarks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(grid={"size": (48, 48, 48)}, refinement={"level_factors": (4, 2, 1), "iterations": 60})


def _oblique(image: sitk.Image, spacing, angles, shrink_mm) -> ImageGrid:
    ref = ImageGrid.from_sitk(image)
    centre = ref.index_to_world((np.asarray(ref.size) - 1) / 2.0)
    size = np.round((ref.extent - 2 * np.asarray(shrink_mm, dtype=float)) / np.asarray(spacing)).astype(int)
    d = rotation_matrix(angles)
    origin = centre - d @ ((size - 1) / 2.0 * np.asarray(spacing))
    return ImageGrid(tuple(size), tuple(spacing), tuple(origin), tuple(d.ravel()))


def _resample(image: sitk.Image, grid: ImageGrid) -> sitk.Image:
    return sitk.Resample(image, list(grid.size), sitk.Transform(), sitk.sitkLinear, grid.origin, grid.spacing,
                         grid.direction, -1024.0, sitk.sitkFloat32)


class Case:
    """A fixed scan, its lung mask and landmarks, and the whole (smoothed) bundled CT."""

    def __init__(self) -> None:
        full = sitk.SmoothingRecursiveGaussian(sitk.Cast(sitk.ReadImage(str(bundled_ct_path())), sitk.sitkFloat32), 1.2)
        self.full = full
        self.fixed_grid = _oblique(full, (3.0, 2.7, 3.3), (4.0, -3.0, 6.0), (16.0, 16.0, 22.0))
        self.fixed = _resample(full, self.fixed_grid)
        self.fixed_mask = segment_lungs(self.fixed)
        self.moving_grid = _oblique(full, (2.8, 3.1, 3.0), (-3.0, 2.0, -5.0), (3.0, 3.0, 3.0))
        full_grid = ImageGrid.from_sitk(full)
        self.breathing = breathing_deformation(full_grid.resized((40, 42, 55)), segment_lungs(full), peak_mm=15.0, seed=2)
        self.points = torch.as_tensor(sample_landmarks(self.fixed, self.fixed_mask, n=80, border_mm=10.0),
                                      dtype=torch.float32)

    def moving_for(self, truth) -> sitk.Image:
        moving, _ = make_synthetic_pair(self.full, truth, noise_hu=10.0, seed=1, moving_grid=self.moving_grid)
        return moving

    def tre(self, deformation, truth) -> tuple[float, float]:
        """(mean TRE, mean initial error) in mm at the landmarks."""
        target = truth.map_points(self.points)[0]
        err = (deformation.map_points(self.points)[0] - target).norm(dim=-1)
        return float(err.mean()), float((target - self.points).norm(dim=-1).mean())


@pytest.fixture(scope="module")
def case() -> Case:
    return Case()


@pytest.fixture(scope="module")
def breathing_run(case):
    moving = case.moving_for(case.breathing)
    result = register(case.fixed, moving, case.fixed_mask, model=None, device="cpu",
                      options=RegistrationOptions(affine=None, **FAST))
    return moving, result


def test_breathing_is_recovered_by_refinement_alone(case, breathing_run) -> None:
    _, result = breathing_run
    peak = float(case.breathing.displacement[0].norm(dim=0).max())
    assert peak >= 15.0 - 0.5
    tre, initial = case.tre(result.deformation, case.breathing)
    assert initial > 4.0
    assert tre <= 1.5, f"TRE {tre:.2f} mm (initial {initial:.2f} mm)"
    # the field lives on the full-resolution fixed grid and does not fold
    assert result.deformation.grid == case.fixed_grid
    assert result.folding_fraction < 1e-3
    assert result.affine is None and result.model_used is None
    assert set(result.timings) >= {"lung_mask", "affine", "preprocess", "network", "refine", "field", "total"}
    assert [lv.grid.size for lv in result.level_deformations] == [(12, 12, 12), (24, 24, 24), (48, 48, 48)]


def test_affine_offset_and_breathing_are_recovered(case) -> None:
    centre = case.fixed_grid.index_to_world((np.asarray(case.fixed_grid.size) - 1) / 2.0)
    a = rigid_matrix((3.0, -2.0, 3.5), (12.0, -10.0, 12.0), centre)  # 19.7 mm, 5 degrees
    truth = compose_affine(a, case.breathing)
    moving = case.moving_for(truth)
    result = register(case.fixed, moving, case.fixed_mask, model=None, device="cpu",
                      options=RegistrationOptions(**FAST))
    tre, initial = case.tre(result.deformation, truth)
    assert initial > 15.0
    assert tre <= 1.5, f"TRE {tre:.2f} mm (initial {initial:.2f} mm)"
    assert result.affine is not None and result.affine.shape == (4, 4)
    assert result.folding_fraction < 1e-3


def test_identical_inputs_give_a_near_zero_field(case) -> None:
    result = register(case.fixed, case.fixed, case.fixed_mask, model=None, device="cpu",
                      options=RegistrationOptions(**FAST))
    u = result.deformation.displacement_at(case.points)[0].norm(dim=-1)
    assert float(u.max()) < 0.5


def test_swapping_fixed_and_moving_gives_the_inverse(case, breathing_run) -> None:
    moving, forward = breathing_run
    backward = register(moving, case.fixed, None, model=None, device="cpu", options=RegistrationOptions(affine=None, **FAST))
    assert backward.deformation.grid == ImageGrid.from_sitk(moving)
    there = forward.deformation.map_points(case.points)
    back = backward.deformation.map_points(there)[0]
    err = (back - case.points).norm(dim=-1)
    assert float(err.mean()) < 1.5, f"mean |y_ba(y_ab(x)) - x| = {float(err.mean()):.2f} mm"


def test_warp_image_aligns_the_moving_scan(case, breathing_run) -> None:
    moving, result = breathing_run
    warped = warp_image(moving, result.deformation, padding_value=-1024.0)
    assert ImageGrid.from_sitk(warped).is_close(case.fixed_grid)
    assert warped.GetPixelID() == moving.GetPixelID()
    lung = sitk.GetArrayFromImage(case.fixed_mask) > 0
    f = sitk.GetArrayFromImage(case.fixed)[lung]
    w = sitk.GetArrayFromImage(warped)[lung]
    plain = sitk.GetArrayFromImage(_resample(moving, case.fixed_grid))[lung]
    assert np.abs(w - f).mean() < 0.6 * np.abs(plain - f).mean()


def test_network_path_with_an_in_memory_and_a_saved_model(case, tmp_path) -> None:
    torch.manual_seed(0)
    net = MultilevelNet(levels=2, features=4, depth=2)
    with torch.no_grad():
        for level in net.nets:
            level.head.weight.mul_(1e-3)  # small random motion
    opts = RegistrationOptions(affine=None, refinement={"iterations": 0}, grid={"size": (32, 32, 32)})
    net.train()
    result = register(case.fixed, case.fixed, case.fixed_mask, model=net, device="cpu", options=opts)
    assert net.training, "register() must give the caller's net back in its own mode"
    net.eval()
    again = register(case.fixed, case.fixed, case.fixed_mask, model=net, device="cpu", options=opts)
    assert torch.equal(again.deformation.displacement, result.deformation.displacement)  # ran in eval mode both times
    assert result.model_used == "<in-memory>"
    assert torch.isfinite(result.deformation.displacement).all()
    assert len(result.level_deformations) == 2 and result.timings["network"] > 0
    bf16 = register(case.fixed, case.fixed, case.fixed_mask, model=net, device="cpu",
                    options=RegistrationOptions(affine=None, refinement={"iterations": 0}, grid={"size": (32, 32, 32)},
                                                network={"precision": "auto-bfloat16"}))
    diff = (bf16.deformation.displacement - result.deformation.displacement).abs().max()
    assert float(diff) < 0.05 + 0.05 * float(result.deformation.displacement.abs().max())
    if not cpu_bf16_supported():  # emulated bf16 is far slower: the option is ignored, and said so
        assert any("precision auto-bfloat16: this CPU has no native bf16 support" in m for m in bf16.messages)
        assert float(diff) == 0.0
    # a forced precision runs even where it is emulated (how fp16 AMP accuracy is measured on a CPU)
    scale = float(result.deformation.displacement.abs().max())
    for precision in ("float16", "bfloat16"):
        forced = register(case.fixed, case.fixed, case.fixed_mask, model=net, device="cpu",
                          options=RegistrationOptions(affine=None, refinement={"iterations": 0},
                                                      grid={"size": (32, 32, 32)}, network={"precision": precision}))
        diff = float((forced.deformation.displacement - result.deformation.displacement).abs().max())
        assert 0.0 < diff < 0.05 + 0.05 * scale, (precision, diff, scale)
    with pytest.raises(ValueError, match="network.precision must be one of"):
        RegistrationOptions(network={"precision": "half"})

    from MLVIRNETLib.networks.model_files import save_model

    config = NetworkConfig(levels=2, features=4, depth=2, input_size=(24, 24, 24))
    path = save_model(tmp_path / "tiny.pt", build_network(config), config)
    saved = register(case.fixed, case.fixed, case.fixed_mask, model=path, device="cpu", options=opts)
    assert saved.model_used == str(path)
    assert saved.network_grid.size == (24, 24, 24)  # network only: preprocessed straight to the model size
    # with refinement, preprocessing and refinement use network_size; the model still sees 24^3 inputs
    refined = register(case.fixed, case.fixed, case.fixed_mask, model=path, device="cpu",
                       options=RegistrationOptions(affine=None, refinement={"iterations": 2}, grid={"size": (32, 32, 32)}))
    assert refined.network_grid.size == (32, 32, 32)
    assert [d.grid.size for d in refined.level_deformations] == [(12, 12, 12), (24, 24, 24), (8, 8, 8), (16, 16, 16)]
    assert refined.level_deformations[1].grid.is_close(refined.network_grid.resized((24, 24, 24)))
    with pytest.raises(FileNotFoundError):
        register(case.fixed, case.fixed, model=tmp_path / "missing.pt", device="cpu", options=opts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_matches_the_cpu(case, breathing_run) -> None:
    """The whole pipeline on a GPU (shipped model under fp16 AMP, affine, refinement) agrees with the CPU."""
    moving, _ = breathing_run
    opts = RegistrationOptions(**FAST)
    cpu = register(case.fixed, moving, case.fixed_mask, model="default", device="cpu", options=opts)
    gpu = register(case.fixed, moving, case.fixed_mask, model="default", device="cuda", options=opts)
    assert gpu.deformation.displacement.device.type == "cuda"
    assert gpu.deformation.grid == cpu.deformation.grid == case.fixed_grid
    tre_cpu, _ = case.tre(cpu.deformation, case.breathing)
    tre_gpu, _ = case.tre(gpu.deformation.to("cpu"), case.breathing)
    assert tre_gpu <= 1.5 and abs(tre_gpu - tre_cpu) < 0.3, (tre_gpu, tre_cpu)
    shift = (gpu.deformation.to("cpu").map_points(case.points) - cpu.deformation.map_points(case.points)).norm(dim=-1)
    assert float(shift.mean()) < 0.5
    assert all(t >= 0 for t in gpu.timings.values())


def test_missing_default_model_falls_back_to_refinement(case, monkeypatch, tmp_path) -> None:
    """An installation without the model file (e.g. a trimmed package) still registers, and says so."""
    import MLVIRNETLib.paths

    monkeypatch.setattr(MLVIRNETLib.paths, "default_model_path", lambda: tmp_path / "absent.pt")
    seen: list[tuple[float, str]] = []
    result = register(case.fixed, case.fixed, case.fixed_mask, device="cpu",
                      options=RegistrationOptions(affine=None, grid={"size": (32, 32, 32)}, refinement={"iterations": 2}),
                      progress=lambda f, m: seen.append((f, m)))
    assert result.model_used is None
    assert any("not installed" in m for m in result.messages)
    assert any("not installed" in m for _, m in seen)
    fractions = [f for f, _ in seen]
    assert fractions[-1] == 1.0 and all(b >= a for a, b in zip(fractions, fractions[1:]))


def test_cancel_and_thread_restore(case) -> None:
    before = torch.get_num_threads()
    with pytest.raises(RegistrationCancelled):
        register(case.fixed, case.fixed, case.fixed_mask, model=None, device="cpu",
                 options=RegistrationOptions(runtime={"num_threads": 2}, **FAST), cancel=lambda: True)
    assert torch.get_num_threads() == before


def _image(array: np.ndarray, like: sitk.Image | None = None) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    if like is not None:
        img.CopyInformation(like)
    return img


def test_bad_inputs_raise_one_clear_error(case) -> None:
    arr = sitk.GetArrayFromImage(case.fixed)
    with pytest.raises(ValueError, match="both be 3-D"):
        validate_pair(case.fixed, _image(arr[10]))
    with pytest.raises(ValueError, match="constant"):
        register(case.fixed, _image(np.full_like(arr, -1000.0), case.fixed), model=None)
    nan = arr.copy()
    nan[5, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        register(_image(nan, case.fixed), case.fixed, model=None)
    shifted = sitk.Image(case.fixed_mask)
    shifted.SetOrigin(tuple(np.asarray(shifted.GetOrigin()) + 5.0))
    with pytest.raises(ValueError, match="different grid"):
        register(case.fixed, case.fixed, fixed_mask=shifted, model=None)
    with pytest.raises(ValueError, match="empty"):
        register(case.fixed, case.fixed, fixed_mask=_image(np.zeros(arr.shape, np.uint8), case.fixed), model=None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            register(case.fixed, case.fixed, model=None, device="cuda")
    with pytest.raises(ValueError, match=r"grid.size \(2, 2, 2\) is too small: at least 4 voxels per axis"):
        RegistrationOptions(grid={"size": (2, 2, 2)})


def test_options_are_checked_before_any_work(case) -> None:
    with pytest.raises(TypeError, match="options must be a RegistrationOptions .* got list"):
        register(case.fixed, case.fixed, model=None, options=[("affine", None)])
    with pytest.raises(ValueError, match=r"unknown options key\(s\) \['network_sizes'\]; valid keys are \['grid"):
        register(case.fixed, case.fixed, model=None, options={"network_sizes": (32, 32, 32)})
    too_small = r"grid.size \(4, 4, 4\) is too small for refinement.*at least 12 per axis"
    with pytest.raises(ValueError, match=too_small):
        RegistrationOptions(grid={"size": (4, 4, 4)})
    with pytest.raises(ValueError, match=too_small):
        register(case.fixed, case.fixed, model=None, options={"grid": {"size": (4, 4, 4)}})
    changed = RegistrationOptions()
    changed.grid.size = (4, 4, 4)  # changed after it was made: checked again by register()
    with pytest.raises(ValueError, match=too_small):
        register(case.fixed, case.fixed, model=None, options=changed)
    with pytest.raises(ValueError, match=r"grid.size \(1024, 1024, 1024\) is too large: at most 512"):
        RegistrationOptions(grid={"size": (1024, 1024, 1024)})
    with pytest.raises(ValueError, match=r"grid.size \(512, 512, 512\) \(134 million voxels\) would need about 37 GB"
                                         r" for preprocessing and refinement \(limit 16 GB\)"):
        RegistrationOptions(grid={"size": (512, 512, 512)},
                            refinement={"level_factors": (4, 2, 1), "iterations": (1, 1, 1)})
    with pytest.raises(ValueError, match="grid.size must be 3 integers"):
        RegistrationOptions(grid={"size": 160})
    with pytest.raises(ValueError, match=r"unknown affine option key\(s\) \['level'\]"):
        RegistrationOptions(affine={"level": 3})
    assert RegistrationOptions.from_dict({"affine": {"levels_mm": (6.0,)}}).affine.levels_mm == (6.0,)
    assert RegistrationOptions.from_dict({"affine": None}).affine is None


def test_a_mask_of_minus_one_names_its_values(case) -> None:
    minus = _image(np.full(sitk.GetArrayFromImage(case.fixed).shape, -1, np.int16), case.fixed)
    with pytest.raises(ValueError, match=r"fixed mask has negative values \(range -1\.\.-1; values seen: -1\)"):
        register(case.fixed, case.fixed, fixed_mask=minus, model=None)


def test_values_that_are_not_hu_are_reported(case) -> None:
    unit_fixed = sitk.RescaleIntensity(case.fixed, 0.0, 1.0)
    unit_moving = sitk.RescaleIntensity(case.fixed, 0.0, 1.0)
    seen: list[str] = []
    result = register(unit_fixed, unit_moving, case.fixed_mask, model=None, device="cpu",
                      options={"affine": None, "grid": {"size": (32, 32, 32)}, "refinement": {"iterations": 2}},
                      progress=lambda f, m: seen.append(m))
    notes = [m for m in result.messages if "(1st-99th percentile)" in m]
    assert len(notes) == 2 and notes[0].startswith("fixed image has values 0") and "moving image" in notes[1]
    assert all("air about -1000 HU" in m and "soft tissue 0..100 HU" in m for m in notes)
    assert all(m in seen for m in notes)
    plus = hu_messages(case.fixed, sitk.Add(case.fixed, 1024.0))
    assert len(plus) == 1 and plus[0].startswith("moving image has values") and "subtract 1024" in plus[0]
    assert hu_messages(case.fixed, case.full) == []


def test_pairs_that_do_not_overlap_are_refused_or_reported(case) -> None:
    far = sitk.Image(case.fixed)
    far.SetOrigin(tuple(np.asarray(far.GetOrigin()) + np.array([3000.0, 0.0, 0.0])))
    with pytest.raises(ValueError, match=r"do not overlap: 0\.0 % of the fixed (lung box|field of view) "
                                         r"\(x .* mm \(LPS\)\) lies inside the moving field of view "
                                         r"\(x .* mm \(LPS\)\) without an affine"):
        register(case.fixed, far, case.fixed_mask, model=None, device="cpu",
                 options=RegistrationOptions(affine=None, **FAST))
    # after an affine stage: the fixed box mapped outside the moving field of view, or barely inside
    grid = ImageGrid.from_sitk(case.fixed)
    axis = grid.direction_matrix[:, 0] * grid.extent[0]
    opts = RegistrationOptions(grid={"crop_to_lungs": False, "size": (32, 32, 32)})
    for shift, expect_error in ((2.0, True), (0.95, False)):
        affine = np.eye(4)
        affine[:3, 3] = shift * axis
        pp = preprocess_pair(case.fixed, case.fixed, options=opts.preprocess_options(), affine=affine)
        messages: list[str] = []
        if expect_error:
            with pytest.raises(ValueError, match=r"do not overlap.*after the affine pre-alignment; the fixed field of "
                                                 r"view maps to x .* mm \(LPS\)"):
                _check_overlap(pp, grid, grid, affine, opts, Progress(), messages)
        else:
            _check_overlap(pp, grid, grid, affine, opts, Progress(), messages)
            assert len(messages) == 1
            assert re.match(r"the images barely overlap: [3-7]\.\d % of the fixed field", messages[0]), messages[0]


@pytest.mark.parametrize("mirror", [False, True])
def test_folding_of_the_composition_without_composing(mirror: bool) -> None:
    """The field stage's folding fraction, from ``det(A_lin) det(I + grad u)``, equals the folding
    fraction of the composed map ``A (x + u(x))`` on an oblique anisotropic grid, with a field
    that folds in places and an affine map that may mirror."""
    from helpers import oblique_grid

    from MLVIRNETLib.core.deformation import Deformation
    from MLVIRNETLib.registration.affine import compose_affine
    from MLVIRNETLib.registration.pipeline import _folding_of_composition

    grid = oblique_grid(size=(16, 14, 12), spacing=(0.9, 1.3, 2.1))
    g = torch.Generator().manual_seed(5)
    phi = Deformation(grid, torch.randn((1, 3) + tuple(grid.size[::-1]), generator=g, dtype=torch.float64) * 0.8)
    a = np.eye(4)
    a[:3, :3] = rotation_matrix((5.0, -3.0, 8.0)) @ np.diag([1.05, 0.95, 1.1])
    a[:3, 3] = (2.0, -1.5, 4.0)
    if mirror:
        a[:3, 0] *= -1.0
    expected = float(compose_affine(a, phi).folding_fraction()[0])
    assert 0.02 < expected < 0.98
    assert _folding_of_composition(phi, a) == pytest.approx(expected, abs=1e-12)
    assert _folding_of_composition(phi, None) == pytest.approx(float(phi.folding_fraction()[0]), abs=1e-12)
