"""registration.fixed_cache: several moving images registered to one fixed image with a
FixedImageCache give exactly the results of separate registrations, with the fixed image's share
computed once; a cache refuses another fixed image or mask. The pair is oblique, anisotropic and
off-origin, and a small network runs at its own input size (so that every cached stage runs)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import bundled_ct_3mm, rotation_matrix

from MLVIRNETLib.networks import model_files
from MLVIRNETLib.networks.cascade import NetworkConfig, build_network
from MLVIRNETLib.preprocessing import lungmask
from MLVIRNETLib.registration import options_for, register
from MLVIRNETLib.registration.fixed_cache import FixedImageCache
from MLVIRNETLib.registration.pipeline import load_registration_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = options_for("standard", refinement={"iterations": (6, 3)}, grid={"max_voxels": 32})


def _oblique(image: sitk.Image) -> sitk.Image:
    """``image`` with an oblique direction and a shifted origin (same voxels, anisotropic spacing)."""
    out = sitk.Image(image)
    out.SetDirection(tuple(rotation_matrix((12.0, -18.0, 30.0)).ravel()))
    out.SetOrigin((-40.5, 12.25, 90.0))
    out.SetSpacing((3.1, 2.7, 3.4))
    return out


@pytest.fixture(scope="module")
def pair_set(tmp_path_factory):
    fixed = _oblique(bundled_ct_3mm())
    movings = []
    for shift in ((4.0, -2.0, 3.0), (-3.0, 2.5, -5.0)):
        transform = sitk.TranslationTransform(3, shift)
        movings.append(sitk.Resample(fixed, fixed, transform, sitk.sitkLinear, -1024.0))
    torch.manual_seed(0)
    config = NetworkConfig(levels=2, features=4, depth=2, input_size=(16, 16, 24))
    path = model_files.save_model(tmp_path_factory.mktemp("model") / "tiny.pt", build_network(config).eval(),
                                  config, {})
    return fixed, movings, load_registration_model(path, "cpu")


def _same(a, b) -> None:
    assert torch.equal(a.deformation.displacement, b.deformation.displacement)
    assert np.array_equal(a.affine, b.affine)
    assert a.quality == b.quality and a.folding_fraction == b.folding_fraction
    assert a.network_grid == b.network_grid


def test_a_cache_gives_the_results_of_separate_registrations(pair_set, monkeypatch) -> None:
    fixed, movings, model = pair_set
    separate = [register(fixed, m, model=model, device="cpu", options=OPTIONS) for m in movings]
    calls = []
    real = lungmask.segment_lungs
    monkeypatch.setattr(lungmask, "segment_lungs", lambda image, *a, **k: calls.append(image) or real(image, *a, **k))
    cache = FixedImageCache()
    first = register(fixed, movings[0], model=model, device="cpu", options=OPTIONS, fixed_cache=cache)
    kept = len(cache)
    second = register(fixed, movings[1], model=model, device="cpu", options=OPTIONS, fixed_cache=cache)
    _same(first, separate[0])
    _same(second, separate[1])
    # the fixed lung mask, HU tensor, affine working copies, working-grid inputs, model input and
    # the refinement's pyramids
    assert kept >= 6 and len(cache) == kept
    assert calls == [fixed]  # the automatic fixed mask was made once
    # the kept values were not changed by the registrations that used them: a third run agrees
    _same(register(fixed, movings[0], model=model, device="cpu", options=OPTIONS, fixed_cache=cache), separate[0])


def test_other_settings_do_not_reuse_kept_values(pair_set) -> None:
    fixed, movings, model = pair_set
    cache = FixedImageCache()
    register(fixed, movings[0], model=model, device="cpu", options=OPTIONS, fixed_cache=cache)
    wider = options_for("standard", refinement={"iterations": (6, 3)}, grid={"max_voxels": 40, "crop_margin_mm": 20.0})
    cached = register(fixed, movings[0], model=model, device="cpu", options=wider, fixed_cache=cache)
    alone = register(fixed, movings[0], model=model, device="cpu", options=wider)
    _same(cached, alone)
    assert cached.network_grid.size != register(fixed, movings[0], model=model, device="cpu",
                                                options=OPTIONS).network_grid.size


def test_a_cache_serves_one_fixed_image_and_mask(pair_set) -> None:
    fixed, movings, model = pair_set
    quick = options_for("fast", grid={"max_voxels": 16})
    cache = FixedImageCache()
    register(fixed, movings[0], model=model, device="cpu", options=quick, fixed_cache=cache)
    with pytest.raises(ValueError, match="another fixed image"):
        register(movings[0], movings[1], model=model, device="cpu", options=quick, fixed_cache=cache)
    mask = lungmask.segment_lungs(fixed)
    with pytest.raises(ValueError, match="another fixed mask"):
        register(fixed, movings[1], mask, model=model, device="cpu", options=quick, fixed_cache=cache)
