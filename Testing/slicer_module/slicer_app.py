"""Run the MLVIRNET Slicer module as the Slicer application runs it, without the application.

What is real:

- Slicer's own Python package (``slicer.util``, ``ScriptedLoadableModule``, ``parameterNodeWrapper``,
  ``i18n``, ``packaging``) and the Sample Data module, from ``../shared/slicer_py`` (Slicer commit
  583e9b37), used unchanged: the ``slicer`` package's ``__init__.py`` loads the MRML kits as it does
  in the application;
- MRML, VTK and the module logics (volumes, markups, colors, sequences, application logic) from the
  ``slicer-core`` wheel: a real ``vtkMRMLScene`` with a cache folder, real storage nodes and readers;
- the module's own files: ``MLVIRNET/MLVIRNET.py``, its ``.ui``, the library.

What is a stand-in (``qt_standins.py`` and :class:`Application` below): ``qt``, ``ctk``, the
``qMRML...`` widgets and ``slicer.app`` (event processing, the IO manager that reads files with the
real MRML readers, the module manager's signals). ``processEvents()`` runs the user actions a test
queued with :meth:`Application.postEvent`: that is what Slicer's event loop does while a
registration calls ``processEvents`` to keep the panel alive.

The environment is installed into ``sys.modules`` for a test package and removed again after it
(:func:`installed`), since the ``slicer`` package of the application and the ``slicer`` package of the
wheel share a name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Callable, Iterator

import qt_standins

ROOT = Path(__file__).resolve().parents[2]
SLICER_PY = ROOT.parent / "shared" / "slicer_py"
SLICER_PACKAGE = SLICER_PY / "Base" / "Python" / "slicer"
SAMPLE_DATA_DIR = SLICER_PY / "Modules" / "Scripted" / "SampleData"
MODULE_FILE = ROOT / "MLVIRNET" / "MLVIRNET.py"

_OWNED_PREFIXES = ("slicer", "qt", "ctk", "SampleData", "MLVIRNET")


def available() -> str | None:
    """Why the harness cannot run here (None when it can)."""
    if not (SLICER_PACKAGE / "__init__.py").is_file() or not (SAMPLE_DATA_DIR / "SampleData.py").is_file():
        return f"Slicer's Python sources are not at {SLICER_PY} (see shared/slicer_py/README.md)"
    try:
        import slicer_core  # noqa: F401
    except ImportError:
        return "needs the slicer-core wheel (pip install -e '.[slicer]')"
    return None


# ----------------------------------------------------------------------------------------------
# slicer.app
# ----------------------------------------------------------------------------------------------
class IOManager:
    """``slicer.app.coreIOManager()``: file types and loading with the real MRML readers."""

    def __init__(self, application: "Application") -> None:
        self.application = application
        self.loaded: list[tuple[str, str]] = []

    @staticmethod
    def fileType(path) -> str:
        name = str(path).lower()
        if name.endswith((".mrk.json", ".fcsv")):
            return "MarkupsFile"
        if name.endswith((".h5", ".tfm", ".txt")):
            return "TransformFile"
        if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
            return "VolumeFile"
        return "NoFile"

    def loadNodes(self, fileType: str, properties: dict, loadedNodes=None, userMessages=None) -> bool:
        import slicer

        path = str(properties["fileName"])
        self.loaded.append((fileType, path))
        node = None
        if fileType == "VolumeFile":
            options = 1 if properties.get("labelmap") else 0
            name = properties.get("name") or Path(path).name.split(".")[0]
            node = self.application.volumesLogic.AddArchetypeVolume(path, name, options)
        elif fileType == "MarkupsFile":
            nodeID = self.application.markupsLogic.LoadMarkups(path, properties.get("name") or "")
            node = slicer.mrmlScene.GetNodeByID(nodeID) if nodeID else None
        elif fileType == "TransformFile":
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode")
            storage = node.CreateDefaultStorageNode()
            slicer.mrmlScene.AddNode(storage)
            storage.UnRegister(None)
            storage.SetFileName(path)
            node.SetAndObserveStorageNodeID(storage.GetID())
            if not storage.ReadData(node):
                slicer.mrmlScene.RemoveNode(node)
                node = None
        if node is None:
            if userMessages is not None:
                userMessages.AddMessage(3, f"could not read {path} as {fileType}")
            return False
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True

    @staticmethod
    def fileWriterFileType(node) -> str:
        for className, fileType in (("vtkMRMLVolumeNode", "VolumeFile"), ("vtkMRMLTransformNode", "TransformFile"),
                                    ("vtkMRMLMarkupsNode", "MarkupsFile")):
            if node.IsA(className):
                return fileType
        return "NoFile"

    def saveNodes(self, fileType: str, properties: dict, userMessages=None) -> bool:
        import slicer

        node = slicer.mrmlScene.GetNodeByID(properties["nodeID"])
        storage = node.GetStorageNode()
        if storage is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
        storage.SetFileName(str(properties["fileName"]))
        return bool(storage.WriteData(node))


class Settings(qt_standins.QSettings):
    pass


class ModuleManager(qt_standins.QObject):
    SIGNALS = ("moduleAboutToBeUnloaded", "moduleLoaded")


class Application(qt_standins.QObject):
    """``slicer.app``: the calls the module and Slicer's Python code make of ``qSlicerApplication``."""

    SIGNALS = ("startupCompleted", "aboutToQuit")
    applicationName = "Slicer"
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def __init__(self, scene, temporaryPath: Path) -> None:
        super().__init__()
        import slicer

        self.temporaryPath = str(temporaryPath)
        self._scene = scene
        self._events: list[Callable[[], None]] = []
        self.processEventsCalls = 0
        self._ioManager = IOManager(self)
        self._moduleManager = ModuleManager()
        self._applicationLogic = slicer.vtkSlicerApplicationLogic()
        self._applicationLogic.SetMRMLScene(scene)
        self.colorLogic = slicer.vtkSlicerColorLogic()
        self.colorLogic.SetMRMLApplicationLogic(self._applicationLogic)
        self.colorLogic.SetMRMLScene(scene)
        self._applicationLogic.SetModuleLogic("Colors", self.colorLogic)
        self.volumesLogic = slicer.vtkSlicerVolumesLogic()
        self.volumesLogic.SetMRMLApplicationLogic(self._applicationLogic)
        self.volumesLogic.SetMRMLScene(scene)
        self.markupsLogic = slicer.vtkSlicerMarkupsLogic()
        self.markupsLogic.SetMRMLApplicationLogic(self._applicationLogic)
        self.markupsLogic.SetMRMLScene(scene)
        # the Sequences module: its logic registers the sequence browser node and updates proxy nodes
        self.sequencesLogic = slicer.vtkSlicerSequencesLogic()
        self.sequencesLogic.SetMRMLApplicationLogic(self._applicationLogic)
        self.sequencesLogic.SetMRMLScene(scene)
        self._applicationLogic.SetModuleLogic("Sequences", self.sequencesLogic)

    # -- event loop --
    def postEvent(self, callback: Callable[[], None]) -> None:
        """Queue a user action: it runs at the next ``processEvents()``, as a click would."""
        self._events.append(callback)

    def processEvents(self, *args) -> None:
        self.processEventsCalls += 1
        events, self._events = self._events, []
        for callback in events:
            callback()

    # -- what qSlicerApplication offers --
    def testingEnabled(self) -> bool:
        return False  # as for a user: errors are shown, confirmations asked

    def commandOptions(self):
        return types.SimpleNamespace(noMainWindow=True)

    def topLevelWidgets(self) -> list:
        return []

    def coreIOManager(self) -> IOManager:
        return self._ioManager

    def ioManager(self) -> IOManager:
        return self._ioManager

    def moduleManager(self) -> ModuleManager:
        return self._moduleManager

    def applicationLogic(self):
        return self._applicationLogic

    def mrmlScene(self):
        return self._scene

    def layoutManager(self):
        return None

    def settings(self) -> Settings:
        return Settings()

    def userSettings(self) -> Settings:
        return Settings()

    def moduleDocumentationUrl(self, name: str) -> str:
        return self.documentationBaseUrl + name

    def translate(self, context: str, text: str) -> str:
        return text

    def setOverrideCursor(self, cursor) -> None:
        qt_standins.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:
        qt_standins.QApplication.restoreOverrideCursor()


class ModuleParent(qt_standins.QObject):
    """The ``qSlicerScriptedLoadableModule`` a scripted module's constructor fills in."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path)
        self.title = ""
        self.categories: list = []
        self.dependencies: list = []
        self.contributors: list = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.icon = None
        self.isEntered = False


# ----------------------------------------------------------------------------------------------
# The environment
# ----------------------------------------------------------------------------------------------
class Harness:
    """The installed environment: the real ``slicer`` package, the scene and the app stand-in."""

    def __init__(self, slicer, app: Application, sampleData, logRecords: list) -> None:
        self.slicer = slicer
        self.app = app
        self.SampleData = sampleData
        self.logRecords = logRecords
        self.module = None
        self.moduleInstance = None

    def discoverModule(self):
        """Import ``MLVIRNET.py`` and construct its module class, as Slicer does at start-up, then
        emit ``startupCompleted`` (when modules register their Sample Data)."""
        spec = importlib.util.spec_from_file_location("MLVIRNET", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["MLVIRNET"] = module
        spec.loader.exec_module(module)
        parent = ModuleParent(MODULE_FILE)
        self.moduleInstance = module.MLVIRNET(parent)
        self.slicer.modules.MLVIRNETInstance = self.moduleInstance
        self.app.startupCompleted.emit()
        self.module = module
        return module

    def createWidget(self):
        """The module panel as Slicer creates it when the user opens the module."""
        parent = self.slicer.qMRMLWidget()
        parent.setLayout(qt_standins.QVBoxLayout())
        parent.setMRMLScene(self.slicer.mrmlScene)
        widget = self.module.MLVIRNETWidget(parent)
        widget.setup()
        parent.isEntered = True
        widget.enter()
        self.slicer.modules.MLVIRNETWidget = widget
        return widget

    def unloadModule(self) -> None:
        """What "Reload" and application exit do: ``moduleAboutToBeUnloaded`` reaches ``cleanup()``."""
        self.app.moduleManager().moduleAboutToBeUnloaded.emit("MLVIRNET")

    @property
    def slotErrors(self) -> list:
        """Exceptions raised in Qt slots (PythonQt prints them; the application carries on)."""
        return qt_standins.SLOT_ERRORS

    def errors(self) -> list[str]:
        """Messages of every error shown to the user (``slicer.util.errorDisplay``)."""
        return [r.getMessage() for r in self.logRecords if r.levelno >= logging.ERROR]

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.logRecords if r.levelno == logging.WARNING]


class _Recorder(logging.Handler):
    def __init__(self, records: list) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _kitsModule(slicer_core) -> types.ModuleType:
    """``slicer.kits`` as Slicer generates it, naming the kits of the wheel (``<Kit>Python``)."""
    kits = []
    for name in dir(slicer_core):
        value = getattr(slicer_core, name)
        if isinstance(value, types.ModuleType) and value.__name__.startswith("slicer_core."):
            alias = f"{name}Python"
            sys.modules[alias] = value
            kits.append(alias)
    module = types.ModuleType("slicer.kits")
    module.available_kits = kits
    return module


@contextlib.contextmanager
def installed(temporaryPath: Path) -> Iterator[Harness]:
    """Install the environment in ``sys.modules``; everything is restored on exit."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _OWNED_PREFIXES}
    savedPath = list(sys.path)
    for key in saved:
        del sys.modules[key]
    records: list = []
    recorder = _Recorder(records)
    rootLogger = logging.getLogger()
    rootLevel = rootLogger.level
    rootLogger.setLevel(logging.INFO)  # as Slicer's log, which records info messages
    rootLogger.addHandler(recorder)
    try:
        import slicer_core

        sys.modules["qt"] = qt_standins.qtModule()
        sys.modules["ctk"] = qt_standins.ctkModule()
        sys.modules["slicer.kits"] = _kitsModule(slicer_core)
        spec = importlib.util.spec_from_file_location(
            "slicer", SLICER_PACKAGE / "__init__.py", submodule_search_locations=[str(SLICER_PACKAGE)]
        )
        slicer = importlib.util.module_from_spec(spec)
        sys.modules["slicer"] = slicer
        spec.loader.exec_module(slicer)
        # what the PythonQt kits put into the slicer namespace in the application
        for name in ("qMRMLWidget", "qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qSlicerWidget", "qMRMLSpinBox",
                     "qMRMLSliderWidget", "qMRMLRangeWidget"):
            setattr(slicer, name, getattr(qt_standins, name))
        scene = slicer.vtkMRMLScene()
        cache = slicer.vtkCacheManager()
        cacheFolder = Path(temporaryPath) / "cache"
        cacheFolder.mkdir(parents=True, exist_ok=True)
        cache.SetRemoteCacheDirectory(str(cacheFolder))
        scene.SetCacheManager(cache)
        slicer.mrmlScene = scene
        slicer.app = Application(scene, Path(temporaryPath))
        sys.path.insert(0, str(SAMPLE_DATA_DIR))
        import SampleData

        sampleParent = ModuleParent(SAMPLE_DATA_DIR / "SampleData.py")
        slicer.modules.SampleDataInstance = SampleData.SampleData(sampleParent)
        yield Harness(slicer, slicer.app, SampleData, records)
    finally:
        import gc

        for combo in qt_standins.qMRMLNodeComboBox.INSTANCES:
            combo.detach()
        qt_standins.qMRMLNodeComboBox.INSTANCES.clear()
        gc.collect()  # Python callbacks of VTK observers go while their scene is still alive
        rootLogger.removeHandler(recorder)
        rootLogger.setLevel(rootLevel)
        for key in [k for k in sys.modules if k.split(".")[0] in _OWNED_PREFIXES or _isKitAlias(k)]:
            del sys.modules[key]
        sys.modules.update(saved)
        sys.path[:] = savedPath
        qt_standins.MESSAGE_BOX_ANSWERS.clear()
        qt_standins.MESSAGE_BOXES.clear()
        qt_standins.SLOT_ERRORS.clear()
        qt_standins.QApplication.overrideCursors.clear()
        qt_standins.QSettings._values.clear()


def _isKitAlias(key: str) -> bool:
    module = sys.modules.get(key)
    return key.endswith("Python") and getattr(module, "__name__", "").startswith("slicer_core.")
