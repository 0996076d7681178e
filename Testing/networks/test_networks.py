"""Tests of MLVIRNETLib.networks: shapes, identity, exact composition, input checks, training helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MLVIRNETLib.core.deformation import Deformation, compose_all
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.core.sampling import resample_to_grid
from MLVIRNETLib.networks.cascade import (
    MultilevelNet,
    NetworkConfig,
    build_network,
    freeze_levels,
    fuse_batchnorm,
    init_level_from,
    parameter_count,
    symmetric_correction,
)
from MLVIRNETLib.networks.unet import UNet3D, xavier_init


def _oblique_grid(size=(32, 32, 16)) -> ImageGrid:
    axis = np.array([1.0, -2.0, 2.0]) / 3.0
    angle = 0.35
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return ImageGrid(size, (1.1, 0.8, 2.5), (-60.0, 25.0, -140.0), tuple(rot.ravel()))


def _images(grid: ImageGrid, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, *grid.shape_zyx)
    f = torch.nn.functional.avg_pool3d(torch.rand(shape, generator=g), 3, 1, 1)
    m = torch.nn.functional.avg_pool3d(torch.rand(shape, generator=g), 3, 1, 1)
    return f, m


def _small_net(seed: int = 0, levels: int = 3) -> MultilevelNet:
    torch.manual_seed(seed)
    net = MultilevelNet(levels=levels, features=4, depth=3)
    # keep displacements of a few mm so compositions are non-trivial but stay inside the image
    for sub in net.nets:
        with torch.no_grad():
            sub.head.weight.mul_(0.05)
            sub.head.bias.uniform_(-0.3, 0.3)
    return net.eval()


# ----------------------------------------------------------------------------------------------
# UNet3D
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_unet_output_shape_and_width(depth):
    net = UNet3D(in_channels=2, out_channels=3, features=4, depth=depth).eval()
    x = torch.rand(2, 2, 8, 16, 24)
    assert net(x).shape == (2, 3, 8, 16, 24)
    assert net.encoders[-1][1][0].out_channels == 4 * 2 ** (depth - 1)
    assert len(net.ups) == depth - 1


def test_unet_default_matches_paper_layout():
    net = UNet3D()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in net.encoders.modules() if isinstance(c, torch.nn.Conv3d)] == [16, 16, 32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3, 3) for c in convs[:-1]) and convs[-1].kernel_size == (1, 1, 1)
    assert [u.kernel_size for u in net.ups] == [(2, 2, 2)] * 2 and [u.stride for u in net.ups] == [(2, 2, 2)] * 2
    x = torch.rand(1, 16, 6, 8, 10)
    torch.testing.assert_close(net.pool(x), torch.nn.functional.avg_pool3d(x, 2), rtol=0, atol=1e-6)
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules()) == 10
    assert net.head.out_channels == 3


@pytest.mark.parametrize("threads", [1, 2])
def test_channels_last_gives_same_output_as_default_layout(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # oneDNN picks different kernels for 1 and 2 threads
    try:
        torch.manual_seed(0)
        a = UNet3D(features=4, channels_last=True).eval()
        b = UNet3D(features=4, channels_last=False).eval()
        b.load_state_dict(a.state_dict())
        x = torch.rand(1, 2, 16, 8, 12)
        with torch.no_grad():
            ya, yb = a(x), b(x)
        assert ya.is_contiguous(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(old)


def _conv_op_names(module: torch.nn.Module, x: torch.Tensor) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    return {e.key for e in prof.key_averages() if "conv" in e.key}


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")

LAYERS = {  # nn.Conv3d keyword arguments beside the channels
    "block": {"kernel_size": 3, "padding": 1, "bias": False},  # ConvBlock's convolution
    "biased": {"kernel_size": 3, "padding": 1},
    "strided, dilated, uneven padding, groups": {"kernel_size": 3, "stride": (2, 1, 2), "dilation": (1, 2, 1),
                                                 "padding": (1, 2, 0), "groups": 2},
}


@needs_onednn
@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("shape, out_channels", [((1, 2, 24, 24, 24), 16), ((1, 32, 12, 12, 12), 32), ((2, 8, 8, 6, 10), 8)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv3d_runs_onednn_where_pytorch_picks_its_slow_kernel(shape, out_channels, channels_last, layer):
    """Conv3d equals nn.Conv3d (values, layout, gradients) and never runs the slow native kernel,
    which nn.Conv3d picks for a batch of one with N*C*D*H <= 20480 (the first two shapes)."""
    from MLVIRNETLib.networks.unet import Conv3d

    torch.manual_seed(1)
    ours = Conv3d(shape[1], out_channels, **LAYERS[layer])
    ref = torch.nn.Conv3d(shape[1], out_channels, **LAYERS[layer])
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert ya.is_contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn(ya.shape)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        ops = _conv_op_names(ours, x)
        ref_ops = _conv_op_names(ref, x)
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops, ops
    if shape[0] == 1 and layer != "strided, dilated, uneven padding, groups":
        # the premise of Conv3d: PyTorch itself takes the slow kernel here (if a PyTorch release
        # changes its rule, this tells that Conv3d may no longer be needed)
        assert "aten::slow_conv3d_forward" in ref_ops, ref_ops


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch.backends.mkldnn.flags itself
@pytest.mark.parametrize("case", ["reflect padding", "padding 'same'", "oneDNN disabled", "unbatched input"])
def test_conv3d_leaves_what_onednn_does_not_cover_to_pytorch(case):
    """Padding modes other than zeros, string padding, a PyTorch with oneDNN switched off and an
    unbatched (C, D, H, W) input all give exactly nn.Conv3d's result."""
    from MLVIRNETLib.networks.unet import Conv3d

    kwargs = {"kernel_size": 3, "padding": 1}
    if case == "reflect padding":
        kwargs["padding_mode"] = "reflect"
    if case == "padding 'same'":
        kwargs["padding"] = "same"
    torch.manual_seed(3)
    ours, ref = Conv3d(2, 4, **kwargs), torch.nn.Conv3d(2, 4, **kwargs)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 5, 7) if case == "unbatched input" else torch.randn(1, 2, 6, 5, 7)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=case != "oneDNN disabled"):
        ya, yb = ours(x), ref(x)
        ops = _conv_op_names(ours, x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    assert "aten::mkldnn_convolution" not in ops or case == "unbatched input", ops


def test_conv3d_leaves_autocast_to_pytorch():
    """Under CPU autocast the convolution is nn.Conv3d's, in the autocast precision."""
    from MLVIRNETLib.networks.unet import Conv3d

    torch.manual_seed(2)
    ours = Conv3d(2, 4, kernel_size=3, padding=1)
    ref = torch.nn.Conv3d(2, 4, kernel_size=3, padding=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 2, 4, 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = ours(x), ref(x)
    assert ya.dtype == yb.dtype == torch.bfloat16
    torch.testing.assert_close(ya, yb)


def test_unet_blocks_use_conv3d_and_keep_state_dict_keys():
    from MLVIRNETLib.networks.unet import Conv3d

    net = UNet3D(features=4)
    blocks = [m[0] for m in net.modules() if type(m).__name__ == "ConvBlock"]
    assert len(blocks) == 10 and all(type(c) is Conv3d for c in blocks)
    assert "encoders.0.0.0.weight" in net.state_dict() and "encoders.0.0.1.running_mean" in net.state_dict()
    fused = [m[0] for m in fuse_batchnorm(MultilevelNet(levels=1, features=4, depth=2)).modules()
             if type(m).__name__ == "ConvBlock"]
    assert len(fused) == 6 and all(type(c) is Conv3d for c in fused)


def test_xavier_init_bounds_and_zero_bias():
    net = UNet3D(features=8)
    net.head.bias.data.fill_(1.0)
    xavier_init(net)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            fan_in = m.weight.shape[1] * m.weight[0, 0].numel()
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
            w_max = float(m.weight.detach().abs().max())
            assert 0.5 * bound < w_max <= bound + 1e-7
            if m.bias is not None:
                assert float(m.bias.detach().abs().max()) == 0.0


def test_unet_bad_input():
    net = UNet3D(features=4)
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8, 8\)"):
        net(torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"divisible by 4.*\(8, 8, 6\)"):
        net(torch.rand(1, 2, 8, 8, 6))


# ----------------------------------------------------------------------------------------------
# MultilevelNet
# ----------------------------------------------------------------------------------------------
def test_multilevel_output_shapes_and_grids():
    grid = _oblique_grid()
    f, m = _images(grid, batch=2)
    net = _small_net()
    with torch.no_grad():
        out = net(f, m, grid)
    assert out.deformation.grid == grid
    assert out.deformation.displacement.shape == (2, 3, *grid.shape_zyx)
    assert out.warped.shape == f.shape
    assert [g.size for g in out.grids] == [(8, 8, 4), (16, 16, 8), (32, 32, 16)]
    assert out.grids[0].is_close(grid.downsampled(2).downsampled(2), tol_mm=1e-9)
    for d, g in zip(out.levels, out.grids):
        assert d.grid == g and d.displacement.shape == (2, 3, *g.shape_zyx)
    assert len(out.net_inputs) == 3 and out.net_inputs[0] is out.moving_levels[0]


def test_zero_heads_give_identity():
    grid = _oblique_grid()
    f, m = _images(grid)
    net = _small_net()
    for sub in net.nets:
        sub.zero_head()
    with torch.no_grad():
        out = net(f, m, grid)
    assert float(out.deformation.displacement.abs().max()) == 0.0
    for d in out.levels:
        assert float(d.displacement.abs().max()) == 0.0
    torch.testing.assert_close(out.warped, resample_to_grid(m, grid, grid), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.warped, m, rtol=0, atol=1e-5)


def test_total_is_exact_composition_of_levels():
    grid = _oblique_grid()
    f, m = _images(grid, seed=1)
    net = _small_net(seed=1)
    with torch.no_grad():
        out = net(f, m, grid)
    u = out.deformation.displacement
    assert 0.3 < float(u.abs().max()) < 20.0  # a real, moderate deformation
    # explicit composition y_coarse(y_mid(y_fine(x))) at the fine voxel centres
    x = grid.world_points(dtype=torch.float32)[None]
    y = x
    for d in reversed(out.levels):
        y = d.map_points(y)
    torch.testing.assert_close(u, (y - x).movedim(-1, 1), rtol=0, atol=1e-4)
    torch.testing.assert_close(u, compose_all(out.levels, grid).displacement, rtol=0, atol=0)
    torch.testing.assert_close(out.composed(2).displacement, u, rtol=0, atol=0)
    assert out.composed(0).grid == out.grids[0]
    # warped image = moving sampled at the composed points
    torch.testing.assert_close(out.warped, out.deformation.warp(m, grid), rtol=0, atol=0)
    # each finer net saw the moving image warped by the exact composition of the coarser levels
    for i in (1, 2):
        expected = compose_all(out.levels[:i], out.grids[i]).warp(out.moving_levels[i], out.grids[i])
        torch.testing.assert_close(out.net_inputs[i], expected, rtol=0, atol=0)
    # the composition order matters: the reverse order gives a different field
    reverse = compose_all(out.levels[::-1], grid).displacement
    assert float((reverse - u).abs().max()) > 1e-3


def _linear_field(grid: ImageGrid, matrix: np.ndarray, centre: np.ndarray) -> Deformation:
    """``u(x) = A (x - c)`` on ``grid`` (float64 points, float32 field)."""
    a, c = torch.as_tensor(matrix), torch.as_tensor(centre)
    return Deformation.from_function(grid, lambda x: (x - c) @ a.T)


def _grid_centre(grid: ImageGrid) -> np.ndarray:
    return grid.world_points(dtype=torch.float64).mean(dim=(0, 1, 2)).numpy()


@pytest.mark.parametrize("scales", [(0.85, 0.85, 0.85), (0.95, 0.95, 0.95), (0.8, 0.9, 0.97)])
def test_symmetric_correction_keeps_a_forward_estimate_whose_inverse_is_the_backward_one(scales):
    """A scaling about the grid centre, ``x -> c + S (x - c)`` (isotropic or not), and its exact
    inverse: the average of the forward estimate and the inverted backward one is the forward
    estimate (a linear field is sampled exactly, and a contraction keeps ``x + u(x)`` inside the grid)."""
    grid = _oblique_grid()
    c = _grid_centre(grid)
    scale = np.diag(scales)
    forward = _linear_field(grid, scale - np.eye(3), c)
    backward = _linear_field(grid, np.linalg.inv(scale) - np.eye(3), c)
    result = symmetric_correction(forward, backward)
    assert result.grid == grid
    torch.testing.assert_close(result.displacement, forward.displacement, rtol=0, atol=1e-4)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_symmetric_correction_of_one_bias_both_ways_shrinks_with_every_iteration(iterations):
    """Identical images: a net that returns the same ``b(x) = A (x - c)`` both ways. The fixed
    point is 0; from ``d = b`` each iteration ``d <- ½ (b(x) - b(x + d))`` gives ``-½ A d``, so
    after ``K`` of them ``d = (-½)^K A^(K+1) (x - c)`` (one: ``½ (b(x) - b(x + b(x))) = -½ A² (x - c)``).
    A constant bias cancels exactly."""
    grid = _oblique_grid()
    c = _grid_centre(grid)
    a = np.array([[0.02, -0.01, 0.03], [0.00, -0.04, 0.01], [0.02, 0.01, 0.05]])
    bias = _linear_field(grid, a, c)
    expected = _linear_field(grid, (-0.5) ** iterations * np.linalg.matrix_power(a, iterations + 1), c)
    result = symmetric_correction(bias, bias, iterations=iterations)
    assert float(bias.displacement.abs().max()) < 2.0  # so x + d(x) of the inner voxels stays in the grid
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    torch.testing.assert_close(result.displacement[inner], expected.displacement[inner], rtol=0, atol=1e-4)
    assert float(result.displacement.abs().max()) < 0.05 ** iterations * float(bias.displacement.abs().max())
    shift = Deformation(grid, torch.tensor([1.5, -2.0, 0.7]).view(1, 3, 1, 1, 1).expand(1, 3, *grid.shape_zyx).clone())
    assert float(symmetric_correction(shift, shift, iterations=iterations).displacement.abs().max()) < 1e-5


def test_symmetric_correction_refuses_two_grids():
    grid = _oblique_grid()
    other = ImageGrid((16, 16, 8), grid.spacing, grid.origin, grid.direction)
    with pytest.raises(ValueError, match="one grid"):
        symmetric_correction(Deformation.identity(grid), Deformation.identity(other))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="iterations"):
            symmetric_correction(Deformation.identity(grid), Deformation.identity(grid), iterations=bad)


def test_symmetric_cascade_averages_both_directions_on_every_level():
    """Every level is symmetric_correction(net(F_l, W_l), net(W_l, F_l)) with the channels in that
    order, W_l the moving image warped by the coarser levels; a batch of two pairs gives what each
    pair gives alone; identical images move far less than without the symmetric mode; training mode
    is refused."""
    grid = _oblique_grid()
    f, m = _images(grid, batch=2, seed=3)
    net = _small_net(seed=3)
    with torch.no_grad():
        out = net(f, m, grid, symmetric=True)
        for i, level in enumerate((2, 1, 0)):
            f_l, g_l, w_l = out.fixed_levels[i], out.grids[i], out.net_inputs[i]
            forward = Deformation.from_voxel_displacement(g_l, net.nets[level](torch.cat([f_l, w_l], 1)))
            backward = Deformation.from_voxel_displacement(g_l, net.nets[level](torch.cat([w_l, f_l], 1)))
            torch.testing.assert_close(out.levels[i].displacement,
                                       symmetric_correction(forward, backward).displacement, rtol=0, atol=1e-5)
        for i in range(2):
            alone = net(f[i:i + 1], m[i:i + 1], grid, symmetric=True)
            torch.testing.assert_close(alone.deformation.displacement, out.deformation.displacement[i:i + 1],
                                       rtol=0, atol=1e-4)
        plain = net(f[:1], f[:1], grid).deformation.displacement.abs().max()
        symmetric = net(f[:1], f[:1], grid, symmetric=True).deformation.displacement.abs().max()
    assert float(plain) > 0.3
    assert float(symmetric) < 0.1 * float(plain)
    with pytest.raises(ValueError, match="inference"):
        net.train()(f, m, grid, symmetric=True)


@pytest.mark.parametrize("symmetric", [False, True])
def test_levels_are_float32_millimetres_under_autocast(symmetric):
    """Under bf16 autocast the net runs in bf16, but every level's displacement in mm (and the
    round trip of the symmetric mode) is float32 and agrees with the float32 run to the net's
    own bf16 error."""
    grid = _oblique_grid()
    f, m = _images(grid, seed=5)
    net = _small_net(seed=5)
    with torch.no_grad():
        reference = net(f, m, grid, symmetric=symmetric)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(f, m, grid, symmetric=symmetric)
    for a, b in zip(reference.levels, low.levels):
        assert b.displacement.dtype == torch.float32
        assert float((a.displacement - b.displacement).abs().max()) < 0.1


def test_level_net_output_is_voxels_along_index_axes():
    grid = _oblique_grid()
    f, m = _images(grid)
    net = _small_net(levels=1)
    head = net.nets[0].head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))  # one voxel along x (W axis)
        out = net(f, m, grid)
    expected = torch.as_tensor(grid.direction_matrix[:, 0] * grid.spacing[0], dtype=torch.float32)
    torch.testing.assert_close(out.deformation.displacement[0, :, 3, 5, 7], expected, rtol=0, atol=1e-4)
    # warping by one voxel along x shifts the W axis by one
    torch.testing.assert_close(out.warped[..., :-1], m[..., 1:], rtol=0, atol=1e-5)


def test_active_levels_runs_coarsest_only():
    grid = _oblique_grid()
    f, m = _images(grid)
    net = _small_net()
    with torch.no_grad():
        full = net(f, m, grid)
        one = net(f, m, grid, active_levels=1)
        two = net(f, m, grid, active_levels=2)
    assert len(one.levels) == 1 and one.deformation.grid == full.grids[0]
    assert two.deformation.grid == full.grids[1] and two.warped.shape == (1, 1, 8, 16, 16)
    torch.testing.assert_close(one.levels[0].displacement, full.levels[0].displacement)
    torch.testing.assert_close(two.levels[1].displacement, full.levels[1].displacement)
    with pytest.raises(ValueError, match="active_levels"):
        net(f, m, grid, active_levels=4)


def test_multilevel_bad_inputs_name_shapes():
    grid = _oblique_grid()
    f, m = _images(grid)
    net = _small_net()
    with pytest.raises(ValueError, match=r"\(1, 16, 32, 32\)"):
        net(f[0], m, grid)
    with pytest.raises(ValueError, match=r"\(1, 2, 16, 32, 32\)"):
        net(torch.cat([f, f], 1), m, grid)
    with pytest.raises(ValueError, match=r"\(1, 1, 16, 32, 32\).*\(1, 1, 16, 32, 16\)"):
        net(f, m[..., :16], grid)
    with pytest.raises(ValueError, match=r"16, 32, 32\).*grid.*32, 32, 32\)"):
        net(f, m, ImageGrid((32, 32, 32)))
    bad = ImageGrid((32, 24, 16))
    fb = torch.zeros(1, 1, *bad.shape_zyx)
    with pytest.raises(ValueError, match=r"\(32, 24, 16\).*divisible by 16"):
        net(fb, fb, bad)


def test_init_level_from_copies_weights_independently():
    net = _small_net()
    net.nets[0].encoders[0][0][1].running_mean.fill_(0.5)
    init_level_from(net, 0, 1)
    for (k, a), b in zip(net.nets[0].state_dict().items(), net.nets[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with torch.no_grad():
        net.nets[0].head.bias.add_(1.0)
    assert not torch.equal(net.nets[0].head.bias, net.nets[1].head.bias)
    with pytest.raises(ValueError, match="dst_level"):
        init_level_from(net, 0, 3)


def test_frozen_levels_get_no_gradients_and_keep_bn_stats():
    grid = _oblique_grid()
    f, m = _images(grid)
    net = _small_net().train()
    freeze_levels(net, [2])
    assert not net.nets[2].training and net.nets[1].training
    net.train()
    assert not net.nets[2].training
    stats = net.nets[2].encoders[0][0][1].running_mean.clone()
    out = net(f, m, grid)
    out.warped.mean().backward()
    assert all(p.grad is None for p in net.nets[2].parameters())
    assert all(p.grad is not None for p in net.nets[0].parameters())
    assert float(net.nets[0].head.weight.grad.abs().sum()) > 0
    torch.testing.assert_close(net.nets[2].encoders[0][0][1].running_mean, stats, rtol=0, atol=0)
    assert parameter_count(net, trainable_only=True) == 2 * parameter_count(net.nets[0])
    freeze_levels(net, [2], freeze=False)
    assert net.nets[2].training and parameter_count(net, trainable_only=True) == parameter_count(net)


def test_network_config_roundtrip_and_validation():
    cfg = NetworkConfig(levels=2, features=8, depth=2, input_size=(64, 32, 32))
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    net = build_network(cfg)
    assert net.num_levels == 2 and net.nets[0].features == 8 and net.divisor == 4
    assert NetworkConfig().input_size == (160, 160, 160)
    with pytest.raises(ValueError, match=r"\(160, 160, 100\).*16"):
        NetworkConfig(input_size=(160, 160, 100))
    with pytest.raises(ValueError, match="unknown"):
        NetworkConfig.from_dict({"levels": 3, "width": 4})


def test_fuse_batchnorm_matches_eval_network():
    grid = _oblique_grid()
    f, m = _images(grid, seed=3)
    net = _small_net(seed=3)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    fused = fuse_batchnorm(net)
    assert not any(isinstance(mod, torch.nn.BatchNorm3d) for mod in fused.modules())
    assert any(isinstance(mod, torch.nn.BatchNorm3d) for mod in net.modules())  # original untouched
    with torch.no_grad():
        a = net(f, m, grid)
        b = fused(f, m, grid)
    assert float(a.deformation.displacement.abs().max()) > 0.3
    torch.testing.assert_close(b.deformation.displacement, a.deformation.displacement, rtol=0, atol=1e-4)
