"""The mlVIRNET networks: the per-level U-Net and the multilevel cascade (Algorithm 1 of the paper).

Level numbering: level 0 is the finest (the input resolution), level ``levels - 1`` the coarsest,
matching :func:`MLVIRNETLib.core.pyramid.build_pyramid`. The paper numbers the same levels 1..L.

Composition order. On level ``l`` the net sees the fixed image ``F_l`` and the moving image
``M_l`` already warped by everything the coarser levels found, ``W_l = M_l ∘ Y_{l+1}``, and
predicts a correction ``y_l`` with ``W_l(y_l(x)) ≈ F_l(x)``. Hence ``M_l(Y_{l+1}(y_l(x))) ≈ F_l(x)``
and the deformation found up to level ``l`` is

    Y_l = Y_{l+1} ∘ y_l = y_{L-1} ∘ y_{L-2} ∘ ... ∘ y_l,

with ``(a ∘ b)(x) = a(b(x))`` as in :mod:`MLVIRNETLib.core.deformation`: the finest correction acts
first on the fixed points and the coarsest last. (The paper writes the same map with the levels
numbered the other way round.) Every composition is evaluated exactly with
:func:`MLVIRNETLib.core.deformation.compose_all` on the grid where it is needed, never by resampling a
composed field from a coarser grid.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from ..core.deformation import Deformation, compose_all
from ..core.geometry import ImageGrid
from ..core.pyramid import build_pyramid
from ..core.sampling import check_volume
from .unet import ConvBlock, UNet3D


# ----------------------------------------------------------------------------------------------
# the multilevel cascade
# ----------------------------------------------------------------------------------------------
@dataclass
class MultilevelOutput:
    """Result of :meth:`MultilevelNet.forward` (all lists ordered coarse -> fine, active levels only).

    Attributes:
        deformation: the total ``Y = y_coarsest ∘ ... ∘ y_finest`` on the finest active grid,
            displacement ``(N, 3, D, H, W)`` LPS mm; for all levels active this is ``grid``.
        levels: the per-level corrections ``y_l``, each on its own level grid.
        warped: the moving image warped by ``deformation``, ``(N, 1, D, H, W)`` on the finest
            active grid (the moving pyramid image of that level).
        grids: the grids of ``levels``.
        fixed_levels: the fixed pyramid images on ``grids``.
        moving_levels: the moving pyramid images on ``grids`` (not warped).
        net_inputs: the moving image each level net saw, i.e. ``M_l`` warped by the composition of
            all coarser corrections (``M_l`` itself on the coarsest level).
    """

    deformation: Deformation
    levels: list[Deformation]
    warped: torch.Tensor
    grids: list[ImageGrid]
    fixed_levels: list[torch.Tensor] = field(default_factory=list)
    moving_levels: list[torch.Tensor] = field(default_factory=list)
    net_inputs: list[torch.Tensor] = field(default_factory=list)

    def composed(self, index: int) -> Deformation:
        """``Y`` up to active level ``index`` (0 = coarsest), exact on that level's grid."""
        return compose_all(self.levels[: index + 1], self.grids[index])


class MultilevelNet(nn.Module):
    """mlVIRNET: one :class:`UNet3D` per pyramid level, run coarse to fine (Algorithm 1).

    ``nets[l]`` is the net of level ``l`` (0 = finest). See the module docstring for the
    composition order. ``channels_last`` is passed to every :class:`UNet3D` (memory layout only).
    Levels marked frozen with :func:`freeze_levels` get no gradients and keep their batch norms in
    eval mode even when the whole module is in training mode.
    """

    def __init__(self, levels: int = 3, features: int = 16, depth: int = 3, channels_last: bool = True) -> None:
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise ValueError(f"MultilevelNet levels must be a positive integer, got {levels!r}")
        self.num_levels = int(levels)
        self.features = int(features)
        self.depth = int(depth)
        self.nets = nn.ModuleList(UNet3D(2, 3, features, depth, channels_last) for _ in range(self.num_levels))
        self.frozen: set[int] = set()

    @property
    def divisor(self) -> int:
        """Every input size must be divisible by this: ``2**(levels-1) * 2**(depth-1)``."""
        return 2 ** (self.num_levels - 1) * 2 ** (self.depth - 1)

    def train(self, mode: bool = True) -> "MultilevelNet":
        super().train(mode)
        for level in self.frozen:
            self.nets[level].eval()
        return self

    def check_inputs(self, fixed: torch.Tensor, moving: torch.Tensor, grid: ImageGrid) -> None:
        """Raise ``ValueError`` unless ``fixed`` and ``moving`` are ``(N, 1, D, H, W)`` on ``grid`` with
        sizes divisible by :attr:`divisor`."""
        for t, name in ((fixed, "fixed"), (moving, "moving")):
            if not isinstance(t, torch.Tensor) or t.ndim != 5 or t.shape[1] != 1:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} image must have shape (N, 1, D, H, W), got {shape}")
        if fixed.shape != moving.shape:
            raise ValueError(
                f"fixed shape {tuple(fixed.shape)} and moving shape {tuple(moving.shape)} differ; "
                "resample the moving image onto the fixed grid first"
            )
        check_volume(fixed, grid, "fixed")
        if any(s % self.divisor for s in grid.size):
            raise ValueError(
                f"grid size {grid.size} (x, y, z) must be divisible by {self.divisor} = 2**(levels-1) * 2**(depth-1) "
                f"for {self.num_levels} levels of depth-{self.depth} U-Nets"
            )

    def forward(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        grid: ImageGrid,
        active_levels: int | None = None,
        symmetric: bool = False,
    ) -> MultilevelOutput:
        """Register ``moving`` to ``fixed``.

        Args:
            fixed: ``(N, 1, D, H, W)`` fixed image on ``grid``.
            moving: ``(N, 1, D, H, W)`` moving image, already on the same ``grid``.
            grid: the common grid; sizes divisible by :attr:`divisor`.
            active_levels: run only the coarsest ``k`` levels (progressive training); the output
                then lives on level ``levels - k``'s grid. ``None`` runs all levels.
            symmetric: on every level run the net both ways, ``(F_l, W_l)`` and ``(W_l, F_l)``, in
                one batch, and keep :func:`symmetric_correction` of the two (inference; twice the
                convolutions). Identical inputs then give a correction of second order in the
                net's own bias instead of the bias itself.

        Returns:
            :class:`MultilevelOutput`; displacements are float32 even under autocast.

        Raises:
            ValueError: bad inputs (:meth:`check_inputs`), a bad ``active_levels``, or ``symmetric``
                in training mode.
        """
        self.check_inputs(fixed, moving, grid)
        if symmetric and self.training:
            raise ValueError("symmetric=True is for inference: in training mode the batch norms would mix both "
                             "directions into their statistics; call net.eval() first")
        k = self.num_levels if active_levels is None else active_levels
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_levels:
            raise ValueError(f"active_levels must be an integer in 1..{self.num_levels}, got {active_levels!r}")
        fixed_pyr = build_pyramid(fixed, grid, self.num_levels)
        moving_pyr = build_pyramid(moving, grid, self.num_levels)
        levels: list[Deformation] = []
        grids: list[ImageGrid] = []
        fixed_levels: list[torch.Tensor] = []
        moving_levels: list[torch.Tensor] = []
        net_inputs: list[torch.Tensor] = []
        for level in range(self.num_levels - 1, self.num_levels - 1 - k, -1):
            f_l, g_l = fixed_pyr[level]
            m_l = moving_pyr[level][0]
            # M_l warped by the exact composition of all coarser corrections (none on the coarsest)
            m_in = compose_all(levels, g_l).warp(m_l, g_l) if levels else m_l
            levels.append(self._correction(level, f_l, m_in.to(f_l.dtype), g_l, symmetric))
            grids.append(g_l)
            fixed_levels.append(f_l)
            moving_levels.append(m_l)
            net_inputs.append(m_in)
        total = compose_all(levels, grids[-1])
        return MultilevelOutput(
            deformation=total,
            levels=levels,
            warped=total.warp(moving_levels[-1], grids[-1]),
            grids=grids,
            fixed_levels=fixed_levels,
            moving_levels=moving_levels,
            net_inputs=net_inputs,
        )

    def _correction(
        self, level: int, fixed: torch.Tensor, warped: torch.Tensor, grid: ImageGrid, symmetric: bool
    ) -> Deformation:
        """The correction ``y_l`` of level ``level`` from ``F_l`` and ``W_l`` (both ``(N, 1, D, H, W)``
        on ``grid``), one way or both ways (see :meth:`forward`)."""
        pairs = [torch.cat([fixed, warped], dim=1)]
        if symmetric:
            pairs.append(torch.cat([warped, fixed], dim=1))
        u_vox = self.nets[level](torch.cat(pairs, dim=0)).float()
        n = fixed.shape[0]
        # the mm conversion and the round trip in float32 even under autocast: bf16 world
        # coordinates of 200 mm are 1 mm apart
        with _without_autocast(fixed.device):
            forward = Deformation.from_voxel_displacement(grid, u_vox[:n])
            if not symmetric:
                return forward
            return symmetric_correction(forward, Deformation.from_voxel_displacement(grid, u_vox[n:]))


def _without_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` (CPU and CUDA; other devices, such as the
    ``meta`` device of the device tests, have no autocast to turn off)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


SYMMETRIC_ITERATIONS = 3
"""Fixed-point iterations of :func:`symmetric_correction` in the cascade (each one sampling of the
backward field): on identical images each divides the residual by about ``2 / |∇b|``."""


def symmetric_correction(forward: Deformation, backward: Deformation,
                         iterations: int = SYMMETRIC_ITERATIONS) -> Deformation:
    """The average of a forward estimate and the inverse of a backward one.

    ``forward`` maps fixed to moving, ``x -> x + u(x)``; ``backward`` was estimated with the two
    images swapped, ``y -> y + w(y)``, so ideally ``w(x + u(x)) = -u(x)`` (it is the inverse). The
    result is ``x + d(x)`` with ``d`` the solution of ``d = ½ (u(x) - w(x + d))``: the forward
    displacement averaged with that of the inverse of ``backward``, both taken at the same point.
    The equation holds exactly for ``d = u`` when ``backward`` is the exact inverse of ``forward``,
    and for ``d = 0`` on identical images, where a net returns the same field ``b`` both ways.
    It is solved by fixed-point iteration from ``d = u``:

    * one iteration gives ``½ (u(x) - w(x + u(x)))``, the forward estimate averaged with the inverted
      backward one to second order; for identical images ``½ (b(x) - b(x + b(x)))``, of the order
      of ``|∇b| |b|`` instead of ``|b|``;
    * each further one multiplies the error of ``d`` by about ``½ |∇w|`` (``∇w`` is the Jacobian
      of the backward displacement); an exact inverse pair stays at ``u``.

    Args:
        forward: ``u`` on a grid, displacement ``(N, 3, D, H, W)`` LPS mm.
        backward: ``w`` on the same grid, same shape.
        iterations: fixed-point iterations, at least 1.

    Returns:
        the corrected deformation on the same grid.

    Raises:
        ValueError: the two are on different grids or have different shapes, or ``iterations < 1``.
    """
    if forward.grid != backward.grid or forward.displacement.shape != backward.displacement.shape:
        raise ValueError(
            f"symmetric_correction needs two deformations on one grid with one shape, got "
            f"{tuple(forward.displacement.shape)} on {forward.grid.size} and "
            f"{tuple(backward.displacement.shape)} on {backward.grid.size}"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    u, d = forward.displacement, forward.displacement
    for _ in range(iterations):
        # (w ∘ (x + d))(x) - x = d(x) + w(x + d(x))
        moved = compose_all([backward, Deformation(forward.grid, d)], forward.grid).displacement
        d = 0.5 * (u - (moved - d))
    return Deformation(forward.grid, d)


# ----------------------------------------------------------------------------------------------
# helpers for (progressive) training
# ----------------------------------------------------------------------------------------------
def _check_level(net: MultilevelNet, level: int, name: str = "level") -> int:
    if int(level) != level or not 0 <= level < net.num_levels:
        raise ValueError(f"{name} must be an integer in 0..{net.num_levels - 1} (0 = finest), got {level!r}")
    return int(level)


def freeze_levels(net: MultilevelNet, levels: Iterable[int], freeze: bool = True) -> None:
    """Stop (or with ``freeze=False`` restart) training of the given level nets.

    Frozen levels have ``requires_grad=False`` on every parameter and their batch norms stay in
    eval mode (running statistics are used and not updated).
    """
    for level in levels:
        level = _check_level(net, level)
        for p in net.nets[level].parameters():
            p.requires_grad_(not freeze)
        if freeze:
            net.frozen.add(level)
            net.nets[level].eval()
        else:
            net.frozen.discard(level)
            net.nets[level].train(net.training)


def init_level_from(net: MultilevelNet, src_level: int, dst_level: int) -> None:
    """Copy all weights and batch-norm statistics of level ``src_level`` into ``dst_level``
    (warm start of a newly activated finer level). The two nets stay independent copies."""
    src = _check_level(net, src_level, "src_level")
    dst = _check_level(net, dst_level, "dst_level")
    if src == dst:
        return
    state = {k: v.detach().clone() for k, v in net.nets[src].state_dict().items()}
    net.nets[dst].load_state_dict(state)


def fuse_batchnorm(net: MultilevelNet) -> MultilevelNet:
    """An inference copy of ``net`` in which every convolution absorbs its batch norm.

    The copy computes what ``net.eval()`` computes (batch norms with their running statistics),
    with one pass less over each feature map; ``net`` itself is not changed. The copy has conv
    biases instead of batch-norm entries, so save the original, not the copy.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(net).eval()
    for block in fused.modules():
        if isinstance(block, ConvBlock) and isinstance(block[1], nn.BatchNorm3d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class NetworkConfig:
    """Architecture of a :class:`MultilevelNet`.

    Attributes:
        levels: pyramid levels (one U-Net each).
        features: filters on the first U-Net level.
        depth: resolution levels inside each U-Net.
        input_size: the grid size ``(nx, ny, nz)`` images are resampled to before the network
            (x, y, z order); must be divisible by ``2**(levels-1) * 2**(depth-1)``.
    """

    levels: int = 3
    features: int = 16
    depth: int = 3
    input_size: tuple[int, int, int] = (160, 160, 160)

    def __post_init__(self) -> None:
        for name in ("levels", "features", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"NetworkConfig.{name} must be a positive integer, got {v!r}")
            setattr(self, name, int(v))
        size = tuple(int(s) for s in self.input_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"NetworkConfig.input_size must be 3 positive integers (nx, ny, nz), got {self.input_size!r}")
        div = self.divisor
        if any(s % div for s in size):
            raise ValueError(
                f"NetworkConfig.input_size {size} must be divisible by {div} = 2**(levels-1) * 2**(depth-1)"
            )
        self.input_size = size  # type: ignore[assignment]

    @property
    def divisor(self) -> int:
        return 2 ** (self.levels - 1) * 2 ** (self.depth - 1)

    def to_dict(self) -> dict:
        """Plain ``dict`` of ints and a list (safe for ``torch.save`` + ``weights_only`` loading)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"network config must be a dict, got {type(d).__name__}")
        known = {"levels", "features", "depth", "input_size"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown network config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ValueError(f"invalid network config {d!r}: {exc}") from exc


def build_network(config: NetworkConfig) -> MultilevelNet:
    """A freshly initialised :class:`MultilevelNet` for ``config``."""
    return MultilevelNet(levels=config.levels, features=config.features, depth=config.depth)


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (of those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def convolution_progress(net: nn.Module, progress: Callable[[float, str], None], message: str = "network") -> Iterator[None]:
    """Call ``progress(fraction, message)`` after each convolution of ``net``'s forward passes.

    ``fraction`` counts the convolutions run so far against all of ``net``'s convolutions, so one
    full forward pass goes from 0 to 1. The mlVIRNET cascade runs at most a few tenths of a second
    between two convolutions on a CPU, so a GUI driven by ``progress`` stays responsive, and a
    ``progress`` that raises (a cancel, :class:`~MLVIRNETLib.core.progress.RegistrationCancelled`)
    stops the forward pass at the next convolution. The hooks are removed on exit.
    """
    convolutions = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    total = max(1, len(convolutions))
    done = {"n": 0}

    def after(_module: nn.Module, _inputs, _output) -> None:
        done["n"] += 1
        progress(min(1.0, done["n"] / total), f"{message}: convolution {done['n']}/{total}")

    handles = [m.register_forward_hook(after) for m in convolutions]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
