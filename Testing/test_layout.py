"""The package layout of docs/architecture.md: import directions, module sizes, self-reliant tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "MLVIRNETLib"

EVERYTHING = {"core", "io", "preprocessing", "losses", "networks", "simulation", "registration", "evaluation",
              "training", "cli", "mrml", "paths", "__init__"}
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "preprocessing": {"core"},
    "losses": {"core"},
    "networks": {"core", "io", "__init__"},
    "simulation": {"core", "io", "preprocessing", "paths"},
    "registration": {"core", "io", "preprocessing", "networks", "losses", "paths"},
    "evaluation": {"core", "io", "preprocessing", "registration", "simulation", "paths"},
    "training": EVERYTHING - {"cli", "mrml"},
    "cli": EVERYTHING - {"mrml"},
    "mrml": EVERYTHING - {"cli", "training"},
    "paths": set(),
}
"""Subpackage (or top-level module) -> what of MLVIRNETLib it may import (docs/architecture.md)."""


def _part(module: str) -> str:
    """``MLVIRNETLib.core.geometry`` -> ``core``; ``MLVIRNETLib`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _library_imports(source: str, package: list[str]) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every MLVIRNETLib import in ``source`` (module level and inside
    functions) of a module in ``package`` (e.g. ``["MLVIRNETLib", "core"]``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # "from .. import registration": a name may be a module
                    for alias in node.names:
                        folder = ROOT.joinpath(*module.split("."), alias.name)
                        is_module = folder.is_dir() or folder.with_suffix(".py").is_file()
                        found.append((node.lineno, f"{module}.{alias.name}" if is_module else module))
                    continue
            else:
                module = node.module
            found.append((node.lineno, module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, m) for line, m in found if m == "MLVIRNETLib" or m.startswith("MLVIRNETLib.")]


LIBRARY_FILES = sorted(LIBRARY.rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_imports_follow_the_allowed_directions(path):
    own = _part(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if own == "__init__":
        return  # the lazy public API may name anything
    package = list(path.relative_to(ROOT).parts[:-1])
    imports = _library_imports(path.read_text(encoding="utf-8"), package)
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module}" for line, module in imports
             if _part(module) != own and _part(module) not in ALLOWED[own]]
    assert not wrong, f"{own} may import only {sorted(ALLOWED[own])}:\n" + "\n".join(wrong)


def test_the_checker_sees_relative_absolute_and_lazy_imports():
    source = (
        "from ..registration import register\nfrom MLVIRNETLib.io import images\nfrom .geometry import ImageGrid\n"
        "def f():\n    from .. import mrml\n    import numpy\n"
    )
    found = [m for _, m in _library_imports(source, ["MLVIRNETLib", "core"])]
    assert sorted(found) == ["MLVIRNETLib.core.geometry", "MLVIRNETLib.io", "MLVIRNETLib.mrml", "MLVIRNETLib.registration"]


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_modules_are_of_readable_size(path):
    limit = 200 if path.parent.name == "cli" else 600
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= limit, f"{path.relative_to(ROOT)} has {lines} lines (at most {limit})"


def test_at_most_six_plain_modules_at_the_top():
    plain = sorted(p.name for p in LIBRARY.glob("*.py"))
    assert len(plain) <= 6, plain
    for folder in (p for p in LIBRARY.iterdir() if p.is_dir() and p.name != "__pycache__"):
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder.name} is not a package"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and ("May import" in doc or folder.name in ("cli", "training")), f"{folder.name}/__init__.py docstring"


def test_tests_never_skip_on_the_projects_own_modules():
    offenders = []
    for path in sorted((ROOT / "Testing").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("importorskip") and node.args
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("MLVIRNETLib")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "importorskip would hide a broken import: " + ", ".join(offenders)


def _package_data_patterns() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-data"]["MLVIRNETLib.resources"]


def _is_package_data(relative: Path, patterns: list[str]) -> bool:
    """setuptools' glob semantics for these patterns: ``*`` stays within one folder."""
    return any(len(relative.parts) == len(Path(p).parts) and relative.match(p) for p in patterns)


def test_every_resource_file_goes_into_the_wheel():
    """A pip-installed MLVIRNETLib carries every file of Resources/ (the current model and its card,
    the bundled CT, icons, UI); Python files are packages."""
    patterns = _package_data_patterns()
    files = [p.relative_to(ROOT / "Resources") for p in (ROOT / "Resources").rglob("*")
             if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    missing = [str(f) for f in files if not _is_package_data(f, patterns)]
    assert not missing, f"Resources files left out of the wheel by pyproject.toml's package-data: {missing}"
    assert not _is_package_data(Path("Models/v9/x/deeper.pt"), patterns)  # the check itself is not vacuous


def test_one_model_in_the_product():
    """Resources/ (the wheel's and the extension's source) holds exactly one model file, the shipped
    one, and the wheel's patterns admit no other model file (earlier models are at a git tag)."""
    models = sorted(p.relative_to(ROOT / "Resources").as_posix() for p in (ROOT / "Resources").rglob("*.pt"))
    assert models == ["Models/mlvirnet_default.pt"]
    patterns = _package_data_patterns()
    assert not _is_package_data(Path("Models/v5/mlvirnet_default.pt"), patterns)
    assert not _is_package_data(Path("Models/other.pt"), patterns)
