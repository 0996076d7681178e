"""What the Slicer module installs: requirements read from pyproject.toml, torch kept apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from MLVIRNETLib.mrml.dependencies import (
    missing_distributions,
    pyproject_requirements,
    requirement_name,
    torch_requirement,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.mark.parametrize(
    "text, name",
    [("SimpleITK>=2.3", "simpleitk"), ("numpy", "numpy"), ("  torch >= 2.2", "torch"), ("slicer_core==5.13.*", "slicer-core"),
     ("Foo.Bar[extra]>1", "foo-bar")],
)
def test_requirement_name(text, name):
    assert requirement_name(text) == name


def test_requirement_name_rejects_non_requirements():
    with pytest.raises(ValueError, match="not a requirement"):
        requirement_name(">=2")


def test_the_project_requirements_without_torch():
    requirements = pyproject_requirements(PYPROJECT)
    names = {requirement_name(r) for r in requirements}
    assert "torch" not in names
    assert {"numpy", "simpleitk"} <= names
    assert torch_requirement(PYPROJECT).startswith(">=")


def test_missing_distributions_are_those_not_installed():
    assert missing_distributions(["numpy>=1", "SimpleITK"]) == []
    assert missing_distributions(["numpy", "no-such-distribution-mlvirnet>=1"]) == ["no-such-distribution-mlvirnet>=1"]


def test_a_pyproject_without_dependencies_is_a_clear_error(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"no \[project\].dependencies"):
        pyproject_requirements(path)
    with pytest.raises(FileNotFoundError, match="pyproject.toml not found"):
        pyproject_requirements(tmp_path / "missing" / "pyproject.toml")


def test_any_torch_version_when_unpinned(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\ndependencies = ["torch", "numpy"]\n', encoding="utf-8")
    assert torch_requirement(path) == ""
    assert pyproject_requirements(path) == ["numpy"]
