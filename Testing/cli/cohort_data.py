"""Small real CT pairs for the command-line tests: the bundled CT resampled coarsely, moved by known shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.paths import bundled_ct_path

SHIFTS_MM = ((4.0, -3.0, 5.0), (-3.0, 2.0, 4.0), (2.0, 4.0, -3.0))
"""moving(x) = fixed(x + t): the landmarks of pair k move by -SHIFTS_MM[k]."""
FAST = ["--model", "none", "--no-affine", "--refine", "3", "--grid-size", "16", "16", "16"]
"""Registration arguments that take about a second per pair of :func:`write_pair`."""


def write_pair(folder: Path, name: str, shift, spacing_mm: float = 8.0) -> tuple[Path, Path, Path, Path]:
    """``(fixed, moving, fixed landmarks, moving landmarks)`` files of the bundled CT on an axis-aligned
    ``spacing_mm`` grid (about 20 x 21 x 28 voxels at 8 mm) and of its copy moved by ``shift`` (mm)."""
    full = sitk.ReadImage(str(bundled_ct_path()))
    ref = ImageGrid.from_sitk(full)
    size = [int(s) for s in np.round((np.asarray(ref.extent) - 20.0) / spacing_mm)]
    centre = np.asarray(ref.index_to_world((np.asarray(ref.size) - 1) / 2.0))
    origin = centre - (np.asarray(size) - 1) / 2.0 * spacing_mm

    def resample(t) -> sitk.Image:
        tx = sitk.TranslationTransform(3, tuple(float(v) for v in t))
        return sitk.Resample(full, size, tx, sitk.sitkLinear, tuple(origin), (spacing_mm,) * 3,
                             (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), -1024.0, sitk.sitkInt16)

    paths = (folder / f"{name}_fixed.nii.gz", folder / f"{name}_moving.nii.gz",
             folder / f"{name}_fixed.csv", folder / f"{name}_moving.csv")
    sitk.WriteImage(resample((0.0, 0.0, 0.0)), str(paths[0]))
    sitk.WriteImage(resample(shift), str(paths[1]))
    points = centre + np.array([[-40, 0, 0], [40, 0, 0], [-40, 10, 20], [40, -10, -20], [0, 0, 0]], dtype=float)
    np.savetxt(paths[2], points, delimiter=",", header="x,y,z", comments="")
    np.savetxt(paths[3], points - np.asarray(shift), delimiter=",", header="x,y,z", comments="")
    return paths


def write_cohort(folder: Path, broken: bool = False) -> Path:
    """A manifest of three pairs p0, p1, p2 with landmarks (relative paths); with ``broken`` the third
    pair's moving image is a corrupt file, which passes the manifest check and fails at run time."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["id,fixed,moving,fixed_landmarks,moving_landmarks"]
    for k, shift in enumerate(SHIFTS_MM):
        paths = write_pair(folder, f"p{k}", shift)
        if broken and k == 2:
            paths[1].write_bytes(b"this is not an image")
        rows.append(",".join([f"p{k}"] + [p.name for p in paths]))
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest
