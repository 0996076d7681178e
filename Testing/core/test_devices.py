"""Tests of MLVIRNETLib.core.devices, and that every stage keeps its tensors on the input's device.

CI has no GPU. PyTorch's ``meta`` device (shapes and dtypes, no data) stands in for one: an
operation that mixes a meta tensor with a CPU tensor raises, exactly as mixing a CUDA tensor with
a CPU tensor does, so a constant created without ``device=`` shows up here. What the meta device
cannot do is read a value (``float(t)``, ``t.item()``); where a stage reads one, the test checks
that it got that far (see ``_reads_a_value``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import rotation_matrix

from MLVIRNETLib.core.deformation import Deformation
from MLVIRNETLib.core.devices import resolve_device, synchronize
from MLVIRNETLib.core.filters import resample_antialiased
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.pyramid import build_pyramid
from MLVIRNETLib.losses import LossWeights, registration_loss
from MLVIRNETLib.networks.cascade import MultilevelNet
from MLVIRNETLib.preprocessing.pair import PreprocessOptions, normalize_ct, preprocess_pair
from MLVIRNETLib.registration.affine import _AffineModel, _downsample, _Level, _loss
from MLVIRNETLib.registration.refine import RefineOptions, refine
from MLVIRNETLib.registration.warp import full_field
from MLVIRNETLib.simulation.breathing import rigid_matrix
from MLVIRNETLib.training.config import TrainConfig, config_from_dict
from MLVIRNETLib.training.pairs import TrainingPair
from MLVIRNETLib.training.trainer import pair_loss

META = torch.device("meta")


def _grid(size=(20, 18, 16)) -> ImageGrid:
    """Anisotropic, oblique, off-origin."""
    return ImageGrid(size, (2.0, 1.5, 3.0), (-10.0, 5.0, 30.0), tuple(rotation_matrix((5.0, -4.0, 8.0)).ravel()))


def _zeros(grid: ImageGrid, channels: int = 1) -> torch.Tensor:
    return torch.zeros((1, channels, *grid.shape_zyx), device=META)


def _affine(grid: ImageGrid) -> np.ndarray:
    centre = grid.index_to_world((np.asarray(grid.size) - 1) / 2.0)
    return rigid_matrix((3.0, -2.0, 1.0), (5.0, -4.0, 2.0), centre)


# -- resolve_device ----------------------------------------------------------------------------
def test_resolve_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    for bad in ("gpu", "tpu", "", 3):
        with pytest.raises(ValueError, match="device must be one of"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_request_without_a_gpu_names_the_problem() -> None:
    for name in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            resolve_device(name)


def test_mixing_meta_and_cpu_raises_like_cuda_and_cpu() -> None:
    """The premise of the tests below."""
    with pytest.raises(RuntimeError, match="device"):
        torch.eye(3) + torch.zeros(3, 3, device=META)
    synchronize(torch.device("cpu"))  # a no-op off CUDA
    synchronize(META)


# -- stages on the meta device --------------------------------------------------------------------
def test_network_forward_and_composed_levels_stay_on_the_device() -> None:
    grid = _grid((32, 32, 32))
    net = MultilevelNet(levels=3, features=4, depth=2).to(META).eval()
    with torch.inference_mode():
        out = net(_zeros(grid), _zeros(grid), grid)
        composed = [out.composed(i) for i in range(len(out.levels))]
    assert out.deformation.displacement.device == META
    assert out.deformation.displacement.shape == (1, 3, 32, 32, 32)
    assert all(c.displacement.device == META for c in composed)


def test_preprocessing_with_an_affine_stays_on_the_device() -> None:
    g = _grid()
    pp = preprocess_pair((_zeros(g), g), (_zeros(g), g), _zeros(g), _zeros(g),
                         PreprocessOptions(network_size=(16, 16, 16), crop_to_lungs=False), affine=_affine(g), device=META)
    for t in (pp.fixed, pp.moving, pp.fixed_mask, pp.moving_mask, pp.moving_valid):
        assert t.device == META and t.shape == (1, 1, 16, 16, 16)
    small = resample_antialiased(_zeros(g), g, g.resized((8, 8, 8)), affine=_affine(g))
    assert small.device == META and small.shape == (1, 1, 8, 8, 8)


def test_deformation_operations_stay_on_the_device() -> None:
    g = _grid()
    coarse = g.resized((8, 8, 8))
    phi = Deformation(coarse, _zeros(coarse, 3))
    assert phi.compose(phi).displacement.device == META
    assert phi.on_grid(g).displacement.shape == (1, 3, *g.shape_zyx)
    assert phi.folding_fraction().device == META
    assert phi.map_points(torch.zeros(5, 3, device=META)).device == META
    full = full_field(phi, _affine(g), g, slab_voxels=1000, device=META)  # several slabs
    assert full.displacement.device == META and full.grid == g


def test_loss_and_gradient_stay_on_the_device() -> None:
    g = _grid()
    u = _zeros(g, 3).requires_grad_(True)
    loss, terms = registration_loss(_zeros(g), _zeros(g), u, g.spacing, LossWeights(1.0, 1.0, 0.01), _zeros(g), _zeros(g))
    loss.backward()
    assert u.grad.device == META and all(t.device == META for t in terms.values())
    even = _grid((16, 12, 8))
    assert all(level.device == META for level, _ in build_pyramid(_zeros(even), even, 3))


def test_affine_objective_and_gradient_stay_on_the_device() -> None:
    g = _grid()
    f, fg = _downsample(_zeros(g), g, 4.0)
    m, mg = _downsample(_zeros(g), g, 4.0)
    level = _Level(4.0, normalize_ct(f), fg, fg.world_points(device=META, dtype=torch.float32), torch.ones_like(f),
                   normalize_ct(m), mg)
    centre = g.index_to_world((np.asarray(g.size) - 1) / 2.0)
    model = _AffineModel(centre, np.array([2.0, 0.0, -1.0]), max_stretch=0.1).to(META)
    assert model.matrix().device == META and model.matrix().shape == (4, 4)
    _loss(model, level).backward()
    assert all(p.grad is not None and p.grad.device == META for p in (model.rot, model.trans, model.stretch))


def _reads_a_value(exc: pytest.ExceptionInfo, where: str) -> bool:
    """The meta device stopped at a value read in the source line containing ``where``."""
    lines = [str(entry.statement) for entry in exc.traceback]
    return "cannot be called on meta tensors" in str(exc.value) and any(where in line for line in lines)


def test_refinement_runs_every_step_on_the_device() -> None:
    """Every Adam step of every level runs on the meta device; the first value read is the per-level
    loss report after the optimisation."""
    g = _grid((16, 16, 16))
    with pytest.raises(RuntimeError) as exc:
        refine(_zeros(g), _zeros(g), g, options=RefineOptions(optimizer="adam", iterations=2),
               fixed_mask=_zeros(g), moving_mask=_zeros(g), moving_valid=torch.ones((1, 1, 16, 16, 16), device=META))
    assert _reads_a_value(exc, "losses.append"), exc.value


def test_training_step_stays_on_the_device() -> None:
    config: TrainConfig = config_from_dict({
        "network": {"levels": 2, "features": 4, "depth": 2, "input_size": [16, 16, 16]},
        "data": {"train": [{"kind": "synthetic", "images": ["unused.nii.gz"]}]},
    })
    grid = _grid((16, 16, 16))
    net = MultilevelNet(levels=2, features=4, depth=2).to(META)
    pair = TrainingPair(grid, _zeros(grid), _zeros(grid), _zeros(grid, 2), _zeros(grid, 2))
    for active in (1, 2):
        net.zero_grad()
        loss, terms = pair_loss(net, pair, config, active)
        loss.backward()
        assert all(t.device == META for t in terms.values())
        finest_active = net.nets[net.num_levels - active]  # nets[-1] is the coarsest level
        assert all(p.grad is not None and p.grad.device == META for p in finest_active.parameters())
