"""Helper functions shared by the tests (fixtures stay in conftest.py):
``from helpers import oblique_grid``."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MLVIRNETLib.core.geometry import ImageGrid


def rotation_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Proper rotation from three Euler angles (degrees) about x, then y, then z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_grid(size=(14, 10, 12), spacing=(0.7, 1.3, 2.5), origin=(-12.5, 20.25, 33.0),
                 angles=(10.0, -20.0, 35.0), flip_z: bool = False) -> ImageGrid:
    """An oblique, anisotropic grid with a non-zero origin (optionally an improper direction)."""
    d = rotation_matrix(angles)
    if flip_z:
        d = d @ np.diag([1.0, 1.0, -1.0])
    return ImageGrid(size, spacing, origin, tuple(d.ravel()))


def bundled_ct_3mm() -> sitk.Image:
    """The bundled CT resampled to about 3 mm (60 x 63 x 82), int16 HU."""
    from MLVIRNETLib.paths import bundled_ct_path

    ct = sitk.ReadImage(str(bundled_ct_path()))
    grid = ImageGrid.from_sitk(ct).resized((60, 63, 82))
    reference = sitk.Image(list(grid.size), sitk.sitkInt16)
    grid.copy_to_sitk(reference)
    return sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)


def breathing_amplitudes(n_phases: int, peak_mm: float) -> list[float]:
    """Peak displacement of each phase of one breathing cycle, ``peak_mm * (1 - cos(2 pi k / n)) / 2``:
    0 at phase 0 (the reference), ``peak_mm`` half-way."""
    return [peak_mm * (1.0 - np.cos(2.0 * np.pi * k / n_phases)) / 2.0 for k in range(n_phases)]


def synthetic_4dct(n_phases: int = 4, peak_mm: float = 8.0, n_landmarks: int = 20):
    """A 4D-CT with known motion: the bundled CT at about 3 mm (phase 0) and its copies deformed by
    synthetic breathing at :func:`breathing_amplitudes`. Returns ``(phases, truths, lungs, points)``:
    the images, the true maps phase 0 -> phase k (``None`` for phase 0), the phase-0 lung mask and
    the landmarks of every phase (``(P, 3)`` LPS mm each, following the motion)."""
    import torch

    from MLVIRNETLib.preprocessing.lungmask import segment_lungs
    from MLVIRNETLib.simulation.breathing import breathing_deformation, make_synthetic_pair, sample_landmarks

    fixed = bundled_ct_3mm()
    lungs = segment_lungs(fixed)
    grid = ImageGrid.from_sitk(fixed)
    reference_points = sample_landmarks(fixed, lungs, n=n_landmarks, seed=0)
    phases, truths, points = [fixed], [None], [reference_points]
    made: dict[float, tuple] = {}  # a cycle reaches each amplitude twice: the same image
    for amplitude in breathing_amplitudes(n_phases, peak_mm)[1:]:
        key = round(float(amplitude), 6)
        if key not in made:
            truth = breathing_deformation(grid, lungs, peak_mm=amplitude, seed=0)
            moving, _ = make_synthetic_pair(fixed, truth, lungs, seed=0)
            mapped = truth.map_points(torch.as_tensor(reference_points, dtype=torch.float32))[0].double().numpy()
            made[key] = (sitk.Cast(sitk.Round(moving), sitk.sitkInt16), truth, mapped)
        image, truth, mapped = made[key]
        phases.append(image)
        truths.append(truth)
        points.append(mapped)
    return phases, truths, lungs, points


def write_dicom_series(image: sitk.Image, folder, series_uid: str, tags: dict[str, str] | None = None,
                       prefix: str = "slice") -> None:
    """Write a 3-D int16 ``image`` as one DICOM file per slice into ``folder`` (created if needed),
    with its LPS geometry (position, orientation, spacing) and ``tags`` (e.g. series number,
    description, temporal position identifier) on every slice."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        values = {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.77", "0020|000e": series_uid,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            **(tags or {}),
        }
        for key, value in values.items():
            s.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{prefix}_{z:03d}.dcm"))
        writer.Execute(s)
