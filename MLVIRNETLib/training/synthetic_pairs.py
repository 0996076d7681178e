"""Self-supervised training pairs from single CTs: random breathing motion with known truth.

For a CT ``S`` and a random fixed->moving map ``d`` (breathing, :func:`~MLVIRNETLib.simulation.breathing.
breathing_deformation`, composed with a random smooth field and a small rigid motion that stands
for what the affine pre-alignment leaves), the pair on the network grid is

* ``A(x) = S(d(x))`` with lung density scaled by the volume change (mass conservation:
  ``HU_A + 1000 = (HU_S(d(x)) + 1000) * det J_d(x)`` in lung-like voxels), and
* ``B(x) = S(x)``,

each with its own Gaussian noise and, where the source's ``appearance`` asks for them, its own
acquisition differences (:mod:`MLVIRNETLib.training.appearance`: slice thickness, low-dose noise,
calibration offset, field of view). A share of the pairs (``identical_probability``) has no motion
at all. With probability ``1 - swap_probability`` the pair is
``(fixed, moving) = (A, B)`` and the truth is ``d``; otherwise ``(B, A)`` with truth ``d^-1``
(computed only when asked for, for validation). No inverse is needed for the images, so a pair
costs a few samplings on the network grid.

Every pair goes through the inference preprocessing: the field of view is the lung box plus a
random margin, resampled to ``input_size`` voxels; intensities use the HU window of
:func:`~MLVIRNETLib.preprocessing.pair.normalize_ct`. The CT is low-passed once to the network
resolution (as :func:`~MLVIRNETLib.core.filters.resample_antialiased` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation, jacobian_determinant
from ..core.filters import box_downsample, lowpass
from ..core.geometry import ImageGrid
from ..core.sampling import check_volume, sample, sample_on_grid
from ..preprocessing.pair import AIR_HU, HU_WINDOW, expand_box, image_to_hu_tensor, normalize_ct
from ..registration.affine import compose_affine
from ..simulation.breathing import breathing_deformation, invert_deformation, random_smooth_deformation, rigid_matrix
from .appearance import apply_appearance, draw_appearance, uniform
from .config import AppearanceConfig, SyntheticMotionConfig
from .pairs import TrainingPair, labels_to_channels

__all__ = ["PreparedCT", "SyntheticSource", "prepare_ct"]

_MASK_SPACING_MM = 2.0
_MOTION_MASK_SPACING_MM = 4.0


@dataclass
class PreparedCT:
    """One CT prepared for fast pair generation.

    Attributes:
        name: file name (for logs).
        grid: the native grid of the CT.
        box: lung bounding box ``(index_lo, index_hi)`` on ``grid`` (x, y, z, half-open), no margin.
        hu: the CT low-passed to about the network resolution, ``(1, 1, d, h, w)`` HU, on ``hu_grid``.
        labels: soft label channels (one per lung or lobe), ``(1, C, d, h, w)`` on ``label_grid``.
        lung_mask: binary lung mask on a grid of about 4 mm (for the breathing model).
    """

    name: str
    grid: ImageGrid
    box: tuple[tuple[int, int, int], tuple[int, int, int]]
    hu: torch.Tensor
    hu_grid: ImageGrid
    labels: torch.Tensor
    label_grid: ImageGrid
    lung_mask: sitk.Image


def prepare_ct(image: sitk.Image, size: tuple[int, int, int], mask: sitk.Image | None = None,
               labels: sitk.Image | None = None, name: str = "ct") -> PreparedCT:
    """Low-pass ``image`` (HU) for ``size``-voxel network grids over its lungs and store its labels.

    Args:
        image: CT in HU.
        size: the network input size ``(nx, ny, nz)``.
        mask: lung mask on ``image``'s grid; computed with :func:`MLVIRNETLib.preprocessing.lungmask.segment_lungs`
            when ``None``.
        labels: label map (e.g. lobes) on ``image``'s grid; default: left/right lung from the mask
            (:func:`MLVIRNETLib.preprocessing.lung_labels.split_left_right`, or the whole mask if it cannot be split).
        name: for messages.
    """
    from ..preprocessing.lung_labels import split_left_right
    from ..preprocessing.lungmask import LungMaskOptions, segment_lungs
    from ..preprocessing.pair import lung_bounding_box

    hu, grid = image_to_hu_tensor(image)
    if mask is None:
        mask = segment_lungs(image, LungMaskOptions(working_spacing_mm=3.0))
    box = lung_bounding_box(mask, grid, 0.0)
    if labels is None:
        try:
            labels = split_left_right(mask)
        except ValueError:
            labels = mask
    lab = image_to_hu_tensor(labels)[0]
    check_volume(lab, grid, f"labels of {name}")
    channels = labels_to_channels(lab)
    channels, label_grid = box_downsample(channels, grid, [_MASK_SPACING_MM] * 3)
    lung_frac, lung_grid = box_downsample(channels.sum(dim=1, keepdim=True), label_grid, [_MOTION_MASK_SPACING_MM] * 3)
    lung = (lung_frac > 0.5).to(torch.uint8)[0, 0].numpy()
    lung_img = sitk.GetImageFromArray(lung)
    lung_grid.copy_to_sitk(lung_img)
    if not lung.any():
        raise ValueError(f"the lung mask of {name} is empty")
    # low-pass once to the network resolution of the nominal crop
    nominal = grid.cropped(*box).resized(size)
    hu_s, hu_grid = lowpass(hu, grid, nominal.spacing)
    return PreparedCT(name, grid, box, hu_s.contiguous(), hu_grid, channels.contiguous(), label_grid, lung_img)


class SyntheticSource:
    """Random breathing pairs from a list of CTs (see the module docstring).

    Args:
        images: CT files in HU.
        size: network input size ``(nx, ny, nz)``.
        motion: the random motion settings.
        masks, labels: optional lung masks / label maps per image (``None`` entries allowed).
        appearance: acquisition differences between the two scans (default: none).
    """

    def __init__(self, images: list[str], size: tuple[int, int, int], motion: SyntheticMotionConfig | None = None,
                 masks: list[str] | None = None, labels: list[str] | None = None,
                 appearance: AppearanceConfig | None = None) -> None:
        from ..io.images import read_image

        self.size = tuple(int(s) for s in size)
        self.motion = motion if motion is not None else SyntheticMotionConfig()
        self.appearance = appearance if appearance is not None else AppearanceConfig()
        self.with_truth = False  # training pairs carry their known deformation (supervised loss term)
        self.scans: list[PreparedCT] = []
        for k, path in enumerate(images):
            img = read_image(path)
            m = read_image(masks[k]) if masks is not None and masks[k] else None
            lab = read_image(labels[k]) if labels is not None and labels[k] else None
            self.scans.append(prepare_ct(img, self.size, m, lab, Path(path).name))
        self.name = "synthetic(" + ", ".join(s.name for s in self.scans) + ")"

    # -- geometry ------------------------------------------------------------------------------
    def network_grid(self, scan: PreparedCT, margin_mm: float) -> ImageGrid:
        """The lung box of ``scan`` plus ``margin_mm`` (whole voxels, clipped) resized to ``size``."""
        return scan.grid.cropped(*expand_box(scan.box, scan.grid, margin_mm)).resized(self.size)

    # -- pairs ---------------------------------------------------------------------------------
    def sample(self, generator: torch.Generator) -> TrainingPair:
        k = int(torch.randint(len(self.scans), (1,), generator=generator))
        return self.make_pair(k, generator, with_truth=self.with_truth)

    def make_pair(self, index: int, generator: torch.Generator, peak_mm: float | None = None,
                  swap: bool | None = None, with_truth: bool = False) -> TrainingPair:
        """One pair from scan ``index``; ``peak_mm`` and ``swap`` override the random choices.

        A pair with a given ``peak_mm`` (validation) never has the identical-pair motion or the
        acquisition differences. The choices this module added after the first shipped model
        (sliding width, identical pairs, appearance) come from a second generator seeded from
        this pair's seed, so the pairs of configs without them are unchanged.
        """
        cfg = self.motion
        scan = self.scans[index]
        grid = self.network_grid(scan, uniform(generator, *cfg.crop_margin_mm))
        # the motion is smooth: build and compose it on a grid of half the resolution, then
        # evaluate it once on the network grid (trilinear; exact for the affine part inside)
        coarse = grid.resized(tuple(max(4, n // 2) for n in grid.size))
        peak = uniform(generator, *cfg.peak_mm) if peak_mm is None else float(peak_mm)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        extra = torch.Generator().manual_seed(seed + 104_729)
        identical = peak_mm is None and float(torch.rand((), generator=extra)) < cfg.identical_probability
        sliding = uniform(extra, *cfg.sliding_mm)
        d = Deformation.identity(coarse) if identical else self._breathing(scan, coarse, peak, seed, sliding)
        rnd = uniform(generator, *cfg.random_mm)
        if identical:
            rnd, peak = 0.0, 0.0
        if rnd > 0:
            r = random_smooth_deformation(coarse, rnd, cfg.random_smoothness_mm, seed + 1, cfg.velocity_spacing_mm)
            d = d.compose(r)
        rot = [uniform(generator, -cfg.rotation_deg, cfg.rotation_deg) for _ in range(3)]
        trans = [uniform(generator, -cfg.translation_mm, cfg.translation_mm) for _ in range(3)]
        centre = grid.index_to_world(0.5 * (np.asarray(grid.size, dtype=float) - 1.0))
        if not identical:
            d = compose_affine(rigid_matrix(rot, trans, centre), d)
        det_coarse = jacobian_determinant(d.displacement, coarse)
        d = d.on_grid(grid)
        noise = [uniform(generator, *cfg.noise_hu) for _ in range(2)]
        do_swap = bool(float(torch.rand((), generator=generator)) < cfg.swap_probability) if swap is None else swap

        pts = d.points()  # (1, D, H, W, 3): A(x) = S(d(x))
        hu_a = sample(scan.hu - AIR_HU, scan.hu_grid, pts, padding_mode="zeros") + AIR_HU
        lab_a = sample(scan.labels, scan.label_grid, pts, padding_mode="zeros")
        if cfg.density_change:
            det = sample_on_grid(det_coarse, coarse, grid).clamp(0.2, 5.0)
            weight = ((-300.0 - hu_a) / 200.0).clamp(0, 1) * lab_a.sum(dim=1, keepdim=True).clamp(0, 1)
            hu_a = hu_a + weight * ((hu_a + 1000.0) * det - 1000.0 - hu_a)
        hu_b = sample_on_grid(scan.hu - AIR_HU, scan.hu_grid, grid, padding_mode="zeros") + AIR_HU
        lab_b = sample_on_grid(scan.labels, scan.label_grid, grid, padding_mode="zeros")
        if peak_mm is None and self.appearance.enabled:
            hu_a, hu_b = apply_appearance((hu_a, hu_b), grid, draw_appearance(self.appearance, extra), extra)
        hu_a = hu_a + noise[0] * torch.randn(hu_a.shape, generator=generator)
        hu_b = hu_b + noise[1] * torch.randn(hu_b.shape, generator=generator)
        img_a, img_b = normalize_ct(hu_a, HU_WINDOW), normalize_ct(hu_b, HU_WINDOW)
        truth = None
        if do_swap:
            if with_truth:
                truth = invert_deformation(d, grid, iterations=60, tol_mm=1e-2)
            fixed, moving, f_lab, m_lab = img_b, img_a, lab_b, lab_a
        else:
            truth = d if with_truth else None
            fixed, moving, f_lab, m_lab = img_a, img_b, lab_a, lab_b
        name = f"{scan.name} {'identical' if identical else f'peak {peak:.1f} mm'}{' swapped' if do_swap else ''}"
        return TrainingPair(grid, fixed.contiguous(), moving.contiguous(), f_lab.contiguous(), m_lab.contiguous(),
                            truth, name=name)

    def _breathing(self, scan: PreparedCT, grid: ImageGrid, peak: float, seed: int, sliding_mm: float) -> Deformation:
        """A breathing map of about ``peak`` mm; lowered by 30 % steps while it would fold."""
        for _ in range(6):
            try:
                return breathing_deformation(grid, scan.lung_mask, peak, seed, sliding_mm=sliding_mm,
                                             velocity_spacing_mm=self.motion.velocity_spacing_mm)
            except ValueError:
                peak *= 0.7
        return Deformation.identity(grid)

    def validation_pairs(self, peaks_mm: list[float], seed: int) -> list[TrainingPair]:
        """Fixed pairs with truth: every scan x every peak x both directions (seeded)."""
        out = []
        for k in range(len(self.scans)):
            for j, peak in enumerate(peaks_mm):
                for swap in (False, True):
                    gen = torch.Generator().manual_seed(int(seed) * 1000 + 100 * k + 2 * j + int(swap))
                    out.append(self.make_pair(k, gen, peak_mm=peak, swap=swap, with_truth=True))
        return out

