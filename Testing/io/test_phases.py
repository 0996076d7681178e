"""find_phases: the phases of a 4D-CT from a folder (natural order), a 4-D image, and DICOM folders
holding several series or several temporal positions of one series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import rotation_matrix, write_dicom_series

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.io.phases import find_phases

GRID = ImageGrid((12, 10, 6), (1.5, 1.5, 2.5), (-20.0, 30.0, 100.0), tuple(rotation_matrix((0.0, 0.0, 20.0)).ravel()))


def _phase(k: int) -> sitk.Image:
    """A small int16 image whose voxels encode the phase ``k`` and their position."""
    arr = (np.arange(np.prod(GRID.shape_zyx)).reshape(GRID.shape_zyx) % 700 - 1000 + 50 * k).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    GRID.copy_to_sitk(image)
    return image


def _write_dicom(image: sitk.Image, folder: Path, series_uid: str, number: int, description: str,
                 temporal: int | None, prefix: str) -> None:
    """``image`` as a DICOM series with the tags a scanner's 4D-CT export carries."""
    tags = {"0020|0011": str(number), "0008|103e": description}
    if temporal is not None:
        tags["0020|0100"] = str(temporal)
    write_dicom_series(image, folder, series_uid, tags, prefix)


def _same(a: sitk.Image, b: sitk.Image) -> bool:
    return (np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
            and ImageGrid.from_sitk(a).is_close(ImageGrid.from_sitk(b), tol_mm=1e-3))


def test_a_dicom_folder_of_several_series_gives_one_phase_per_series(tmp_path) -> None:
    folder = tmp_path / "dicom"
    for k, number in ((2, 12), (0, 10), (1, 11)):  # written out of order; series numbers order them
        _write_dicom(_phase(k), folder, f"1.2.826.0.1.3680043.2.1125.2.{k}", number, f"Thorax 4D {10 * k}%",
                     None, f"s{k}")
    phases = find_phases([folder])
    assert [p.name for p in phases] == ["Thorax_4D_0", "Thorax_4D_10", "Thorax_4D_20"]
    for k, p in enumerate(phases):
        assert len(p.files) == 6 and _same(p.load(), _phase(k))
    assert phases[1].stamp()["files"] == 6


def test_one_dicom_series_with_temporal_positions_is_split(tmp_path) -> None:
    folder = tmp_path / "dicom"
    for k in (3, 1, 2):
        _write_dicom(_phase(k), folder, "1.2.826.0.1.3680043.2.1125.3", 5, "4D", k, f"t{k}")
    phases = find_phases([folder])
    assert [p.name for p in phases] == ["phase00", "phase01", "phase02"]
    assert all(_same(p.load(), _phase(k)) for k, p in zip((1, 2, 3), phases))


def test_repeated_positions_without_temporal_positions_are_refused(tmp_path) -> None:
    folder = tmp_path / "dicom"
    for k in (0, 1):
        _write_dicom(_phase(k), folder, "1.2.826.0.1.3680043.2.1125.4", 5, "4D", None, f"t{k}")
    with pytest.raises(ValueError, match="repeats image positions without temporal position identifiers"):
        find_phases([folder])


def test_one_dicom_series_is_one_phase(tmp_path) -> None:
    _write_dicom(_phase(0), tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.5", 5, "CT", None, "a")
    with pytest.raises(ValueError, match="a 4D-CT needs at least 2 phases, got 1"):
        find_phases([tmp_path / "dicom"])


def test_a_folder_is_taken_in_natural_order_and_a_4d_image_is_split(tmp_path) -> None:
    for k in (10, 2, 1):
        sitk.WriteImage(_phase(k), str(tmp_path / f"phase{k}.nii.gz"))
    assert [p.name for p in find_phases([tmp_path])] == ["phase1", "phase2", "phase10"]
    sitk.WriteImage(sitk.JoinSeries([_phase(0), _phase(1)]), str(tmp_path / "4d.nrrd"))
    phases = find_phases([tmp_path / "4d.nrrd"])
    assert [(p.name, p.volume) for p in phases] == [("phase00", 0), ("phase01", 1)]
    assert _same(phases[1].load(), _phase(1))


def test_a_vector_image_is_refused_with_one_message(tmp_path) -> None:
    sequence = sitk.Compose([_phase(0), _phase(1), _phase(2)])  # as Slicer keeps a sequence in one .seq.nrrd
    sitk.WriteImage(sequence, str(tmp_path / "ct.seq.nrrd"))
    sitk.WriteImage(_phase(0), str(tmp_path / "phase0.nii.gz"))
    for items in ([tmp_path / "ct.seq.nrrd"], [tmp_path / "phase0.nii.gz", tmp_path / "ct.seq.nrrd"], [tmp_path]):
        with pytest.raises(ValueError, match=r"ct.seq.nrrd has 3 values per voxel \(a vector image"):
            find_phases(items)


def test_a_reference_named_like_a_number_is_the_phase_of_that_name(tmp_path) -> None:
    from MLVIRNETLib.evaluation.series_run import resolve_reference
    from MLVIRNETLib.io.phases import PhaseInput

    phases = [PhaseInput(name, tmp_path / f"{name}.nii.gz") for name in ("0", "10", "20", "30", "40", "50")]
    assert resolve_reference(phases, "50") == 5 and resolve_reference(phases, "10") == 1
    assert resolve_reference(phases, "3") == 3 and resolve_reference(phases, 0) == 0
    with pytest.raises(ValueError, match="reference 60 is out of range"):
        resolve_reference(phases, "60")
