"""Validation metrics of a (partly trained) cascade on fixed validation pairs.

For each :class:`~MLVIRNETLib.training.pairs.TrainingPair` the net's deformation (of the active
levels) is evaluated on the pair's network grid and compared with what the pair knows:

* ``error_mm`` / ``initial_error_mm``: mean ``|u_pred - u_true|`` / ``|u_true|`` over the fixed
  lung voxels (synthetic pairs, dense truth); a dense version of landmark TRE;
* ``tre_mm`` / ``initial_tre_mm``: mean landmark distance ``|y(p_F) - p_M|`` / ``|p_F - p_M|``;
* ``dice``: mean Dice of the fixed label channels and the warped moving ones (threshold 0.5);
* ``folding_percent``: per cent of fixed lung voxels (all voxels without masks) with ``det J <= 0``.

Each metric is averaged over the pairs that have what it needs; absent metrics are left out.
"""

from __future__ import annotations

import numpy as np
import torch

from ..networks.cascade import MultilevelNet
from .pairs import TrainingPair

__all__ = ["validate", "pair_metrics"]


def pair_metrics(net: MultilevelNet, pair: TrainingPair, active_levels: int | None = None) -> dict[str, float]:
    """Metrics of one pair (see the module docstring); ``net`` is used as it is (call ``eval()`` first)."""
    device = next(net.parameters()).device
    p = pair.to(device)
    out = net(p.fixed, p.moving, p.grid, active_levels=active_levels)
    y = out.deformation.on_grid(p.grid)
    lung = None
    metrics: dict[str, float] = {}
    if p.fixed_masks is not None:
        lung = p.fixed_masks.sum(dim=1, keepdim=True) > 0.5
        if not bool(lung.any()):
            lung = None
    if p.truth is not None:
        truth = p.truth.on_grid(p.grid).displacement
        err = (y.displacement - truth).norm(dim=1, keepdim=True)
        init = truth.norm(dim=1, keepdim=True)
        sel = lung if lung is not None else torch.ones_like(err, dtype=torch.bool)
        metrics["error_mm"] = float(err[sel].mean())
        metrics["initial_error_mm"] = float(init[sel].mean())
    if p.fixed_points is not None and p.moving_points is not None:
        pts = torch.as_tensor(p.fixed_points, dtype=torch.float32, device=device)
        mapped = y.map_points(pts)[0].cpu().numpy()
        metrics["tre_mm"] = float(np.linalg.norm(mapped - p.moving_points, axis=1).mean())
        metrics["initial_tre_mm"] = float(np.linalg.norm(p.fixed_points - p.moving_points, axis=1).mean())
    if p.fixed_masks is not None and p.moving_masks is not None:
        warped = y.warp(p.moving_masks, p.grid, padding_mode="zeros") > 0.5
        fixed = p.fixed_masks > 0.5
        inter = (warped & fixed).sum(dim=(0, 2, 3, 4)).double()
        total = (warped.sum(dim=(0, 2, 3, 4)) + fixed.sum(dim=(0, 2, 3, 4))).double()
        metrics["dice"] = float((2 * inter / total.clamp_min(1)).mean())
    metrics["folding_percent"] = 100.0 * float(y.folding_fraction(lung.float() if lung is not None else None)[0])
    return metrics


@torch.no_grad()
def validate(net: MultilevelNet, pairs: list[TrainingPair], active_levels: int | None = None) -> dict[str, float]:
    """Mean of :func:`pair_metrics` over ``pairs`` (eval mode during the call, mode restored after)."""
    was_training = net.training
    net.eval()
    try:
        sums: dict[str, list[float]] = {}
        for pair in pairs:
            for k, v in pair_metrics(net, pair, active_levels).items():
                sums.setdefault(k, []).append(v)
    finally:
        net.train(was_training)
    return {k: float(np.mean(v)) for k, v in sums.items()}
