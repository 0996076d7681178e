"""Resolve the names a Slicer scripted module imports, without the Slicer application.

Every import statement of a file (at module level and inside functions) and every attribute it
reads from Slicer's Python package (``slicer.util.loadUI``) is checked against:

- the ``slicer-core`` wheel for MRML and VTK classes: ``from slicer import vtkMRML...`` must be an
  attribute of ``slicer``, and ``from vtkSlicerXxxPython import Name`` an attribute of the wheel's
  kit module ``slicer_core.vtkSlicerXxx`` (the kit that Slicer loads as ``vtkSlicerXxxPython``);
- Slicer's own Python sources for ``slicer.util``, ``slicer.ScriptedLoadableModule``,
  ``slicer.parameterNodeWrapper``, ``slicer.i18n``, ``slicer.packaging`` and the scripted modules
  of other extensions (``SampleData``, ``PyTorchUtils``): the names recorded in
  ``slicer_api.json`` (read at the commits named there), since the wheel has no Qt;
- the real library for ``MLVIRNETLib`` imports, and ``importlib`` for everything else.

Imports inside ``try: ... except ImportError`` are optional: an unknown module there is fine,
but a known module must still have the name.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

API_FILE = Path(__file__).with_name("slicer_api.json")

APP_MODULES = {"qt", "ctk", "slicer.app"}
"""Modules that only the Slicer application provides (PythonQt); their names are not checked."""

APP_ATTRIBUTES = {"app", "mrmlScene", "modules", "moduleNames", "util", "packaging", "i18n", "testing"}
"""Attributes of ``slicer`` that the application sets at start-up (or that are its submodules)."""

KIT_MODULE = re.compile(r"^(vtk\w+)Python$")


@dataclass(frozen=True)
class Problem:
    """A name that does not resolve: ``file:line: message``."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def load_api(path: Path = API_FILE) -> dict:
    """The recorded Slicer Python API: ``{module: {"names": [...], ...}}``."""
    return json.loads(path.read_text(encoding="utf-8"))["modules"]


def _optional_import_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a ``try`` whose handlers catch ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = " ".join(ast.unparse(h.type) for h in node.handlers if h.type is not None)
        if "ImportError" not in caught and "ModuleNotFoundError" not in caught:
            continue
        for child in node.body:
            for sub in ast.walk(child):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    lines.add(sub.lineno)
    return lines


class Resolver:
    """Checks the imports and Slicer attribute reads of Python source files."""

    def __init__(self, api: dict | None = None) -> None:
        self.api = api if api is not None else load_api()
        import slicer

        self.slicer = slicer

    # -- single names -------------------------------------------------------------------------
    def _api_names(self, module: str) -> set[str] | None:
        entry = self.api.get(module)
        return None if entry is None else set(entry["names"])

    def check_from(self, module: str, name: str) -> str | None:
        """Why ``from module import name`` fails, or None when it resolves."""
        kit = KIT_MODULE.match(module)
        if module == "slicer":
            if hasattr(self.slicer, name) or name in APP_ATTRIBUTES or f"slicer.{name}" in self.api:
                return None
            return f"'{name}' is not in slicer (slicer-core {self._version()})"
        if kit:
            try:
                kit_module = importlib.import_module(f"slicer_core.{kit.group(1)}")
            except ImportError:
                return f"no kit module {module} (slicer_core.{kit.group(1)} does not exist)"
            if not hasattr(kit_module, name):
                hint = " (it is in MRML Core: import it from slicer)" if hasattr(self.slicer, name) else ""
                return f"'{name}' is not in {module} (slicer_core.{kit.group(1)}){hint}"
            return None
        names = self._api_names(module)
        if names is not None:
            return None if name in names else f"'{name}' is not in {module} ({self._where(module)})"
        if module in APP_MODULES:
            return None
        if module.split(".")[0] == "MLVIRNETLib":
            imported = importlib.import_module(module)
            if hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None:
                return None
            return f"'{name}' is not in {module}"
        if importlib.util.find_spec(module) is None:
            return f"module {module} not found"
        return None

    def check_module(self, module: str) -> str | None:
        """Why ``import module`` fails, or None."""
        if module in APP_MODULES or module in self.api or module == "slicer":
            return None
        if KIT_MODULE.match(module):
            return self.check_from(module, "__name__")
        if module.startswith("slicer."):
            return f"module {module} is not part of Slicer's Python package (not in {API_FILE.name})"
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        return None if found is not None else f"module {module} not found"

    def check_attribute(self, chain: list[str]) -> str | None:
        """Why ``slicer.a.b`` fails: ``chain`` is ``["a", "b", ...]`` read from ``slicer``."""
        first = chain[0]
        if first in ("app", "mrmlScene", "modules", "moduleNames"):
            return None  # application objects
        sub = f"slicer.{first}"
        if sub in self.api:
            if len(chain) < 2:
                return None
            names = self._api_names(sub)
            return None if chain[1] in names else f"'{chain[1]}' is not in {sub} ({self._where(sub)})"
        if hasattr(self.slicer, first):
            return None
        return f"'{first}' is not an attribute of slicer (slicer-core {self._version()})"

    def check_member(self, module: str, chain: list[str]) -> str | None:
        """Why ``module.a.b`` fails for a recorded module (``b`` checked where members are recorded)."""
        entry = self.api[module]
        if chain[0] not in entry["names"]:
            return f"'{chain[0]}' is not in {module} ({self._where(module)})"
        members = entry.get("members", {}).get(chain[0])
        if members is not None and len(chain) > 1 and chain[1] not in members:
            return f"'{chain[1]}' is not a member of {module}.{chain[0]} ({self._where(module)})"
        return None

    # -- files --------------------------------------------------------------------------------
    def check_source(self, source: str, path: str = "<source>") -> list[Problem]:
        """Every import and ``slicer.<...>`` attribute read of ``source`` that does not resolve."""
        tree = ast.parse(source)
        optional = _optional_import_lines(tree)
        problems: list[Problem] = []
        modules = {  # local name -> recorded module, for ``SampleData.SampleDataLogic.x`` reads
            alias.asname or alias.name: alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name in self.api and not alias.name.startswith("slicer.")
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
                for alias in node.names:
                    why = self.check_from(node.module, alias.name)
                    if why and not (node.lineno in optional and "not found" in why):
                        problems.append(Problem(path, node.lineno, why))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    why = self.check_module(alias.name)
                    if why and node.lineno not in optional:
                        problems.append(Problem(path, node.lineno, why))
            elif isinstance(node, ast.Attribute):
                chain = _slicer_chain(node)
                if chain:
                    why = self.check_attribute(chain)
                    if why:
                        problems.append(Problem(path, node.lineno, why))
                root, attrs = _attribute_chain(node)
                if root in modules and attrs:
                    why = self.check_member(modules[root], attrs)
                    if why:
                        problems.append(Problem(path, node.lineno, why))
        return sorted(set(problems), key=lambda p: (p.line, p.message))

    def check_file(self, path: Path) -> list[Problem]:
        return self.check_source(Path(path).read_text(encoding="utf-8"), str(path))

    # -- helpers ------------------------------------------------------------------------------
    def _where(self, module: str) -> str:
        entry = self.api[module]
        return f"{entry['repo']}/{entry['path']} at {entry['commit'][:10]}"

    def _version(self) -> str:
        from importlib.metadata import version

        return version("slicer-core")


def _attribute_chain(node: ast.Attribute) -> tuple[str | None, list[str]]:
    """``("slicer", ["util", "loadUI"])`` for ``slicer.util.loadUI``; ``(None, [])`` unless the chain
    starts at a plain name."""
    parts: list[str] = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None, []
    return current.id, parts[::-1]


def _slicer_chain(node: ast.Attribute) -> list[str] | None:
    """``["util", "loadUI"]`` for ``slicer.util.loadUI`` (at most two levels); None otherwise."""
    root, parts = _attribute_chain(node)
    return parts[:2] if root == "slicer" and parts else None


def undefined_names(source: str, path: str = "<source>") -> list[str]:
    """pyflakes' undefined-name reports for ``source``, as ``file:line: message``."""
    from pyflakes import checker, messages

    tree = ast.parse(source, filename=path)
    found = checker.Checker(tree, filename=path)
    return [
        f"{path}:{m.lineno}: {m.message % m.message_args}"
        for m in found.messages
        if isinstance(m, (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport))
    ]
