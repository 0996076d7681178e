"""The quality check after a registration: do the registered images agree in the lungs?

A wrong header (x and y swapped in the direction matrix, a mirrored axis) or a failed registration
leaves the fixed image and the warped moving image far apart, yet the registration finishes
normally. :func:`check_quality` measures, on the working grid of the registration (cheap):

``ncc``
    the normalised cross-correlation of the fixed image and the warped moving image (both HU
    windowed to ``[0, 1]``) over the fixed lung mask grown by :data:`MASK_MARGIN_VOXELS` voxels,
    so that the lung borders (chest wall, diaphragm, mediastinum) take part; the whole working
    grid where there is no fixed mask.
``lung_dice``
    the Dice overlap of the fixed lung mask and the warped moving lung mask, where both exist.

The result is flagged when ``ncc`` falls below :data:`NCC_THRESHOLD` or ``lung_dice`` below
:data:`DICE_THRESHOLD`: values that successful registrations of real pairs stay above (the
calibration, its command and its figures are in docs/cohorts.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..core.deformation import Deformation
from ..core.filters import box_max
from ..core.geometry import ImageGrid
from ..core.sampling import check_volume

NCC_THRESHOLD = 0.80
"""Below this lung NCC of fixed and warped moving, a registration is flagged (docs/cohorts.md)."""
DICE_THRESHOLD = 0.80
"""Below this lung Dice of the fixed and warped moving masks, a registration is flagged (docs/cohorts.md)."""
MASK_MARGIN_VOXELS = 2
"""The fixed lung mask is grown by this many working-grid voxels before the NCC is taken over it."""


@dataclass(frozen=True)
class QualityCheck:
    """The outcome of :func:`check_quality`.

    Attributes:
        ncc: normalised cross-correlation in the (grown) fixed lung mask, in ``[-1, 1]``.
        ncc_threshold: the value below which ``ok`` is False.
        lung_dice: Dice of the fixed and warped moving lung masks, ``None`` without both masks.
        dice_threshold: the Dice below which ``ok`` is False.
        ok: both measures at or above their thresholds.
        message: a sentence for the user when ``ok`` is False, else ``None``.
    """

    ncc: float
    ncc_threshold: float
    lung_dice: float | None
    dice_threshold: float
    ok: bool
    message: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``result.json``, ``--json``)."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _ncc(a: torch.Tensor, b: torch.Tensor, inside: torch.Tensor | None = None) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` (same shape) over the voxels where ``inside``
    is True (all voxels without it); 0 where either is constant there.

    The sums run in float64 over the whole volume, with the voxels outside weighted 0 (no copy of
    the selected voxels: selecting them costs more than the sums).
    """
    w = inside.to(a.dtype) if inside is not None else torch.ones_like(a)
    n = w.sum(dtype=torch.float64)
    if float(n) == 0:
        return 0.0
    ma = float((a * w).sum(dtype=torch.float64) / n)
    mb = float((b * w).sum(dtype=torch.float64) / n)
    da = (a - ma).mul_(w)
    db = (b - mb).mul_(w)
    var = ((da * da).sum(dtype=torch.float64) * (db * db).sum(dtype=torch.float64)).sqrt()
    return float((da * db).sum(dtype=torch.float64) / var) if float(var) > 0 else 0.0


def check_quality(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grid: ImageGrid,
    deformation: Deformation,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
    ncc_threshold: float = NCC_THRESHOLD,
    dice_threshold: float = DICE_THRESHOLD,
) -> QualityCheck:
    """Measure how well ``moving`` warped by ``deformation`` agrees with ``fixed`` in the lungs.

    Args:
        fixed, moving: ``(1, 1, D, H, W)`` images on ``grid`` (the registration's working grid;
            ``moving`` already sampled through any affine pre-alignment).
        grid: their grid.
        deformation: the map of the working grid (fixed -> moving sample points).
        fixed_mask, moving_mask: ``(1, 1, D, H, W)`` lung masks in ``[0, 1]`` on ``grid`` or ``None``.
        ncc_threshold, dice_threshold: the flagging thresholds.

    Raises:
        ValueError: images and masks not of the grid's shape.
    """
    for name, t in (("fixed", fixed), ("moving", moving), ("fixed_mask", fixed_mask), ("moving_mask", moving_mask)):
        if t is not None:
            check_volume(t, grid, name)
    with torch.no_grad():
        phi = deformation.on_grid(grid).to(device=fixed.device, dtype=torch.float32)
        both = moving_mask is not None and fixed_mask is not None
        # the moving image and its mask through one sampling of the deformation's points
        channels = torch.cat([moving.float(), moving_mask.float()], dim=1) if both else moving.float()
        warped_all = phi.warp(channels, grid)
        warped = warped_all[:, :1]
        inside = None
        if fixed_mask is not None and float(fixed_mask.sum()) > 0:
            inside = box_max(fixed_mask > 0.5, MASK_MARGIN_VOXELS)
        ncc = _ncc(fixed.float(), warped, inside)
        dice = None
        if both:
            a = fixed_mask > 0.5
            b = warped_all[:, 1:] > 0.5
            denom = float(a.sum() + b.sum())
            dice = 2.0 * float((a & b).sum()) / denom if denom > 0 else None
    ok = ncc >= ncc_threshold and (dice is None or dice >= dice_threshold)
    message = None
    if not ok:
        parts = [f"lung NCC {ncc:.2f}" + (f" < {ncc_threshold:.2f}" if ncc < ncc_threshold else "")]
        if dice is not None:
            parts.append(f"lung Dice {dice:.2f}" + (f" < {dice_threshold:.2f}" if dice < dice_threshold else ""))
        message = (f"quality check: the registered images agree poorly in the lungs ({', '.join(parts)}; "
                   "successful registrations of real pairs stay above); check both image headers "
                   "(orientation, direction matrix) and the result before using it")
    return QualityCheck(ncc, ncc_threshold, dice, dice_threshold, ok, message)
