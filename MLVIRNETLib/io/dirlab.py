"""The DIR-LAB lung CT benchmarks: geometry table, raw image reader, file finder.

Cases are named ``"4dct:N"`` (4D-CT, N = 1..10, phases T00 = end-inhale and T50 = end-exhale)
and ``"copd:N"`` (COPDgene, N = 1..10, iBH = inhale and eBH = exhale breath-hold).

Images are raw little-endian int16 without a header, stored value = HU + 1024, voxels in x-fastest
order (``np.fromfile(...).reshape(nz, ny, nx)``). Landmark files list 300 points as 1-based voxel
indices ``x y z``.

Orientation (our decision; TRE does not depend on it, but images and landmarks read here agree):

* voxel ``(0, 0, 0)`` (the landmark ``1 1 1``) sits at LPS ``(0, 0, 0)`` mm;
* direction ``diag(1, 1, -1)``: the x index runs to the patient's left, y to posterior, and the
  slice index runs from head to feet (slice 0 is the most superior slice).

The z sign was read off the data: in every 4D-CT case and in COPD 1, 3, 4 the landmarks with a
high slice index move most between inhale and exhale and they move towards lower indices, i.e.
the diaphragm (inferior) sits at high indices and rises on exhalation; the lung masks of COPD 1-2
(shared data) also grow slowly from slice 0 (apex) and end abruptly at the diaphragm. With this
direction the images display upright in 3D Slicer and other viewers. The landmark ``x y z`` is
converted with ``world = grid.index_to_world(xyz - 1)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.geometry import ImageGrid

PathLike = str | os.PathLike

SLICE_THICKNESS_MM = 2.5
DIRLAB_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
DIRLAB_ORIGIN = (0.0, 0.0, 0.0)
HU_OFFSET = 1024

# case number -> (size x, y, z, in-plane spacing mm); from the DIR-LAB reference data.
DIRLAB_4DCT: dict[int, tuple[tuple[int, int, int], float]] = {
    1: ((256, 256, 94), 0.97),
    2: ((256, 256, 112), 1.16),
    3: ((256, 256, 104), 1.15),
    4: ((256, 256, 99), 1.13),
    5: ((256, 256, 106), 1.10),
    6: ((512, 512, 128), 0.97),
    7: ((512, 512, 136), 0.97),
    8: ((512, 512, 128), 0.97),
    9: ((512, 512, 128), 0.97),
    10: ((512, 512, 120), 0.97),
}
DIRLAB_COPD: dict[int, tuple[tuple[int, int, int], float]] = {
    1: ((512, 512, 121), 0.625),
    2: ((512, 512, 102), 0.645),
    3: ((512, 512, 126), 0.652),
    4: ((512, 512, 126), 0.590),
    5: ((512, 512, 131), 0.647),
    6: ((512, 512, 119), 0.633),
    7: ((512, 512, 112), 0.625),
    8: ((512, 512, 115), 0.586),
    9: ((512, 512, 116), 0.664),
    10: ((512, 512, 135), 0.742),
}
DATASETS = {"4dct": DIRLAB_4DCT, "copd": DIRLAB_COPD}
PHASES = {"4dct": ("T00", "T50"), "copd": ("iBH", "eBH")}
"""Per dataset: (inhale phase tag, exhale phase tag) as they appear in file names."""


@dataclass(frozen=True)
class DirlabCase:
    """A parsed case name: ``dataset`` is ``"4dct"`` or ``"copd"``, ``number`` 1..10."""

    dataset: str
    number: int

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``"4dct:1"``."""
        return f"{self.dataset}:{self.number}"

    @property
    def slug(self) -> str:
        """File-name friendly name, e.g. ``"4dct_case1"`` or ``"copd_case1"``."""
        return f"{self.dataset}_case{self.number}"

    @property
    def inhale_tag(self) -> str:
        return PHASES[self.dataset][0]

    @property
    def exhale_tag(self) -> str:
        return PHASES[self.dataset][1]


def parse_case(case: str | DirlabCase) -> DirlabCase:
    """``"4dct:N"`` / ``"copd:N"`` (case-insensitive; ``"4dct:case1"`` also accepted) -> :class:`DirlabCase`."""
    if isinstance(case, DirlabCase):
        return case
    m = re.fullmatch(r"\s*(4dct|copd)\s*:\s*(?:case)?0*(\d+)\s*", str(case), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"DIR-LAB case must be '4dct:N' or 'copd:N' with N in 1..10, got {case!r}")
    dataset, number = m.group(1).lower(), int(m.group(2))
    if number not in DATASETS[dataset]:
        raise ValueError(f"DIR-LAB case {case!r}: {dataset} cases are numbered 1..10, got {number}")
    return DirlabCase(dataset, number)


def all_cases(dataset: str) -> list[str]:
    """Every case name of ``"4dct"`` or ``"copd"``."""
    key = dataset.lower()
    if key not in DATASETS:
        raise ValueError(f"DIR-LAB dataset must be '4dct' or 'copd', got {dataset!r}")
    return [f"{key}:{n}" for n in sorted(DATASETS[key])]


def dirlab_grid(case: str | DirlabCase) -> ImageGrid:
    """The image grid of a DIR-LAB case (both phases share it); see the module docstring for the orientation."""
    c = parse_case(case)
    size, inplane = DATASETS[c.dataset][c.number]
    return ImageGrid(size, (inplane, inplane, SLICE_THICKNESS_MM), DIRLAB_ORIGIN, DIRLAB_DIRECTION)


def read_dirlab_image(path: PathLike, case: str | DirlabCase) -> sitk.Image:
    """Read a raw DIR-LAB ``.img`` file -> int16 HU image on :func:`dirlab_grid` ``(case)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file size does not equal ``nx * ny * nz * 2`` bytes of the case.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"DIR-LAB image not found: {p}")
    c = parse_case(case)
    grid = dirlab_grid(c)
    nx, ny, nz = grid.size
    expected = nx * ny * nz * 2
    actual = p.stat().st_size
    if actual != expected:
        hint = ""
        matches = [
            f"{ds}:{n}"
            for ds, table in DATASETS.items()
            for n, (size, _) in table.items()
            if size[0] * size[1] * size[2] * 2 == actual
        ]
        if matches:
            hint = f" (that size fits case {', '.join(matches)})"
        raise ValueError(
            f"{p} has {actual} bytes but DIR-LAB case {c.name} ({nx}x{ny}x{nz} int16) needs {expected} bytes{hint}"
        )
    raw = np.fromfile(p, dtype="<i2").reshape(grid.shape_zyx)
    hu = (raw.astype(np.int32) - HU_OFFSET).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    grid.copy_to_sitk(image)
    return image


def apply_dirlab_geometry(image: sitk.Image, case: str | DirlabCase) -> sitk.Image:
    """A copy of ``image`` (e.g. a lung mask on the native DIR-LAB voxel grid, saved by another tool
    with another origin/direction) stamped with :func:`dirlab_grid` ``(case)``; voxels are not moved.

    Raises:
        ValueError: the image size differs from the case's size.
    """
    grid = dirlab_grid(case)
    if tuple(image.GetSize()) != grid.size:
        raise ValueError(f"image size {image.GetSize()} does not match DIR-LAB case {parse_case(case).name} {grid.size}")
    out = sitk.Image(image)
    grid.copy_to_sitk(out)
    return out


# ----------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DirlabCaseFiles:
    """Files of one case found under a root folder; images are ``None`` when absent."""

    case: str
    inhale_landmarks: Path
    exhale_landmarks: Path
    inhale_image: Path | None = None
    exhale_image: Path | None = None


def _landmark_pattern(c: DirlabCase, tag: str) -> re.Pattern:
    # case1_300_T00_xyz.txt, Case1_300_T00_xyz.txt, case6_dirLab300_T00_xyz.txt, copd1_300_iBH_xyz_r1.txt
    prefix = "case" if c.dataset == "4dct" else "copd"
    return re.compile(
        rf"{prefix}0*{c.number}[_-]?(?:dirlab)?[_-]?300[_-]{tag}[_-]xyz(?:[_-]r\d+)?\.(?:txt|pts)",
        flags=re.IGNORECASE,
    )


def _image_pattern(c: DirlabCase, tag: str) -> re.Pattern:
    # case1_T00_s.img, case1_T00-ssm.img, case1_T00.img, copd1_iBHCT.img
    if c.dataset == "4dct":
        return re.compile(rf"case0*{c.number}[_-]{tag}(?:[_-]?(?:s|ssm))?\.img", flags=re.IGNORECASE)
    return re.compile(rf"copd0*{c.number}[_-]{tag}(?:CT)?\.img", flags=re.IGNORECASE)


def _find_one(files: list[Path], pattern: re.Pattern, what: str, required: bool) -> Path | None:
    hits = sorted(p for p in files if pattern.fullmatch(p.name))
    if not hits:
        if required:
            raise FileNotFoundError(what)
        return None
    if len(hits) > 1:
        sizes = {p.stat().st_size for p in hits}
        contents = {p.read_bytes() for p in hits} if len(sizes) == 1 and max(sizes) < 1_000_000 else None
        if contents is None or len(contents) > 1:
            raise ValueError(f"several different files match {what}: {', '.join(str(p) for p in hits)}")
    return hits[0]


def list_files(root: PathLike) -> list[Path]:
    """All files below ``root`` (recursively), for repeated :func:`find_dirlab_case_files` calls."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"DIR-LAB root folder not found: {r}")
    return [p for p in r.rglob("*") if p.is_file()]


def find_dirlab_case_files(
    root: PathLike, case: str | DirlabCase, files: list[Path] | None = None, require_images: bool = False
) -> DirlabCaseFiles:
    """Find the landmark (and, when present, image) files of ``case`` anywhere below ``root``.

    Known name variants are accepted, case-insensitively: ``Case1_300_T00_xyz.txt``,
    ``case6_dirLab300_T00_xyz.txt``, ``copd1_300_iBH_xyz_r1.txt``; images ``case1_T00_s.img``,
    ``case1_T00-ssm.img``, ``case1_T00.img``, ``copd1_iBHCT.img``; any folder layout
    (``Case8Deploy/...``). Identical copies in several folders are tolerated.

    Args:
        files: the result of :func:`list_files` ``(root)`` to avoid walking the tree again.
        require_images: raise when an image is missing.

    Raises:
        FileNotFoundError: ``root`` or a required file is missing.
        ValueError: several different files match the same role.
    """
    c = parse_case(case)
    all_files = files if files is not None else list_files(root)
    found = {}
    for role, tag in (("inhale", c.inhale_tag), ("exhale", c.exhale_tag)):
        found[f"{role}_landmarks"] = _find_one(
            all_files,
            _landmark_pattern(c, tag),
            f"no {tag} landmark file for DIR-LAB case {c.name} under {root} "
            f"(expected a name like {'Case' if c.dataset == '4dct' else 'copd'}{c.number}_300_{tag}_xyz"
            f"{'' if c.dataset == '4dct' else '_r1'}.txt)",
            True,
        )
        found[f"{role}_image"] = _find_one(
            all_files,
            _image_pattern(c, tag),
            f"no {tag} image for DIR-LAB case {c.name} under {root} (expected a name like "
            f"{'case' + str(c.number) + '_' + tag + '_s.img' if c.dataset == '4dct' else 'copd' + str(c.number) + '_' + tag + 'CT.img'})",
            require_images,
        )
    return DirlabCaseFiles(case=c.name, **found)


# ----------------------------------------------------------------------------------------------
# 4D-75: landmarks that follow the breathing phases
# ----------------------------------------------------------------------------------------------
FOUR_D_75_TAGS = ("T00", "T10", "T20", "T30", "T40", "T50")
"""The phases of DIR-LAB's 4D-CT "4D-75" landmark files (end-inhale T00 to end-exhale T50)."""
FOUR_D_75_POINTS = 75
"""Points per phase in a 4D-75 file (the same points, in the same order, in every phase)."""

_FOUR_D_75 = re.compile(r"case0*(?P<case>\d+)[_-]?4D[_-]?75[_-](?P<tag>T\d0)(?:[_-]xyz)?\.(?:txt|pts)",
                        flags=re.IGNORECASE)


def find_dirlab_4d75_files(root: PathLike, case: str | DirlabCase | None = None) -> dict[str, Path]:
    """The 4D-75 landmark files below ``root`` (a folder, searched recursively), by phase tag.

    Names such as ``case1_4D-75_T00.txt`` or ``Case1_4D-75_T10_xyz.txt`` (case-insensitive) are
    recognised; with ``case`` (``"4dct:N"``) only that case's files are taken.

    Returns:
        ``{"T00": path, "T10": path, ...}`` in phase order.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds fewer than 2 phases' files.
        ValueError: files of several cases without ``case``, a ``case`` that is not a 4D-CT case,
            or two different files for one phase.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"4D-75 landmark folder not found: {r}")
    number = None
    if case is not None:
        c = parse_case(case)
        if c.dataset != "4dct":
            raise ValueError(f"4D-75 landmarks exist for the 4D-CT cases only, got {c.name}")
        number = c.number
    hits: dict[str, list[Path]] = {}
    cases: set[int] = set()
    for p in sorted(f for f in r.rglob("*") if f.is_file()):
        m = _FOUR_D_75.fullmatch(p.name)
        if m is None or (number is not None and int(m["case"]) != number):
            continue
        cases.add(int(m["case"]))
        hits.setdefault(m["tag"].upper(), []).append(p)
    if len(cases) > 1:
        raise ValueError(f"{r} holds 4D-75 files of cases {sorted(cases)}; name the case (4dct:N)")
    found: dict[str, Path] = {}
    for tag in sorted(hits):
        paths = hits[tag]
        if len({p.read_bytes() for p in paths}) > 1:
            raise ValueError(f"several different 4D-75 files for phase {tag}: {', '.join(map(str, paths))}")
        found[tag] = paths[0]
    if len(found) < 2:
        raise FileNotFoundError(f"no 4D-75 landmark files (e.g. case1_4D-75_T00.txt) for 2 or more phases under {r}")
    return found


def read_dirlab_4d75(
    files: PathLike | dict[str, PathLike],
    grid: ImageGrid | dict[str, ImageGrid] | None = None,
    case: str | DirlabCase | None = None,
) -> dict[str, np.ndarray]:
    """Read DIR-LAB 4D-75 landmarks: ``{phase tag: (75, 3) LPS mm}`` in phase order.

    Each file lists the same 75 points, in the same order, as 1-based voxel indices ``x y z``
    (tabs or spaces, CRLF tolerated), like the 300-point files (:mod:`MLVIRNETLib.io.landmarks`).

    Args:
        files: a folder (see :func:`find_dirlab_4d75_files`) or ``{tag: file}``.
        grid: the image grid the indices refer to, one for every phase or one per tag; default
            :func:`dirlab_grid` ``(case)``.
        case: the DIR-LAB case (``"4dct:N"``): chooses the files in a folder and, without
            ``grid``, the grid.

    Raises:
        FileNotFoundError: a missing folder or file.
        ValueError: no grid and no case, a file without exactly :data:`FOUR_D_75_POINTS` points,
            a malformed line, or an index outside the image.
    """
    from .landmarks import read_landmarks

    found = find_dirlab_4d75_files(files, case) if not isinstance(files, dict) else {
        str(k).upper(): Path(v) for k, v in files.items()}
    if grid is None:
        if case is None:
            raise ValueError("4D-75 landmarks are voxel indices: give the image grid or the DIR-LAB case")
        grid = dirlab_grid(case)
    out: dict[str, np.ndarray] = {}
    for tag in sorted(found):
        g = grid[tag] if isinstance(grid, dict) else grid
        points = read_landmarks(found[tag], g, fmt="dirlab")
        if len(points) != FOUR_D_75_POINTS:
            raise ValueError(f"{found[tag]} holds {len(points)} points; a 4D-75 file holds {FOUR_D_75_POINTS}")
        out[tag] = points
    return out
