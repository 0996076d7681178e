"""What the Slicer module must install before the library runs, read from ``pyproject.toml``.

The Slicer module installs the library's dependencies with ``slicer.packaging.pip_ensure`` (Slicer
5.11 and later) and PyTorch through the PyTorch extension where it is installed; this module holds
the parts of that decision that need no Slicer: which requirements, which are missing, and the
PyTorch version range. Standard library only (``tomllib`` needs Python 3.11, Slicer 5.13's).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

__all__ = ["TORCH", "missing_distributions", "pyproject_requirements", "requirement_name", "torch_requirement"]

TORCH = "torch"
"""Distribution name of PyTorch, installed separately (PyTorchUtils picks a build for the GPU)."""

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``"SimpleITK>=2.3"`` -> ``"simpleitk"``).

    Raises:
        ValueError: the string does not start with a distribution name.
    """
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _dependencies(pyproject: str | Path) -> list[str]:
    import tomllib

    path = Path(pyproject)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"MLVIRNET's pyproject.toml not found: {path}") from None
    try:
        return list(data["project"]["dependencies"])
    except KeyError:
        raise ValueError(f"{path} has no [project].dependencies") from None


def pyproject_requirements(pyproject: str | Path, without: tuple[str, ...] = (TORCH,)) -> list[str]:
    """``[project].dependencies`` of ``pyproject``, less the distributions named in ``without``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file has no ``[project].dependencies``.
    """
    skip = {requirement_name(n) for n in without}
    return [r for r in _dependencies(pyproject) if requirement_name(r) not in skip]


def torch_requirement(pyproject: str | Path) -> str:
    """The version range of torch in ``pyproject`` (e.g. ``">=2.2"``; ``""`` for any version)."""
    for requirement in _dependencies(pyproject):
        if requirement_name(requirement) == TORCH:
            return requirement.strip()[len(_NAME.match(requirement).group(1)) :].strip()
    return ""


def missing_distributions(requirements: list[str]) -> list[str]:
    """The requirements whose distribution is not installed (versions are not compared)."""
    missing = []
    for requirement in requirements:
        try:
            importlib.metadata.distribution(requirement_name(requirement))
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing
