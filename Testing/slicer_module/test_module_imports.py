"""Every name the Slicer module and the Logic import resolves in Slicer 5.13, without the app.

MRML and VTK classes are resolved against the ``slicer-core`` wheel, names from Slicer's Python
package against its sources (``slicer_api.json``), see ``slicer_names.py``. A failure names the
file, the line and the name, e.g. ``MLVIRNET.py:37: 'vtkMRMLMarkupsFiducialNode' is not in
vtkSlicerMarkupsModuleMRMLPython (...) (it is in MRML Core: import it from slicer)``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e '.[slicer]')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core (no vtkMRMLScene)", allow_module_level=True)

from slicer_names import Resolver, load_api, undefined_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MLVIRNET" / "MLVIRNET.py"
SLICER_SIDE = [MODULE, *sorted((ROOT / "MLVIRNETLib" / "mrml").glob("*.py"))]


@pytest.fixture(scope="module")
def resolver() -> Resolver:
    return Resolver()


@pytest.mark.parametrize("path", SLICER_SIDE, ids=lambda p: p.name)
def test_every_import_and_slicer_attribute_resolves(resolver, path):
    problems = resolver.check_file(path)
    assert not problems, "names that do not resolve in Slicer 5.13:\n" + "\n".join(map(str, problems))


@pytest.mark.parametrize("path", SLICER_SIDE, ids=lambda p: p.name)
def test_no_undefined_names(path):
    found = undefined_names(path.read_text(encoding="utf-8"), str(path))
    assert not found, "\n".join(found)


def test_the_pre_5_10_kit_imports_are_reported_with_line_and_name(resolver):
    """The defect of the module before the fix: markups and segmentation nodes from their kits."""
    source = textwrap.dedent(
        """\
        import slicer
        from slicer import vtkMRMLScalarVolumeNode
        from vtkSlicerMarkupsModuleMRMLPython import vtkMRMLMarkupsFiducialNode
        from vtkSlicerSegmentationsModuleMRMLPython import vtkMRMLSegmentationNode
        from vtkSlicerMarkupsModuleMRMLPython import vtkMRMLMarkupsJsonStorageNode
        """
    )
    problems = [str(p) for p in resolver.check_source(source, "MLVIRNET.py")]
    assert len(problems) == 2, problems
    assert problems[0].startswith("MLVIRNET.py:3: 'vtkMRMLMarkupsFiducialNode' is not in vtkSlicerMarkupsModuleMRMLPython")
    assert "import it from slicer" in problems[0]
    assert problems[1].startswith("MLVIRNET.py:4: 'vtkMRMLSegmentationNode' is not in vtkSlicerSegmentationsModuleMRMLPython")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("from slicer import vtkMRMLNoSuchNode", "'vtkMRMLNoSuchNode' is not in slicer"),
        ("from slicer.util import loadUi", "'loadUi' is not in slicer.util"),
        ("from slicer.packaging import pip_ensure_all", "'pip_ensure_all' is not in slicer.packaging"),
        ("from slicer.parameterNodeWrapper import Choices", "'Choices' is not in slicer.parameterNodeWrapper"),
        ("import slicer.nosuchmodule", "not part of Slicer's Python package"),
        ("from vtkSlicerNoSuchKitPython import vtkFoo", "no kit module vtkSlicerNoSuchKitPython"),
        ("from MLVIRNETLib.mrml import NoSuchLogic", "'NoSuchLogic' is not in MLVIRNETLib.mrml"),
        ("import nosuchpackage_mlvirnet", "module nosuchpackage_mlvirnet not found"),
        ("x = slicer.util.pipInstall", "'pipInstall' is not in slicer.util"),
        ("x = slicer.vtkNoSuchLogic", "'vtkNoSuchLogic' is not an attribute of slicer"),
    ],
)
def test_unresolvable_names_are_reported(resolver, line, expected):
    problems = resolver.check_source("import slicer\n" + line + "\n", "m.py")
    assert [p.line for p in problems] == [2]
    assert expected in problems[0].message


def test_names_that_exist_pass(resolver):
    source = textwrap.dedent(
        """\
        import qt, ctk, vtk, slicer
        from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLSegmentationNode, vtkMRMLGridTransformNode
        from slicer.util import VTKObservationMixin, loadUI
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest
        from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
        from slicer.i18n import tr
        from slicer.packaging import load_pyproject_dependencies, pip_ensure
        from vtkSlicerMarkupsModuleMRMLPython import vtkMRMLMarkupsJsonStorageNode
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        x = slicer.util.tryWithErrorDisplay, slicer.app.processEvents, slicer.vtkOrientedGridTransform
        """
    )
    assert resolver.check_source(source, "m.py") == []


def test_an_optional_import_still_needs_the_name_in_a_known_module(resolver):
    source = "try:\n    from SampleData import SampleDataLogics\nexcept ImportError:\n    pass\n"
    problems = resolver.check_source(source, "m.py")
    assert len(problems) == 1 and "'SampleDataLogics' is not in SampleData" in problems[0].message


def test_the_recorded_api_names_its_sources():
    api = load_api()
    for module in ("slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n",
                   "slicer.packaging", "SampleData", "PyTorchUtils"):
        entry = api[module]
        assert entry["repo"] and entry["path"] and entry["commit"], module
        assert entry["names"], module


def test_undefined_names_are_found():
    found = undefined_names("def f():\n    return undefined_thing\n", "m.py")
    assert found == ["m.py:2: undefined name 'undefined_thing'"]


def test_members_of_recorded_scripted_modules_are_checked(resolver):
    source = textwrap.dedent(
        """\
        import SampleData
        SampleData.SampleDataLogic.registerCustomSampleDataSource(category="x")
        SampleData.SampleDataLogic.registerSampleDataSource(category="x")
        """
    )
    problems = resolver.check_source(source, "m.py")
    assert [(p.line, "'registerSampleDataSource' is not a member of SampleData.SampleDataLogic" in p.message)
            for p in problems] == [(3, True)]
