"""Training pairs and the data sources that produce them.

Every source yields :class:`TrainingPair` objects already on the network grid (the same
preprocessing as inference: :mod:`MLVIRNETLib.preprocessing.pair`), so the training loop never touches
files or full-resolution images. Sources:

* :class:`~MLVIRNETLib.training.synthetic_pairs.SyntheticSource` -- self-supervised pairs from
  single CTs (random breathing motion, known ground truth);
* :class:`PhaseSource` -- ordered pairs of the phases of one real 4D-CT;
* :class:`ManifestSource` -- pairs listed in a CSV file (DIR-LAB, COPDGene layouts, ...), with
  optional masks, label maps and landmarks.

A source draws pair ``i`` with a ``torch.Generator`` given by the caller: the trainer seeds it from
``(seed, step, rank)``, which makes every step's data reproducible after a resume.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation
from ..core.filters import resample_antialiased
from ..core.geometry import ImageGrid
from ..preprocessing.pair import (
    PreprocessOptions,
    image_to_hu_tensor,
    mask_to_tensor,
    network_grid,
    normalize_ct,
    preprocess_pair,
)

__all__ = ["TrainingPair", "PairSource", "PhaseSource", "ManifestSource", "MixedSource", "labels_to_channels"]


@dataclass
class TrainingPair:
    """One registration problem on the network grid.

    Attributes:
        grid: the network grid (``input_size`` voxels).
        fixed, moving: ``(1, 1, D, H, W)`` images normalised to ``[0, 1]``.
        fixed_masks, moving_masks: ``(1, C, D, H, W)`` soft masks in ``[0, 1]`` for the mask term
            (one channel per label, or one lung channel), or ``None``.
        truth: the true fixed->moving map where known (synthetic pairs), else ``None``.
        fixed_points, moving_points: corresponding landmarks ``(P, 3)`` LPS mm, or ``None``.
        name: a short description for logs.
    """

    grid: ImageGrid
    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_masks: torch.Tensor | None = None
    moving_masks: torch.Tensor | None = None
    truth: Deformation | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    name: str = ""

    def to(self, device: torch.device) -> "TrainingPair":
        def mv(t):
            return None if t is None else t.to(device)

        return TrainingPair(
            self.grid, self.fixed.to(device), self.moving.to(device), mv(self.fixed_masks), mv(self.moving_masks),
            None if self.truth is None else self.truth.to(device), self.fixed_points, self.moving_points, self.name,
        )


class PairSource(Protocol):
    """Anything that can draw training pairs."""

    name: str

    def sample(self, generator: torch.Generator) -> TrainingPair: ...


def labels_to_channels(labels: torch.Tensor, values: list[int] | None = None) -> torch.Tensor:
    """Integer label map ``(1, 1, D, H, W)`` -> float one-hot ``(1, C, D, H, W)`` of the nonzero labels.

    ``values`` fixes the label values and their channel order (default: the sorted nonzero values).
    """
    lab = labels.round().long()
    vals = values if values is not None else [int(v) for v in torch.unique(lab).tolist() if v != 0]
    if not vals:
        raise ValueError("the label map has no nonzero label")
    return torch.cat([(lab == v).float() for v in vals], dim=1)


def _read(path: str) -> sitk.Image:
    from ..io.images import read_image

    return read_image(path)


def _auto_mask(image: sitk.Image, what: str) -> sitk.Image | None:
    from ..preprocessing.lungmask import LungMaskOptions, segment_lungs

    try:
        return segment_lungs(image, LungMaskOptions(working_spacing_mm=3.0))
    except ValueError as exc:
        import warnings

        warnings.warn(f"no automatic lung mask for {what} ({exc}); its mask term is off", stacklevel=2)
        return None


# ----------------------------------------------------------------------------------------------
class PhaseSource:
    """All ordered pairs ``(phase i, phase j)``, ``i != j``, of one 4D-CT (real breathing motion).

    The phases share one field of view; each is resampled once to a network grid over the whole
    field of view (or the lung box of the first phase when masks are given or computed). Without
    masks the mask term is off for these pairs.
    """

    def __init__(self, images: list[str], size: tuple[int, int, int], masks: list[str] | None = None,
                 auto_masks: bool = False, crop_margin_mm: float = 10.0) -> None:
        self.name = f"phases({Path(images[0]).parent.name}, {len(images)})"
        phases = [_read(p) for p in images]
        grids = [ImageGrid.from_sitk(p) for p in phases]
        for p, g in zip(images[1:], grids[1:]):
            if not g.is_close(grids[0], tol_mm=1e-3):
                raise ValueError(f"4D-CT phase {p} is on another grid ({g.describe()}) than {images[0]} ({grids[0].describe()})")
        mask_imgs: list[sitk.Image | None]
        if masks is not None:
            mask_imgs = [_read(m) for m in masks]
        elif auto_masks:
            mask_imgs = [_auto_mask(p, path) for p, path in zip(phases, images)]
            if any(m is None for m in mask_imgs):
                mask_imgs = [None] * len(phases)
        else:
            mask_imgs = [None] * len(phases)
        opts = PreprocessOptions(network_size=size, crop_to_lungs=mask_imgs[0] is not None, crop_margin_mm=crop_margin_mm)
        self.grid = network_grid(grids[0], mask_imgs[0], opts)[0]
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []
        for img, m in zip(phases, mask_imgs):
            hu = image_to_hu_tensor(img)[0]
            self.images.append(normalize_ct(resample_antialiased(hu, grids[0], self.grid), opts.hu_window))
            self.masks.append(
                None if m is None else resample_antialiased(mask_to_tensor(m, grids[0]), grids[0], self.grid, antialias=False)
            )

    def __len__(self) -> int:
        n = len(self.images)
        return n * (n - 1)

    def sample(self, generator: torch.Generator) -> TrainingPair:
        n = len(self.images)
        i, j = torch.randperm(n, generator=generator)[:2].tolist()
        return TrainingPair(self.grid, self.images[i], self.images[j], self.masks[i], self.masks[j],
                            name=f"{self.name}: phase {i + 1} -> {j + 1}")


# ----------------------------------------------------------------------------------------------
MANIFEST_COLUMNS = ("fixed", "moving", "fixed_mask", "moving_mask", "fixed_labels", "moving_labels",
                    "fixed_landmarks", "moving_landmarks")


class ManifestSource:
    """Pairs listed in a CSV file (header row required; paths relative to the CSV file).

    Columns: ``fixed``, ``moving`` (required), ``fixed_mask``, ``moving_mask``, ``fixed_labels``,
    ``moving_labels``, ``fixed_landmarks``, ``moving_landmarks`` (optional, may be empty). Label
    maps (e.g. lobes) replace the masks in the mask term, one channel per label value of the fixed
    map. Landmarks (any format of :func:`MLVIRNETLib.io.landmarks.read_landmarks`; DIR-LAB voxel
    files are read on their image's grid) give TRE in validation. Every pair is preprocessed once
    when the source is built (about 7 MB per pair at 96^3).
    """

    def __init__(self, csv_path: str, size: tuple[int, int, int], auto_masks: bool = False,
                 crop_margin_mm: float = 10.0) -> None:
        from ..io.landmarks import read_landmarks

        path = Path(csv_path)
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise ValueError(f"manifest {path} lists no pairs")
        columns = set(rows[0])
        missing = {"fixed", "moving"} - columns
        unknown = columns - set(MANIFEST_COLUMNS)
        if missing or unknown:
            raise ValueError(f"manifest {path}: missing columns {sorted(missing)}, unknown columns {sorted(unknown)}; "
                             f"allowed: {list(MANIFEST_COLUMNS)}")
        self.name = f"manifest({path.name})"
        self.pairs: list[TrainingPair] = []

        def file(row: dict, key: str, line: int) -> Path | None:
            value = (row.get(key) or "").strip()
            if not value:
                return None
            p = Path(value) if Path(value).is_absolute() else path.parent / value
            if not p.exists():
                raise FileNotFoundError(f"manifest {path} line {line}: {key} file not found: {p}")
            return p

        for line, row in enumerate(rows, start=2):
            f_path, m_path = file(row, "fixed", line), file(row, "moving", line)
            if f_path is None or m_path is None:
                raise ValueError(f"manifest {path} line {line}: 'fixed' and 'moving' are required")
            fixed, moving = _read(str(f_path)), _read(str(m_path))
            masks = []
            for key, img, img_path in (("fixed_mask", fixed, f_path), ("moving_mask", moving, m_path)):
                p = file(row, key, line)
                masks.append(_read(str(p)) if p is not None else (_auto_mask(img, str(img_path)) if auto_masks else None))
            opts = PreprocessOptions(network_size=size, crop_to_lungs=masks[0] is not None, crop_margin_mm=crop_margin_mm)
            pp = preprocess_pair(fixed, moving, masks[0], masks[1], opts)
            f_masks, m_masks = pp.fixed_mask, pp.moving_mask
            lab_paths = [file(row, "fixed_labels", line), file(row, "moving_labels", line)]
            if all(p is not None for p in lab_paths):
                f_lab, m_lab = _read(str(lab_paths[0])), _read(str(lab_paths[1]))
                values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(f_lab)) if v != 0]
                f_masks = self._label_channels(f_lab, pp.grid, values)
                m_masks = self._label_channels(m_lab, pp.grid, values)
            if (f_masks is None) != (m_masks is None):
                f_masks = m_masks = None
            pts = []
            for key, img in (("fixed_landmarks", fixed), ("moving_landmarks", moving)):
                p = file(row, key, line)
                pts.append(read_landmarks(p, ImageGrid.from_sitk(img)) if p is not None else None)
            if (pts[0] is None) != (pts[1] is None) or (pts[0] is not None and pts[0].shape != pts[1].shape):
                raise ValueError(f"manifest {path} line {line}: give both landmark files with the same number of points")
            self.pairs.append(TrainingPair(pp.grid, pp.fixed, pp.moving, f_masks, m_masks, None, pts[0], pts[1],
                                           name=f"{path.name}:{line} {f_path.name} <- {m_path.name}"))

    @staticmethod
    def _label_channels(labels: sitk.Image, grid: ImageGrid, values: list[int]) -> torch.Tensor:
        lab = image_to_hu_tensor(labels)[0]
        onehot = labels_to_channels(lab, values)
        return resample_antialiased(onehot, ImageGrid.from_sitk(labels), grid, antialias=True, padding_value=0.0)

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, generator: torch.Generator) -> TrainingPair:
        return self.pairs[int(torch.randint(len(self.pairs), (1,), generator=generator))]


# ----------------------------------------------------------------------------------------------
class MixedSource:
    """Draws from several sources with given relative weights."""

    def __init__(self, sources: list, weights: list[float]) -> None:
        if len(sources) != len(weights) or not sources:
            raise ValueError("MixedSource needs one weight per source and at least one source")
        w = torch.tensor(weights, dtype=torch.float64)
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {weights}")
        self.sources = sources
        self.probabilities = w / w.sum()
        self.name = " + ".join(s.name for s in sources)

    def sample(self, generator: torch.Generator) -> TrainingPair:
        k = int(torch.multinomial(self.probabilities, 1, generator=generator))
        return self.sources[k].sample(generator)
