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
    "_version": set(),
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
             if _part(module) != own and _part(module) not in ALLOWED[own] | {"_version"}]
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


# ----------------------------------------------------------------------------------------------
# docstrings describe the present; shared names are public
# ----------------------------------------------------------------------------------------------
import inspect  # noqa: E402
import re  # noqa: E402

_MODEL_VERSION = re.compile(r"(?<![\w.\-])v[1-9](?![\w.\-])")
"""A model version: a standalone token ``v1`` .. ``v9`` (``model v6``, ``v4 to v6``)."""

_ISSUE = re.compile(r"(?<![\w&#])#\d+\b")
"""An issue or pull-request number: ``#13``."""

_QUANTITY = re.compile(
    r"(?<![\w.])\d+(?:\.\d+)?(?:\s*(?:mm|ms|s|min|h|GB|MB|GiB|MiB|%|times)|x)(?![\w])"
)
"""A number with a unit of length, time, memory, a percentage or a factor."""

_MEASURED_CUE = re.compile(
    r"\b(?:measured|measures?|takes?|took|faster|slower|speed-?up|TRE|accuracy|accurate|errors?|reach(?:es|ed)?"
    r"|peak memory|benchmark\w*|held-out|gains?|costs?|bought|on (?:this|a|an|the) \S*\s?(?:CPU|GPU|EPYC|H100|H200)"
    r"|H100|H200|EPYC)\b",
    re.IGNORECASE,
)
"""Words that make a quantity in the same sentence a measurement rather than a setting."""


def docstring_problems(source: str) -> list[str]:
    """What a module's docstrings must not hold: ``"LINE: kind: text"`` for each module, class and
    function docstring of ``source`` that names a model version, an issue number, or a measured
    figure.

    The rule for a measured figure: a sentence of the docstring holds a number with a unit (mm, s,
    ms, min, h, GB, MB, %, x, times) and a word that makes it a measurement (measured, takes,
    faster, slower, TRE, accuracy, error, reached, peak, a named machine, ...). A number with a unit
    alone is a setting or a definition (``1.5 mm voxels``, ``a 10 mm margin``, ``default 3 mm``)
    and passes; ``takes 2.4 s`` and ``0.35 mm TRE`` do not.
    """
    tree = ast.parse(source)
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docs = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            docs.append((node.body[0].lineno if getattr(node, "body", None) else 1, doc))
        # attribute docstrings: a string right after an assignment in a module or class body
        for before, after in zip(node.body, node.body[1:]):
            if (isinstance(before, (ast.Assign, ast.AnnAssign)) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs.append((after.lineno, inspect.cleandoc(after.value.value)))
    problems = []
    for line, doc in docs:
        for match in _MODEL_VERSION.finditer(doc):
            problems.append(f"{line}: model version: {match.group(0)!r}")
        for match in _ISSUE.finditer(doc):
            problems.append(f"{line}: issue number: {match.group(0)!r}")
        for sentence in re.split(r"(?<=[.;:])\s+|\n\s*\n", doc):
            quantity = _QUANTITY.search(sentence)
            cue = _MEASURED_CUE.search(sentence)
            if quantity and cue:
                problems.append(f"{line}: measured figure: {quantity.group(0)!r} ({cue.group(0)!r}) in "
                                f"{' '.join(sentence.split())[:100]!r}")
    return problems


DOCSTRING_FILES = sorted(LIBRARY.rglob("*.py")) + sorted((ROOT / "MLVIRNET").rglob("*.py"))


@pytest.mark.parametrize("path", DOCSTRING_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docstrings_hold_no_versions_issues_or_figures(path):
    """Docstrings say what the code does and why; figures, model versions and issue numbers go to
    docs/ (with their commands) and to commit messages."""
    problems = docstring_problems(path.read_text(encoding="utf-8"))
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_docstring_checker_catches_planted_examples():
    def doc(text: str) -> str:
        return f'def f():\n    """{text}"""\n'

    assert docstring_problems(doc("The network stage takes 2.4 s on a CPU."))
    assert docstring_problems(doc("Refinement gives 0.35 mm TRE on the bundled CT."))
    assert docstring_problems(doc("Twice as fast: 1.8 times faster than before."))
    assert docstring_problems(doc("Measured peak memory 1.5 GB."))
    assert docstring_problems(doc("With model v6 the result is better."))
    assert docstring_problems(doc("See #13 for the discussion."))
    assert docstring_problems('"""Module docstring: v5 to v6."""\n')
    assert docstring_problems('class A:\n    """Up to 4.1 mm of error one way."""\n')
    assert docstring_problems('LEVEL = 0\n"""Level 1 costs 16 s more on a CPU."""\n')
    assert docstring_problems('class A:\n    size: int = 96\n    """Model v6 was trained at this size."""\n')
    # settings and definitions pass
    assert not docstring_problems(doc("Resample to 1.5 mm voxels with a 10 mm margin (default 3 mm)."))
    assert not docstring_problems(doc("``slab_voxels`` voxels per slab; 0 disables it."))
    assert not docstring_problems(doc("On a 72 x 80 x 80 level the bookkeeping took longer; 20 mm peak displacement."))
    assert not docstring_problems(doc("Uses torch.nn.functional and SimpleITK v2.3 API names like vtk.v9x."))
    assert not docstring_problems('SPACING = 3.0\n"""Working voxel size of the lung mask, mm (default 3 mm)."""\n')


def _private_imports(path: Path) -> list[str]:
    """``"LINE: module.name"`` for each private name (``_x``, not ``__x__``) that ``path`` imports
    from another subpackage of MLVIRNETLib (or, for the Slicer module, from MLVIRNETLib at all)."""
    relative = path.relative_to(ROOT)
    package = list(relative.parts[:-1])
    own = _part(".".join(relative.with_suffix("").parts)) if relative.parts[0] == "MLVIRNETLib" else None
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        if node.level:
            base = package[: len(package) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if not (module == "MLVIRNETLib" or module.startswith("MLVIRNETLib.")):
            continue
        if own is not None and _part(module) == own:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not (alias.name.startswith("__") and alias.name.endswith("__")):
                found.append(f"{node.lineno}: {module}.{alias.name}")
    return found


@pytest.mark.parametrize("path", DOCSTRING_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_is_imported_from_another_subpackage(path):
    """What another subpackage needs is public in its module."""
    found = _private_imports(path)
    assert not found, f"{path.relative_to(ROOT)} imports private names of another subpackage:\n" + "\n".join(found)


def test_the_private_import_checker_catches_a_planted_example(tmp_path, monkeypatch):
    folder = ROOT / "MLVIRNETLib" / "simulation"
    planted = folder / "_planted_for_test.py"
    try:
        planted.write_text("from ..preprocessing.morphology import _image, dilate\nfrom .breathing import _x\n"
                           "from .._version import __version__\n")
        assert _private_imports(planted) == ["1: MLVIRNETLib.preprocessing.morphology._image"]
    finally:
        planted.unlink()
