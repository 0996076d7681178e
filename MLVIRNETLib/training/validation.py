"""Validation metrics of a (partly trained) cascade on fixed validation pairs.

For each :class:`~MLVIRNETLib.training.pairs.TrainingPair` the net's deformation (of the active
levels) is evaluated on the pair's network grid and compared with what the pair knows:

* ``error_mm`` / ``initial_error_mm``: mean ``|u_pred - u_true|`` / ``|u_true|`` over the fixed
  lung voxels (synthetic pairs, dense truth); a dense version of landmark TRE;
* ``tre_mm`` / ``initial_tre_mm``: mean landmark distance ``|y(p_F) - p_M|`` / ``|p_F - p_M|``;
* ``dice``: mean Dice of the fixed label channels and the warped moving ones (threshold 0.5);
* ``folding_percent``: per cent of fixed lung voxels (all voxels without masks) with ``det J <= 0``.

Each metric is averaged over the pairs that have what it needs; absent metrics are left out.

:func:`validate_by_registration` measures what the model card's acceptance measures instead:
:func:`~MLVIRNETLib.registration.register` (affine stage, full-resolution preprocessing, the net
alone) on full-resolution synthetic breathing cases, with the TRE at landmarks that follow the
motion (``register_tre_mm``, ``register_tre_p95_mm``, ``register_initial_tre_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..networks.cascade import MultilevelNet
from .pairs import TrainingPair

__all__ = ["validate", "pair_metrics", "RegistrationCase", "registration_cases", "validate_by_registration"]


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


@dataclass
class RegistrationCase:
    """A full-resolution validation pair with landmarks (LPS mm, ``(n, 3)``) for :func:`validate_by_registration`."""

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    fixed_lungs: sitk.Image
    fixed_points: np.ndarray
    moving_points: np.ndarray


def registration_cases(images: list[str], masks: list[str] | None, peaks_mm: list[float], n_landmarks: int,
                       seed: int) -> list[RegistrationCase]:
    """Each CT of ``images`` moved by synthetic breathing of each peak (mm), with ``n_landmarks``
    landmarks (:func:`~MLVIRNETLib.simulation.cases.synthetic_breathing_case`, ``seed``); the lungs
    are ``masks`` (nonzero voxels) or, without them, found automatically.

    Raises:
        ValueError: an unreadable image or mask, or no lungs in an image, naming the image.
    """
    from ..io.images import read_image
    from ..preprocessing.lungmask import segment_lungs
    from ..simulation.cases import synthetic_breathing_case

    cases = []
    for i, path in enumerate(images):
        try:
            ct = read_image(path)
            lungs = segment_lungs(ct) if masks is None else sitk.Cast(read_image(masks[i]) > 0, sitk.sitkUInt8)
            for peak in peaks_mm:
                case = synthetic_breathing_case(ct, peak_mm=peak, seed=seed, n_landmarks=n_landmarks, lungs=lungs)
                cases.append(RegistrationCase(f"{path} {peak:g} mm", ct, case.moving, lungs,
                                              np.asarray(case.fixed_points), np.asarray(case.moving_points)))
        except ValueError as exc:
            raise ValueError(f"validation case from {path} (register_landmarks): {exc}") from None
    return cases


def validate_by_registration(net: MultilevelNet, cases: list[RegistrationCase]) -> dict[str, float]:
    """Mean over ``cases`` of the TRE (mm) after ``register(model=net)`` with no refinement.

    ``register`` runs ``net`` in eval mode on the net's device and returns it to its own mode.

    Returns:
        ``register_tre_mm`` (mean), ``register_tre_p95_mm`` (mean of the cases' 95th
        percentiles) and ``register_initial_tre_mm``.
    """
    from ..evaluation.metrics import tre
    from ..registration import RegistrationOptions, register

    device = next(net.parameters()).device
    after, initial = [], []
    for case in cases:
        result = register(case.fixed, case.moving, case.fixed_lungs, None, model=net, device=device,
                          options=RegistrationOptions(refinement={"iterations": 0}))
        after.append(tre(case.fixed_points, case.moving_points, result.deformation))
        initial.append(tre(case.fixed_points, case.moving_points))
    return {"register_tre_mm": float(np.mean([r.mean for r in after])),
            "register_tre_p95_mm": float(np.mean([r.p95 for r in after])),
            "register_initial_tre_mm": float(np.mean([r.mean for r in initial]))}
