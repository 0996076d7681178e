"""The phases of a 4D-CT on disk: which images they are, in which order, under which names.

:func:`find_phases` takes what a user names on the command line:

* image files, one 3-D image per phase (or one DICOM folder per phase), in the order given;
* a folder of image files, or a glob pattern: its files in natural order (``phase2`` before
  ``phase10``);
* one 4-D image (NIfTI, NRRD, MetaImage): its volumes along the 4th axis, named ``phase00``,
  ``phase01``, ...;
* one DICOM folder holding several phases: several series (one per phase, named after their
  series description, else ``series<number>``, in the order of their temporal position
  identifier (0020,0100), else of their series number), or one series whose images carry several
  temporal position identifiers (named ``phase00``, ``phase01``, ... in that order).

A phase read from a file is named after the file (``phase05.nii.gz`` -> ``phase05``).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import SimpleITK as sitk

from ..core.geometry import ImageGrid
from .atomic import PathLike
from .fields import IMAGE_SUFFIXES
from .images import image_header, read_image, read_image_grid, sitk_error_reason
from .integrity import check_input

__all__ = ["PhaseInput", "find_phases"]

TEMPORAL_POSITION = "0020|0100"
SERIES_NUMBER = "0020|0011"
SERIES_DESCRIPTION = "0008|103e"
IMAGE_POSITION = "0020|0032"


@dataclass(frozen=True)
class PhaseInput:
    """One phase on disk.

    Attributes:
        name: the phase's name (its output folder).
        path: a 3-D image file, a DICOM folder, or a 4-D image file (with ``volume``).
        volume: the volume of a 4-D image, else ``None``.
        files: the DICOM files of this phase when ``path`` is a folder holding several phases.
    """

    name: str
    path: Path
    volume: int | None = None
    files: tuple[str, ...] = ()

    def load(self) -> sitk.Image:
        """The phase's image (a 4-D image's volume, or a DICOM phase's files, read alone).

        Raises:
            ValueError: an unreadable file, or not a 3-D image.
        """
        if self.files:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(list(self.files))
            try:
                image = reader.Execute()
            except RuntimeError as exc:
                raise ValueError(f"cannot read phase {self.name} of {self.path}: {sitk_error_reason(exc)}") from None
        elif self.volume is None:
            return read_image(self.path)
        else:
            reader = image_header(self.path)
            reader.SetExtractIndex([0, 0, 0, self.volume])
            reader.SetExtractSize(list(reader.GetSize())[:3] + [0])
            try:
                image = reader.Execute()
            except RuntimeError as exc:
                raise ValueError(f"cannot read volume {self.volume} of {self.path}: {sitk_error_reason(exc)}") from None
        ImageGrid.from_sitk(image)  # 3-D (ValueError otherwise)
        return image

    def grid(self) -> ImageGrid:
        """The phase's grid, from the header where possible.

        Raises:
            ValueError: not a 3-D image (2-D, a single slice).
        """
        if self.volume is None and not self.files:
            return read_image_grid(self.path)
        return ImageGrid.from_sitk(self.load())

    def stamp(self) -> dict[str, Any]:
        """Path, size and modification time of the phase's file (of all its files), with the volume."""
        paths = [Path(f) for f in self.files] if self.files else None
        if paths is None:
            p = self.path.absolute()
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        else:
            files = paths
        stats = [f.stat() for f in files]
        out: dict[str, Any] = {"path": str(self.path.absolute()), "size": sum(s.st_size for s in stats),
                               "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
        if len(files) > 1 or self.files:
            out["files"] = len(files)
        if self.volume is not None:
            out["volume"] = self.volume
        return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _four_d(path: Path) -> list[PhaseInput] | None:
    """The volumes of a 4-D image file as phases, or ``None`` when ``path`` is not 4-D."""
    reader = image_header(path)
    _check_scalar(path, reader)
    if reader.GetDimension() != 4 or reader.GetSize()[3] < 2:
        return None
    check_input(path)
    return [PhaseInput(f"phase{v:02d}", path, v) for v in range(reader.GetSize()[3])]


def _check_scalar(path: Path, reader: sitk.ImageFileReader) -> None:
    """Refuse an image with several values per voxel (a Slicer sequence file ``.seq.nrrd`` keeps
    its volumes as the components of one 3-D image; a vector or colour image is no CT).

    Raises:
        ValueError: more than one component per voxel.
    """
    n = reader.GetNumberOfComponents()
    if n > 1:
        raise ValueError(f"{path} has {n} values per voxel (a vector image, such as a Slicer sequence .seq.nrrd); "
                         "a phase is a CT with one value per voxel: save the phases as separate files or as one "
                         "4-D image")


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _tags(path: str) -> dict[str, str]:
    reader = image_header(path)
    keys = (TEMPORAL_POSITION, SERIES_NUMBER, SERIES_DESCRIPTION, IMAGE_POSITION)
    return {k: reader.GetMetaData(k).strip() for k in keys if reader.HasMetaDataKey(k)}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _dicom_phases(folder: Path) -> list[PhaseInput]:
    """The phases of a DICOM folder (module docstring); one phase for a folder of one 3-D series.

    Raises:
        ValueError: no DICOM series; a series whose images repeat a position without temporal
            position identifiers to tell the phases apart.
    """
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ValueError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series")
    groups: list[tuple[list[str], list[dict[str, str]]]] = []
    for sid in ids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))
        tags = [_tags(f) for f in files]
        times = sorted({_number(t.get(TEMPORAL_POSITION)) for t in tags} - {None})
        if len(times) > 1:
            for value in times:
                chosen = [(f, t) for f, t in zip(files, tags) if _number(t.get(TEMPORAL_POSITION)) == value]
                groups.append(([f for f, _ in chosen], [t for _, t in chosen]))
            continue
        positions = [t.get(IMAGE_POSITION) for t in tags]
        if len(set(positions)) < len(positions):
            raise ValueError(f"{folder}: DICOM series {sid} repeats image positions without temporal position "
                             "identifiers (0020,0100) to tell its phases apart; export one folder per phase")
        groups.append((files, tags))
    if len(groups) == 1:
        return [PhaseInput(folder.name, folder)]
    one_series = len(ids) == 1

    def key(group: tuple[list[str], list[dict[str, str]]]) -> tuple:
        first = group[1][0]
        t, n = _number(first.get(TEMPORAL_POSITION)), _number(first.get(SERIES_NUMBER))
        return (t is None, t or 0.0, n is None, n or 0.0, _natural_key(first.get(SERIES_DESCRIPTION, "")))

    groups.sort(key=key)
    names = []
    for k, (_, tags) in enumerate(groups):
        if one_series:
            names.append(f"phase{k:02d}")
            continue
        description = re.sub(r"[^A-Za-z0-9.+-]+", "_", tags[0].get(SERIES_DESCRIPTION, "")).strip("_.")
        number = tags[0].get(SERIES_NUMBER, "")
        names.append(description or f"series{number or k}")
    if len(set(names)) < len(names):
        names = [f"series{g[1][0].get(SERIES_NUMBER) or k}" for k, g in enumerate(groups)]
    if len(set(names)) < len(names):
        names = [f"phase{k:02d}" for k in range(len(groups))]
    return [PhaseInput(name, folder, None, tuple(files)) for name, (files, _) in zip(names, groups)]


def find_phases(items: Sequence[PathLike]) -> list[PhaseInput]:
    """The phases named by ``items`` (module docstring), checked: at least 2, each a 3-D image,
    names unique.

    Raises:
        FileNotFoundError: a file, folder or glob that matches nothing.
        ValueError: fewer than 2 phases, a phase that is not 3-D (2-D, a single slice) or has
            several values per voxel (a vector image such as a Slicer ``.seq.nrrd``), two
            phases of the same name, a folder without images, a DICOM folder whose phases cannot
            be told apart.
    """
    if not items:
        raise ValueError("no phases given")
    phases: list[PhaseInput] = []
    for item in items:
        p = Path(item)
        if not p.exists() and any(ch in str(item) for ch in "*?["):
            matches = sorted((Path(m) for m in glob.glob(str(item))), key=lambda m: _natural_key(m.name))
            found = [m for m in matches if _is_image_file(m) or m.is_dir()]
            if not found:
                raise FileNotFoundError(f"no phase image matches {item}")
            phases += [PhaseInput(_stem(m), m) for m in found]
        elif not p.exists():
            raise FileNotFoundError(f"phase not found: {p}")
        elif p.is_dir():
            files = sorted((f for f in p.iterdir() if _is_image_file(f)), key=lambda f: _natural_key(f.name))
            phases += [PhaseInput(_stem(f), f) for f in files] if files else _dicom_phases(p)
        else:
            volumes = _four_d(p)
            phases += volumes if volumes is not None else [PhaseInput(_stem(p), p)]
    if len(phases) < 2:
        raise ValueError(f"a 4D-CT needs at least 2 phases, got {len(phases)} ({', '.join(str(q.path) for q in phases)})")
    names = [q.name for q in phases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"several phases are named {', '.join(twice)} (the output folders are named after them); "
                         "rename the files")
    for q in phases:
        if q.volume is None and not q.files:
            if q.path.is_file():
                _check_scalar(q.path, image_header(q.path))
            grid = q.grid()  # a 2-D image or a single slice: ValueError naming the file
            if min(grid.size) < 2:
                raise ValueError(f"{q.path} has size {grid.size}; a 3-D volume is required")
    return phases
