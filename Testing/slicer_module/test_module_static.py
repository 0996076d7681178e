"""Static checks of the 3D Slicer module (no Slicer application needed).

The module file, its .ui, the parameter node, the icon and the extension files must agree with
each other: a widget the code uses must exist in the .ui, every bound parameter must exist in the
parameter node, and so on. These are the errors Slicer would only report when the module loads.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MLVIRNET" / "MLVIRNET.py"
UI = ROOT / "Resources" / "UI" / "MLVIRNET.ui"
ICON = ROOT / "Resources" / "Icons" / "MLVIRNET.png"
MRML_SIDE = sorted((ROOT / "MLVIRNETLib" / "mrml").glob("*.py"))


@pytest.fixture(scope="module")
def module_source() -> str:
    return MODULE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def module_tree(module_source) -> ast.Module:
    return ast.parse(module_source)


@pytest.fixture(scope="module")
def ui_root() -> ET.Element:
    return ET.parse(UI).getroot()


def ui_widgets(root: ET.Element) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in root.iter("widget")}


def widget_property(widget: ET.Element, name: str) -> ET.Element | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def class_def(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE.name}")


def parameter_fields(tree: ast.Module) -> dict[str, str]:
    """Field name -> annotation source of MLVIRNETParameterNode."""
    cls = class_def(tree, "MLVIRNETParameterNode")
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


# ----------------------------------------------------------------------------------------------
def test_module_compiles(tmp_path):
    py_compile.compile(str(MODULE), cfile=str(tmp_path / "MLVIRNET.pyc"), doraise=True)


def test_ui_is_valid_xml_with_expected_widgets(ui_root):
    assert ui_root.tag == "ui"
    top = ui_root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == "MLVIRNET"
    widgets = ui_widgets(ui_root)
    expected = {
        "fixedVolumeSelector": "qMRMLNodeComboBox",
        "movingVolumeSelector": "qMRMLNodeComboBox",
        "fixedMaskSelector": "qMRMLNodeComboBox",
        "movingMaskSelector": "qMRMLNodeComboBox",
        "outputTransformSelector": "qMRMLNodeComboBox",
        "outputVolumeSelector": "qMRMLNodeComboBox",
        "presetComboBox": "QComboBox",
        "modelSourceComboBox": "QComboBox",
        "modelFilePathLineEdit": "ctkPathLineEdit",
        "deviceComboBox": "QComboBox",
        "refineIterationsSpinBox": "QSpinBox",
        "affineCheckBox": "QCheckBox",
        "applyButton": "QPushButton",
        "cancelButton": "QPushButton",
        "progressBar": "QProgressBar",
        "fixedLandmarksSelector": "qMRMLNodeComboBox",
        "movingLandmarksSelector": "qMRMLNodeComboBox",
        "treTableSelector": "qMRMLNodeComboBox",
        "computeTreButton": "QPushButton",
        "loadDirLabCaseButton": "QPushButton",
        "importLandmarksButton": "QPushButton",
        "advancedCollapsibleButton": "ctkCollapsibleButton",
        "seriesCollapsibleButton": "ctkCollapsibleButton",
        "seriesSequenceSelector": "qMRMLNodeComboBox",
        "seriesVolumesSelector": "qMRMLCheckableNodeComboBox",
        "seriesReferenceSpinBox": "QSpinBox",
        "seriesJacobianCheckBox": "QCheckBox",
        "seriesApplyButton": "QPushButton",
    }
    for name, cls in expected.items():
        assert name in widgets, f"widget {name} missing from {UI.name}"
        assert widgets[name].get("class") == cls, f"{name} is a {widgets[name].get('class')}, expected {cls}"
    # every custom class used is declared
    declared = {c.findtext("class") for c in ui_root.iter("customwidget")}
    used = {w.get("class") for w in widgets.values()}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= declared
    # widget names are unique (Qt would rename duplicates silently)
    names = [w.get("name") for w in ui_root.iter("widget")]
    assert len(names) == len(set(names))


def test_ui_node_types_and_layout(ui_root):
    widgets = ui_widgets(ui_root)

    def node_types(name):
        prop = widget_property(widgets[name], "nodeTypes")
        return [s.text for s in prop.iter("string")]

    assert node_types("fixedVolumeSelector") == ["vtkMRMLScalarVolumeNode"]
    assert set(node_types("fixedMaskSelector")) == {"vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"}
    assert node_types("outputTransformSelector") == ["vtkMRMLGridTransformNode"]
    assert node_types("fixedLandmarksSelector") == ["vtkMRMLMarkupsFiducialNode"]
    assert node_types("seriesSequenceSelector") == ["vtkMRMLSequenceNode"]
    assert node_types("seriesVolumesSelector") == ["vtkMRMLScalarVolumeNode"]
    # advanced settings start collapsed, the inputs (with the preset) do not
    collapsed = widget_property(widgets["advancedCollapsibleButton"], "collapsed")
    assert collapsed is not None and collapsed.findtext("bool") == "true"
    assert widget_property(widgets["inputsCollapsibleButton"], "collapsed") is None
    inputs = widgets["inputsCollapsibleButton"]
    assert any(w.get("name") == "presetComboBox" for w in inputs.iter("widget"))
    # every node combo box gets the scene from the module widget
    receivers = {c.findtext("receiver") for c in ui_root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    combos = {n for n, w in widgets.items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")}
    assert combos == receivers


def test_every_ui_name_used_in_the_module_exists(module_source, ui_root):
    used = set(re.findall(r"self\.ui\.(\w+)", module_source))
    assert used, "the module uses no widgets from the .ui"
    missing = used - set(ui_widgets(ui_root))
    assert not missing, f"MLVIRNET.py uses self.ui.{sorted(missing)} which {UI.name} does not define"


def test_parameter_bindings_match_the_parameter_node(module_tree, ui_root):
    fields = parameter_fields(module_tree)
    bound = {}
    for widget in ui_root.iter("widget"):
        prop = widget_property(widget, "SlicerParameterName")
        if prop is not None:
            assert prop.get("stdset") == "0", "SlicerParameterName must be a dynamic property (stdset=0)"
            bound[prop.findtext("string")] = widget.get("class")
    assert set(bound) == set(fields), (
        f"bound in .ui but not in the parameter node: {sorted(set(bound) - set(fields))}; "
        f"in the parameter node but not bound: {sorted(set(fields) - set(bound))}"
    )
    for name, annotation in fields.items():
        if "Choice(" in annotation:
            assert bound[name] == "QComboBox", f"{name} has choices and needs a QComboBox"
        elif annotation.startswith("vtkMRML") or annotation.startswith("Union["):
            assert bound[name] == "qMRMLNodeComboBox", f"{name} is a node and needs a qMRMLNodeComboBox"
        elif annotation == "bool":
            assert bound[name] == "QCheckBox"
        elif annotation.startswith("pathlib.Path"):
            assert bound[name] == "ctkPathLineEdit"
        elif annotation.startswith("Annotated[int"):
            assert bound[name] == "QSpinBox"


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{cls.name}.{name} not found in {MODULE.name}")


def function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"function {name} not found in {MODULE.name}")


def calls(node: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)]


def called_names(node: ast.AST) -> set[str]:
    return {ast.unparse(c.func) for c in calls(node)}


def test_module_classes_follow_the_scripted_module_template(module_tree):
    names = {n.name for n in module_tree.body if isinstance(n, ast.ClassDef)}
    assert {"MLVIRNET", "MLVIRNETWidget", "MLVIRNETLogic", "MLVIRNETTest", "MLVIRNETParameterNode"} <= names
    bases = {n.name: [ast.unparse(b) for b in n.bases] for n in module_tree.body if isinstance(n, ast.ClassDef)}
    assert bases["MLVIRNET"] == ["ScriptedLoadableModule"]
    assert bases["MLVIRNETWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["MLVIRNETTest"] == ["ScriptedLoadableModuleTest"]
    assert "ScriptedLoadableModuleLogic" in bases["MLVIRNETLogic"] and "RegistrationLogic" in bases["MLVIRNETLogic"]
    decorators = [ast.unparse(d) for d in class_def(module_tree, "MLVIRNETParameterNode").decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    widget = class_def(module_tree, "MLVIRNETWidget")
    assert "slicer.util.loadUI" in called_names(method(widget, "setup"))
    assert "self._parameterNode.connectGui" in called_names(method(widget, "setParameterNode"))


def test_every_resource_the_module_names_exists(module_tree):
    named = {
        c.args[0].value
        for c in calls(module_tree)
        if ast.unparse(c.func) in ("resourcePath", "self.resourcePath") and c.args and isinstance(c.args[0], ast.Constant)
    }
    assert {"UI/MLVIRNET.ui", "Icons/MLVIRNET.png", "Icons/MLVIRNETSampleData.png"} <= named
    missing = [name for name in named if not (ROOT / "Resources" / name).is_file()]
    assert not missing, f"MLVIRNET.py names resources that do not exist: {missing}"


def test_sample_data_is_registered_at_startup_with_keywords_only(module_tree):
    init = method(class_def(module_tree, "MLVIRNET"), "__init__")
    connects = [ast.unparse(c) for c in calls(init) if ast.unparse(c.func) == "slicer.app.connect"]
    assert connects == ["slicer.app.connect('startupCompleted()', registerSampleData)"]
    registrations = [c for c in calls(function(module_tree, "registerSampleData"))
                     if ast.unparse(c.func).endswith("registerCustomSampleDataSource")]
    assert len(registrations) == 2
    defined = {n.name for n in module_tree.body if isinstance(n, ast.FunctionDef)}
    for call in registrations:
        # the positional order changed between Slicer versions: keywords only
        assert not call.args
        keywords = {k.arg: k.value for k in call.keywords}
        assert {"category", "sampleName", "thumbnailFileName"} <= set(keywords)
        if "customDownloader" in keywords:
            assert ast.unparse(keywords["customDownloader"]) in defined


def test_torch_is_imported_only_on_demand(module_tree):
    top_imports = {
        alias.name.split(".")[0]
        for node in module_tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert "torch" not in top_imports


def test_the_module_cites_the_paper(module_tree):
    init = method(class_def(module_tree, "MLVIRNET"), "__init__")
    texts = " ".join(n.value for n in ast.walk(init) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    assert "Hering A, van Ginneken B, Heldmann S. mlVIRNET: Multilevel" in texts and "MICCAI) 2019" in texts


def test_test_class_has_test_methods_and_runs_them_all(module_tree):
    cls = class_def(module_tree, "MLVIRNETTest")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    tests = {m for m in methods if m.startswith("test_")}
    assert len(tests) >= 4
    run_test = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    called = {a.attr for a in ast.walk(run_test) if isinstance(a, ast.Attribute) and a.attr.startswith("test_")}
    assert called == tests, f"runTest does not run {sorted(tests - called)}"


def test_widget_calls_only_existing_logic_methods(module_source):
    sys.path.insert(0, str(ROOT))
    try:
        from MLVIRNETLib.mrml.logic import RegistrationLogic
    finally:
        sys.path.remove(str(ROOT))
    used = set(re.findall(r"self\.logic\.(\w+)", module_source))
    logic = RegistrationLogic()
    missing = {m for m in used if not hasattr(logic, m)} - {"getParameterNode"}
    assert not missing, f"the widget calls logic methods that do not exist: {sorted(missing)}"


def test_logic_imports_without_slicer_or_torch():
    code = (
        "import sys, MLVIRNETLib.mrml as L; "
        "bad = [m for m in ('slicer', 'qt', 'ctk', 'vtk', 'torch') if m in sys.modules]; "
        "assert not bad, bad; L.RegistrationLogic()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    # and the module never touches the GUI toolkit, even lazily
    for path in MRML_SIDE:
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(qt|ctk)\b", source, flags=re.MULTILINE), path
        assert "slicer.app" not in source and "slicer.util" not in source, path


def test_icon_is_a_128_pixel_png():
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_extension_files():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in (
        "project(MLVIRNET)",
        'set(EXTENSION_CATEGORY "Registration")',
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(MLVIRNET)",
        "MLVIRNETLib/*.py",
        "Resources/*",
        "NO_INSTALL_SUBDIR",
        "list(APPEND MLVIRNET_RESOURCES pyproject.toml)",
    ):
        assert needle in top, f"top-level CMakeLists.txt lacks {needle!r}"
    module_cmake = (ROOT / "MLVIRNET" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in module_cmake and "WITH_GENERIC_TESTS" in module_cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module_cmake
    entry = json.loads((ROOT / "MLVIRNET.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["category"] == "Registration" and entry["tier"] in (1, 3, 5)
    s4ext = dict(
        line.split(None, 1) for line in (ROOT / "MLVIRNET.s4ext").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    for key in ("scm", "scmurl", "scmrevision", "depends", "homepage", "contributors", "category", "iconurl", "description", "screenshoturls"):
        assert s4ext.get(key, "").strip(), f"MLVIRNET.s4ext lacks {key}"
    assert s4ext["category"].strip() == "Registration"


def test_the_extension_addresses_name_files_of_this_repository_and_it_ships_one_model():
    """The icon and screenshot addresses of CMakeLists.txt and MLVIRNET.s4ext point into this
    repository's main branch at files that exist; the Resources/* glob that CMake installs (Python
    files and caches left out, as CMakeLists.txt filters them) holds one model file."""
    prefix = "https://raw.githubusercontent.com/MLVIRNET/SlicerMLVIRNET/main/"
    for name in ("CMakeLists.txt", "MLVIRNET.s4ext"):
        text = (ROOT / name).read_text(encoding="utf-8")
        addresses = re.findall(r"https://raw\.githubusercontent\.com/\S+?\.png", text)
        assert len(addresses) == 2, (name, addresses)
        for address in addresses:
            assert address.startswith(prefix) and (ROOT / address[len(prefix):]).is_file(), (name, address)
    installed = [p for p in (ROOT / "Resources").rglob("*") if p.is_file()
                 and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".py")]
    assert [p.name for p in installed if p.suffix == ".pt"] == ["mlvirnet_default.pt"]


def test_widget_calls_logic_methods_with_keywords_they_take_and_presets_the_library_has(module_tree):
    """The keywords the widget passes to ``self.logic.<method>(...)`` are parameters of that method,
    and the module's preset names map to presets of the library (both only run inside Slicer)."""
    import inspect

    sys.path.insert(0, str(ROOT))
    try:
        from MLVIRNETLib.mrml.logic import RegistrationLogic
        from MLVIRNETLib.registration.presets import PRESETS as LIBRARY_PRESETS
    finally:
        sys.path.remove(str(ROOT))
    for node in ast.walk(module_tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Attribute) and owner.attr == "logic" and isinstance(owner.value, ast.Name)
                and owner.value.id == "self") or not hasattr(RegistrationLogic, node.func.attr):
            continue
        parameters = inspect.signature(getattr(RegistrationLogic, node.func.attr)).parameters
        passed = {k.arg for k in node.keywords if k.arg is not None}
        assert passed <= set(parameters), (node.func.attr, node.lineno, sorted(passed - set(parameters)))
    presets = next(n.value for n in module_tree.body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "PRESETS" for t in n.targets))
    names = ast.literal_eval(presets)
    assert names and set(names.values()) <= set(LIBRARY_PRESETS), names
