"""Registration cases with known ground truth, built from a real CT by synthetic breathing.

:func:`synthetic_breathing_case` builds one in memory (lung mask, breathing motion, deformed CT,
evaluation landmarks); :func:`sample_pair_files` writes the one that Slicer's Sample Data module
offers (the bundled CT and its breathing partner, with landmarks), generated once and reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.deformation import Deformation
from ..core.geometry import ImageGrid
from ..core.progress import CancelFn, Progress, ProgressFn
from .breathing import breathing_deformation, make_synthetic_pair, sample_landmarks

__all__ = ["SAMPLE_PAIR", "SamplePairFiles", "SyntheticCase", "sample_pair_files", "synthetic_breathing_case"]


@dataclass
class SyntheticCase:
    """A pair with known motion: registering ``(fixed, moving)`` should recover ``truth``.

    Attributes:
        fixed: the CT (HU), as given.
        moving: ``fixed`` deformed by ``truth`` (HU, the fixed image's pixel type and grid).
        lungs: the fixed lung mask (uint8 label map on the fixed grid).
        truth: the fixed -> moving map on the fixed grid, ``x_moving = x_fixed + u(x_fixed)``, mm.
        fixed_points, moving_points: ``(P, 3)`` corresponding landmarks, LPS mm.
    """

    fixed: sitk.Image
    moving: sitk.Image
    lungs: sitk.Image
    truth: Deformation
    fixed_points: np.ndarray
    moving_points: np.ndarray

    @property
    def peak_displacement_mm(self) -> float:
        """Largest displacement of ``truth``, mm."""
        return float(self.truth.displacement.norm(dim=1).max())


def synthetic_breathing_case(
    fixed: sitk.Image,
    peak_mm: float = 20.0,
    seed: int = 0,
    n_landmarks: int = 100,
    noise_hu: float = 10.0,
    lungs: sitk.Image | None = None,
) -> SyntheticCase:
    """Deform a real CT by synthetic breathing and pick landmarks that follow the motion.

    Args:
        fixed: 3-D CT in HU.
        peak_mm: peak displacement inside the lungs, mm.
        seed: seed of the motion, the noise and the landmark choice.
        n_landmarks: landmarks to pick inside the lungs (fewer where the lungs are small).
        noise_hu: standard deviation of the noise added to the moving image, HU.
        lungs: the fixed lung mask; computed with :func:`~MLVIRNETLib.preprocessing.segment_lungs`
            when None.

    Raises:
        ValueError: no lungs found in ``fixed`` (from the lung mask), or ``peak_mm <= 0``.
    """
    from ..preprocessing.lungmask import segment_lungs

    if not peak_mm > 0:
        raise ValueError(f"peak_mm must be > 0, got {peak_mm}")
    grid = ImageGrid.from_sitk(fixed)
    lungs = segment_lungs(fixed) if lungs is None else lungs
    truth = breathing_deformation(grid, lungs, peak_mm=peak_mm, seed=seed)
    moving, _ = make_synthetic_pair(fixed, truth, lungs, noise_hu=noise_hu, seed=seed)
    fixed_points = sample_landmarks(fixed, lungs, n=n_landmarks, seed=seed)
    moving_points = truth.map_points(torch.as_tensor(fixed_points, dtype=torch.float32))[0].double().numpy()
    return SyntheticCase(fixed, moving, lungs, truth, fixed_points, moving_points)


@dataclass(frozen=True)
class SamplePairFiles:
    """The files of the Sample Data pair: CT volumes and matching landmark lists (Slicer markups)."""

    fixed: Path
    moving: Path
    fixed_landmarks: Path
    moving_landmarks: Path

    def all(self) -> tuple[Path, Path, Path, Path]:
        return (self.fixed, self.moving, self.fixed_landmarks, self.moving_landmarks)


SAMPLE_PAIR = {"peak_mm": 15.0, "seed": 0, "n_landmarks": 60, "noise_hu": 10.0, "version": 1}
"""How the Sample Data partner is made (recorded beside the files; other settings regenerate them)."""


def sample_pair_files(
    cache_dir: str | Path,
    fixed_path: str | Path | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> SamplePairFiles:
    """The bundled CT and its synthetic-breathing partner as files in ``cache_dir``.

    The partner (``MLVIRNET-sample-moving.nii.gz``, int16 HU, the fixed grid) is the bundled CT
    moved by 15 mm synthetic breathing; the landmark lists (``.mrk.json``, LPS) hold 60
    corresponding lung points, so the TRE before and after a registration can be measured. The
    files are generated on the first call (seconds) and reused while the
    settings recorded in ``MLVIRNET-sample.json`` match :data:`SAMPLE_PAIR`; each is written
    atomically.

    Args:
        cache_dir: folder for the files (created).
        fixed_path: the fixed CT; the bundled CT when None.
        progress, cancel: the library's progress protocol (:mod:`MLVIRNETLib.core.progress`).

    Raises:
        RegistrationCancelled: ``cancel()`` returned True (nothing new is left in ``cache_dir``).
    """
    from ..io.atomic import write_atomically
    from ..io.images import image_to_tensor, read_image, tensor_to_image, write_image
    from ..io.landmarks import write_landmarks
    from ..paths import bundled_ct_path

    prog = Progress.of(progress, cancel)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fixed_path = Path(fixed_path) if fixed_path is not None else bundled_ct_path()
    files = SamplePairFiles(
        fixed=fixed_path,
        moving=folder / "MLVIRNET-sample-moving.nii.gz",
        fixed_landmarks=folder / "MLVIRNET-sample-fixed.mrk.json",
        moving_landmarks=folder / "MLVIRNET-sample-moving.mrk.json",
    )
    record = folder / "MLVIRNET-sample.json"
    settings = {**SAMPLE_PAIR, "fixed": fixed_path.name}
    if record.is_file() and all(p.is_file() for p in files.all()):
        try:
            if json.loads(record.read_text(encoding="utf-8")) == settings:
                return files
        except json.JSONDecodeError:
            pass  # a damaged record: make the files again
    prog(0.0, "making the sample breathing partner")
    fixed = read_image(fixed_path)
    prog(0.1, "lung mask and breathing motion")
    case = synthetic_breathing_case(
        fixed, SAMPLE_PAIR["peak_mm"], SAMPLE_PAIR["seed"], SAMPLE_PAIR["n_landmarks"], SAMPLE_PAIR["noise_hu"]
    )
    prog(0.9, "writing the sample files")
    labels = [f"L-{i + 1}" for i in range(len(case.fixed_points))]
    # the fixed image's pixel type (int16 for the bundled CT: rounded, a quarter of float32's size)
    moving_array, moving_grid = image_to_tensor(case.moving)
    write_image(tensor_to_image(moving_array, moving_grid, pixel_type=fixed.GetPixelID()), files.moving)
    write_landmarks(case.fixed_points, files.fixed_landmarks, labels=labels)
    write_landmarks(case.moving_points, files.moving_landmarks, labels=labels)
    write_atomically(record, lambda f: f.write(json.dumps(settings).encode("utf-8")))
    prog(1.0, "sample pair ready")
    return files
