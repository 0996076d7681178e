"""The per-level U-Net of mlVIRNET: 3 resolution levels, 16 filters doubling, 3x3x3 conv + BatchNorm +
ReLU, average pooling, transposed convolutions and a 1x1x1 convolution to a displacement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def _cpu_autocast_enabled() -> bool:
    """Whether CPU autocast is on (``torch.is_autocast_enabled`` takes a device type since torch 2.4)."""
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4
        return bool(torch.is_autocast_cpu_enabled())


def _onednn_applies(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether :class:`Conv3d` may call oneDNN directly for ``x``: a batched ``(N, C, D, H, W)``
    float32 tensor on a CPU whose PyTorch has oneDNN enabled, outside autocast (which would
    otherwise choose the precision), zero padding given as numbers."""
    return (
        x.device.type == "cpu"
        and x.dim() == 5
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not _cpu_autocast_enabled()
    )


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that always uses oneDNN's convolution for float32 on a CPU.

    For a batch of one, PyTorch picks its slow native 3-D convolution (im2col + matrix product)
    whenever ``N * C * D * H`` of the input is at most 20480: in the shipped 96^3 cascade 18 of the
    36 convolutions, among them the 2-channel first one of every level net and most of those of
    the two coarser level nets. That kernel is several times slower than oneDNN's on these shapes
    and returns the default memory layout, which the next layers then convert back to channels-last. The gain on the
    shipped cascade is measured in docs/performance.md (``benchmarks/bench_cascade.py --pytorch-conv``). oneDNN's
    convolution is the one PyTorch itself runs for the other layers, with the same weights and
    autograd (``MkldnnConvolutionBackward``). Elsewhere (CUDA, other dtypes, autocast) this is
    ``nn.Conv3d``. Its state dict is ``nn.Conv3d``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn_applies(self, x):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return super().forward(x)


class ConvBlock(nn.Sequential):
    """3x3x3 convolution (padding 1, no bias: the batch norm has one) + BatchNorm3d + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


def _double_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvBlock(in_channels, out_channels), ConvBlock(out_channels, out_channels))


class MeanPool2(nn.Module):
    """2x2x2 average pooling with stride 2 (the same numbers as ``nn.AvgPool3d(2)``).

    Written as a sum of the 8 strided sub-grids: this keeps the ``channels_last_3d`` memory format
    of its input, where ``F.avg_pool3d`` on CPU converts to the default layout and is several times
    slower. Every spatial size must be even.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, :, 0::2, 0::2, 0::2]
        for dz, dy, dx in ((0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
            out = out + x[:, :, dz::2, dy::2, dx::2]
        return out * 0.125


def _pointwise_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 convolution as a matrix product over the channel axis (same result, any layout;
    with a channels-last input this avoids a layout conversion)."""
    y = F.linear(x.movedim(1, -1), conv.weight.flatten(1), conv.bias)
    return y.movedim(-1, 1)


def xavier_init(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases for every (transposed) convolution in ``module``;
    batch norms get weight 1 and bias 0. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class UNet3D(nn.Module):
    """The level net of mlVIRNET: a 3-D U-Net predicting a displacement in voxels.

    With ``depth`` resolution levels: on each level two :class:`ConvBlock` (3x3x3 conv + batch
    norm + ReLU); ``features`` filters on the first level, doubling after every 2x2x2 average
    pooling; on the way up a 2x2x2 transposed convolution with stride 2 halves the filters, its
    output is concatenated with the encoder features of that level (skip connection) and two
    more blocks follow. A final 1x1x1 convolution (with bias) gives ``out_channels`` values.

    For ``out_channels = 3`` the output is the displacement **in voxels of the input grid along its
    index axes, channel order x, y, z** -- channel 0 is along the W (last) array axis. Convert it
    to LPS mm with :meth:`Deformation.from_voxel_displacement`.

    Input ``(N, in_channels, D, H, W)`` with every spatial size divisible by ``2**(depth - 1)``;
    output ``(N, out_channels, D, H, W)``.

    With ``channels_last=True`` (default) the input is converted to the ``channels_last_3d``
    memory format, in which oneDNN runs the 3x3x3 convolutions faster on a CPU (docs/performance.md).
    The output
    then has channels-last strides too. This changes no weight and no value beyond float rounding.
    """

    def __init__(
        self, in_channels: int = 2, out_channels: int = 3, features: int = 16, depth: int = 3, channels_last: bool = True
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("features", features), ("depth", depth)):
            if int(v) != v or v < 1:
                raise ValueError(f"UNet3D {name} must be a positive integer, got {v!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.features = int(features)
        self.depth = int(depth)
        self.channels_last = bool(channels_last)
        widths = [self.features * 2**d for d in range(self.depth)]
        self.encoders = nn.ModuleList(
            _double_block(self.in_channels if d == 0 else widths[d - 1], widths[d]) for d in range(self.depth)
        )
        self.pool = MeanPool2()
        # ups[i] / decoders[i] bring level depth-1-i up to level depth-2-i
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(widths[d + 1], widths[d], kernel_size=2, stride=2) for d in reversed(range(self.depth - 1))
        )
        self.decoders = nn.ModuleList(_double_block(2 * widths[d], widths[d]) for d in reversed(range(self.depth - 1)))
        self.head = nn.Conv3d(widths[0], self.out_channels, kernel_size=1)
        xavier_init(self)

    @property
    def divisor(self) -> int:
        """Every spatial input size must be divisible by this."""
        return 2 ** (self.depth - 1)

    def zero_head(self) -> None:
        """Set the final 1x1x1 convolution to zero, so the net outputs exactly 0 (identity)."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"UNet3D expects input of shape (N, {self.in_channels}, D, H, W), got {shape}")
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"UNet3D of depth {self.depth} needs spatial sizes divisible by {self.divisor}, got {tuple(x.shape[2:])}"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        for d, enc in enumerate(self.encoders):
            if d > 0:
                x = self.pool(x)
            x = enc(x)
            skips.append(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return _pointwise_conv(self.head, x)

