"""Stand-ins for the parts of Qt, CTK and Slicer's Qt widgets that the MLVIRNET module touches.

In the Slicer application ``qt``, ``ctk`` and the ``qMRML...`` widgets are C++ classes wrapped by
PythonQt. They exist only inside the application, so the harness (``slicer_app.py``) provides
these small Python classes in their place. Each one does what its Qt original does for the calls
the module and Slicer's own Python code make, and nothing more:

- properties are attributes, and changing one emits the matching signal only when the value
  changes (``QCheckBox.checked`` -> ``toggled``/``stateChanged``, ``QComboBox.currentIndex`` ->
  ``currentIndexChanged``, ...), as Qt does;
- ``connect("clicked(bool)", slot)`` and ``signal.connect(slot)`` both work, and a slot receives
  as many signal arguments as it takes (PythonQt's rule);
- a disabled widget (or one inside a disabled parent) refuses the user actions of
  :mod:`slicer_app` (``click``, ``choose``), as a greyed-out control does;
- ``QUiLoader`` builds the widget tree of a ``.ui`` file: classes, names, properties (dynamic ones
  such as ``SlicerParameterName`` too) and its signal/slot connections;
- ``qMRMLNodeComboBox`` lists the nodes of its types in a real MRML scene, follows node additions
  and removals, and selects the first node when "None" is not allowed, as the real one does;
- message boxes are answered only by answers a test queued (``MESSAGE_BOX_ANSWERS``); an
  unexpected dialog raises, so nothing says "yes" on its own.
"""

from __future__ import annotations

import inspect
import logging
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

# ----------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------


def _callWithArity(slot: Callable, args: tuple) -> Any:
    """Call ``slot`` with as many leading ``args`` as it accepts (PythonQt's rule for slots)."""
    try:
        signature = inspect.signature(slot)
    except (TypeError, ValueError):
        return slot(*args)
    parameters = list(signature.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return slot(*args)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return slot(*args[: len(positional)])


class Signal:
    """A Qt signal: ``connect``, ``disconnect``, ``emit``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._slots: list[Callable] = []

    def connect(self, slot: Callable) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Callable | None = None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)
        else:
            raise RuntimeError(f"disconnect: {slot!r} is not connected to {self.name}")

    def emit(self, *args) -> None:
        """Call every slot. An exception in a slot is reported and the others still run: PythonQt
        prints the traceback and returns to the event loop (recorded in :data:`SLOT_ERRORS`)."""
        for slot in list(self._slots):
            try:
                _callWithArity(slot, args)
            except Exception as error:  # noqa: BLE001 - what PythonQt does with a failing slot
                SLOT_ERRORS.append(error)
                logging.getLogger("PythonQt").error("exception in slot %r of signal %s: %r", slot, self.name, error)

    def __len__(self) -> int:
        return len(self._slots)


SLOT_ERRORS: list[BaseException] = []
"""Exceptions raised by slots (PythonQt prints them and carries on)."""


def _signalName(signature: str) -> str:
    return signature.split("(", 1)[0].strip()


# ----------------------------------------------------------------------------------------------
# Objects and widgets
# ----------------------------------------------------------------------------------------------
class QObject:
    """Object name, parent/children, dynamic properties and signals."""

    SIGNALS: tuple[str, ...] = ("destroyed",)

    def __init__(self, parent: "QObject | None" = None) -> None:
        object.__setattr__(self, "_signals", {})
        object.__setattr__(self, "_dynamic", {})
        self._children: list[QObject] = []
        self._parent = None
        self.objectName = ""
        if parent is not None:
            self.setParent(parent)

    def _allSignals(self) -> set[str]:
        names: set[str] = set()
        for cls in type(self).__mro__:
            names.update(getattr(cls, "SIGNALS", ()))
        return names

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._allSignals():
            signal = self._signals.get(name)
            if signal is None:
                signal = self._signals[name] = Signal(name)
            return signal
        raise AttributeError(f"{type(self).__name__} stand-in has no attribute {name!r}")

    # PythonQt exposes objectName as "name" too
    @property
    def name(self) -> str:
        return self.objectName

    @name.setter
    def name(self, value: str) -> None:
        self.objectName = value

    def setObjectName(self, value: str) -> None:
        self.objectName = value

    def connect(self, signature: str, slot: Callable) -> bool:
        getattr(self, _signalName(signature)).connect(slot)
        return True

    def disconnect(self, signature: str, slot: Callable | None = None) -> bool:
        getattr(self, _signalName(signature)).disconnect(slot)
        return True

    def setParent(self, parent: "QObject | None") -> None:
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls=None) -> list:
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def property(self, name: str):
        if name in self._dynamic:
            return self._dynamic[name]
        return getattr(self, name, None) if not name.startswith("_") else None

    def setProperty(self, name: str, value) -> None:
        self._dynamic[name] = value

    def deleteLater(self) -> None:
        pass

    def className(self) -> str:
        return type(self).__name__


class _NotifyingProperty:
    """A property whose change emits ``signals`` with the new value (only when it changes)."""

    def __init__(self, default, *signals: str, convert: Callable = lambda v: v) -> None:
        self.default = default
        self.signals = signals
        self.convert = convert

    def __set_name__(self, owner, name: str) -> None:
        self.attribute = "_prop_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj.__dict__.get(self.attribute, self.default)

    def __set__(self, obj, value) -> None:
        value = self.convert(value)
        old = obj.__dict__.get(self.attribute, self.default)
        obj.__dict__[self.attribute] = value
        if value != old:
            for signal in self.signals:
                getattr(obj, signal).emit(*obj._signalArguments(signal, value))


class QWidget(QObject):
    enabled = _NotifyingProperty(True, convert=bool)
    visible = _NotifyingProperty(True, convert=bool)
    toolTip = _NotifyingProperty("")

    def __init__(self, parent: "QWidget | None" = None) -> None:
        super().__init__(parent)
        self._layout = None

    def _signalArguments(self, signal: str, value) -> tuple:
        return (value,)

    def isWidgetType(self) -> bool:
        return True

    def setEnabled(self, value: bool) -> None:
        self.enabled = value

    def isEnabled(self) -> bool:
        """Enabled itself and every parent (Qt's effective state, what a user can interact with)."""
        widget = self
        while widget is not None:
            if isinstance(widget, QWidget) and not widget.enabled:
                return False
            widget = widget.parent()
        return True

    def setVisible(self, value: bool) -> None:
        self.visible = value

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def layout(self):
        return self._layout

    def setLayout(self, layout: "QLayout") -> None:
        self._layout = layout
        layout._owner = self

    def setSizePolicy(self, *args) -> None:
        pass


class QLayout(QObject):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__()
        self._owner = None
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget: QWidget, *args) -> None:
        if self._owner is None:
            raise RuntimeError("the layout has no widget to hold its items")
        widget.setParent(self._owner)

    def addLayout(self, layout: "QLayout", *args) -> None:
        layout._owner = self._owner

    def addRow(self, *items) -> None:
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)
            elif isinstance(item, QLayout):
                self.addLayout(item)

    def addStretch(self, *args) -> None:
        pass


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QLabel(QWidget):
    text = _NotifyingProperty("")
    wordWrap = _NotifyingProperty(False)

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = text

    def setText(self, text: str) -> None:
        self.text = text


class QAbstractButton(QWidget):
    SIGNALS = ("clicked", "toggled", "pressed", "released")
    text = _NotifyingProperty("")
    checkable = _NotifyingProperty(False, convert=bool)
    checked = _NotifyingProperty(False, "toggled", convert=bool)

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = text

    def setText(self, text: str) -> None:
        self.text = text

    def setChecked(self, value: bool) -> None:
        self.checked = value

    def isChecked(self) -> bool:
        return self.checked

    def click(self) -> None:
        """A click: nothing when disabled (as in Qt), else toggles a checkable button and emits ``clicked``."""
        if not self.isEnabled():
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(self.checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    SIGNALS = ("stateChanged",)
    checked = _NotifyingProperty(False, "toggled", "stateChanged", convert=bool)

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.checkable = True

    def _signalArguments(self, signal: str, value) -> tuple:
        if signal == "stateChanged":
            return (2 if value else 0,)
        return (value,)


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged", "currentTextChanged", "activated")
    currentIndex = _NotifyingProperty(-1, "currentIndexChanged", convert=int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._items: list[str] = []

    def addItem(self, text: str, *args) -> None:
        self._items.append(str(text))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    def clear(self) -> None:
        self._items = []
        self.currentIndex = -1

    def count(self) -> int:
        return len(self._items)

    def itemText(self, index: int) -> str:
        return self._items[index]

    @property
    def currentText(self) -> str:
        return self._items[self.currentIndex] if 0 <= self.currentIndex < len(self._items) else ""

    def setCurrentIndex(self, index: int) -> None:
        self.currentIndex = index

    def findText(self, text: str) -> int:
        return self._items.index(text) if text in self._items else -1


class QAbstractSpinBox(QWidget):
    SIGNALS = ("valueChanged",)
    specialValueText = _NotifyingProperty("")
    suffix = _NotifyingProperty("")
    singleStep = _NotifyingProperty(1)
    decimals = _NotifyingProperty(2)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._minimum = 0
        self._maximum = 99
        self._value = 0

    @property
    def minimum(self):
        return self._minimum

    @minimum.setter
    def minimum(self, value) -> None:
        self.setMinimum(value)

    @property
    def maximum(self):
        return self._maximum

    @maximum.setter
    def maximum(self, value) -> None:
        self.setMaximum(value)

    def setMinimum(self, value) -> None:
        self._minimum = value
        self._maximum = max(self._maximum, value)
        self.value = self._value

    def setMaximum(self, value) -> None:
        self._maximum = value
        self._minimum = min(self._minimum, value)
        self.value = self._value

    def setRange(self, minimum, maximum) -> None:
        self._minimum, self._maximum = minimum, max(minimum, maximum)
        self.value = self._value

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value) -> None:
        value = min(max(self._convert(value), self._minimum), self._maximum)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def setValue(self, value) -> None:
        self.value = value

    @staticmethod
    def _convert(value):
        return value


class QSpinBox(QAbstractSpinBox):
    @staticmethod
    def _convert(value):
        return int(value)


class QDoubleSpinBox(QAbstractSpinBox):
    @staticmethod
    def _convert(value):
        return float(value)


class QSlider(QSpinBox):
    pass


class QProgressBar(QWidget):
    SIGNALS = ("valueChanged",)
    textVisible = _NotifyingProperty(True)
    format = _NotifyingProperty("%p%")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.minimum, self.maximum, self._value = 0, 100, 0

    def setRange(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum

    def setValue(self, value: int) -> None:
        self._value = int(min(max(value, self.minimum), self.maximum))
        self.valueChanged.emit(self._value)

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        self.setValue(value)


class QLineEdit(QWidget):
    SIGNALS = ("textChanged", "editingFinished")
    text = _NotifyingProperty("", "textChanged")


class QTextEdit(QWidget):
    SIGNALS = ("textChanged",)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._text = ""

    def setPlainText(self, text: str) -> None:
        self._text = text
        self.textChanged.emit()

    def toPlainText(self) -> str:
        return self._text


class QPlainTextEdit(QTextEdit):
    pass


class QGroupBox(QWidget):
    title = _NotifyingProperty("")


class QFrame(QWidget):
    pass


class QDialog(QWidget):
    def exec_(self) -> int:
        raise AssertionError(f"the module opened a modal {type(self).__name__} that no test expected")

    def close(self) -> None:
        pass


class QMessageBox(QDialog):
    NoButton, Ok, Cancel, Yes, No, Retry, Close = 0, 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


MESSAGE_BOX_ANSWERS: list[tuple[str, int]] = []
"""``(text fragment, answer)`` a test queues before an action that asks the user something."""

MESSAGE_BOXES: list[str] = []
"""Texts of every message box shown (answered or not)."""


class ctkMessageBox(QMessageBox):
    text = _NotifyingProperty("")
    windowTitle = _NotifyingProperty("")
    detailedText = _NotifyingProperty("")
    icon = _NotifyingProperty(0)
    standardButtons = _NotifyingProperty(0)

    def exec_(self) -> int:
        MESSAGE_BOXES.append(self.text)
        for i, (fragment, answer) in enumerate(MESSAGE_BOX_ANSWERS):
            if fragment in self.text:
                del MESSAGE_BOX_ANSWERS[i]
                return answer
        raise AssertionError(f"unexpected message box (no answer queued): {self.text!r}")


class QFile:
    ReadOnly = 1

    def __init__(self, path) -> None:
        self.path = Path(str(path))

    def exists(self) -> bool:
        return self.path.is_file()

    def open(self, mode) -> bool:
        return self.path.is_file()

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except OSError:
            return False
        return True


class QDir:
    def mkpath(self, path: str) -> bool:
        Path(path).mkdir(parents=True, exist_ok=True)
        return True


class QIcon:
    def __init__(self, path: str = "") -> None:
        self.path = str(path)


class QColor:
    def __init__(self, *args) -> None:
        self.args = args


class QSettings:
    """Settings of one harness run (empty at start, as on a fresh install)."""

    _values: dict = {}

    def value(self, key: str, default=None):
        return self._values.get(key, default)

    def setValue(self, key: str, value) -> None:
        self._values[key] = value

    def contains(self, key: str) -> bool:
        return key in self._values


class QTimer(QObject):
    SIGNALS = ("timeout",)

    @staticmethod
    def singleShot(msec: int, callback: Callable) -> None:
        import slicer

        slicer.app.postEvent(callback)


class Qt:
    WaitCursor, ArrowCursor, BusyCursor = 3, 0, 16
    ShiftModifier, NoModifier = 0x02000000, 0
    Horizontal, Vertical = 1, 2
    AlignLeft, AlignRight, AlignCenter = 1, 2, 0x84
    TextSelectableByMouse = 1
    Unchecked, PartiallyChecked, Checked = 0, 1, 2


class QApplication:
    """The override-cursor stack (Qt's is application-wide)."""

    overrideCursors: list = []

    @staticmethod
    def setOverrideCursor(cursor) -> None:
        QApplication.overrideCursors.append(cursor)

    @staticmethod
    def restoreOverrideCursor() -> None:
        if QApplication.overrideCursors:
            QApplication.overrideCursors.pop()


class QSizePolicy:
    Preferred, Expanding, Fixed, Minimum, Maximum = 5, 7, 0, 1, 4

    def __init__(self, *args) -> None:
        pass


class QAction(QObject):
    SIGNALS = ("triggered",)


class QMenu(QWidget):
    def addAction(self, action) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# CTK
# ----------------------------------------------------------------------------------------------
class ctkCollapsibleButton(QAbstractButton):
    SIGNALS = ("contentsCollapsed",)
    collapsed = _NotifyingProperty(False, "contentsCollapsed", convert=bool)


class ctkPathLineEdit(QWidget):
    SIGNALS = ("currentPathChanged",)
    Files, Dirs, Readable, Writable, Executable, NoDot, NoDotDot, Hidden, AllEntries = (
        2, 1, 0x10, 0x20, 0x40, 0x2000, 0x4000, 0x100, 0x7)
    currentPath = _NotifyingProperty("", "currentPathChanged", convert=str)
    filters = _NotifyingProperty(0)
    nameFilters = _NotifyingProperty([])


class ctkCheckBox(QCheckBox):
    pass


class ctkCheckablePushButton(QPushButton):
    checkBoxControlsButtonToggleState = False


class ctkDirectoryButton(QWidget):
    SIGNALS = ("directoryChanged",)
    directory = _NotifyingProperty("", "directoryChanged")


class ctkSliderWidget(QDoubleSpinBox):
    pass


class ctkDoubleSlider(QDoubleSpinBox):
    pass


class ctkRangeWidget(QWidget):
    SIGNALS = ("valuesChanged",)


class ctkDoubleRangeSlider(ctkRangeWidget):
    pass


class ctkComboBox(QComboBox):
    pass


class ctkDoubleSpinBox(QDoubleSpinBox):
    pass


class ctkColorPickerButton(QWidget):
    SIGNALS = ("colorChanged",)


# ----------------------------------------------------------------------------------------------
# Slicer's MRML widgets
# ----------------------------------------------------------------------------------------------
class qMRMLWidget(QWidget):
    """A widget with a scene: ``setMRMLScene`` emits ``mrmlSceneChanged`` (the .ui connects it on)."""

    SIGNALS = ("mrmlSceneChanged",)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qMRMLWidget):
    """A node selector over a real MRML scene.

    It lists the scene's nodes of ``nodeTypes`` (subclasses only with ``showChildNodeTypes``; nodes
    hidden from editors are left out). Without "None" (``noneEnabled`` false) it always selects a
    node when one exists: the first on a new scene, a node added to an empty list, the next one
    when its node is removed, as Slicer's qMRMLNodeComboBox does.
    """

    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded", "nodeAboutToBeRemoved")
    noneEnabled = _NotifyingProperty(False, convert=bool)
    addEnabled = _NotifyingProperty(True, convert=bool)
    removeEnabled = _NotifyingProperty(True, convert=bool)
    renameEnabled = _NotifyingProperty(False, convert=bool)
    editEnabled = _NotifyingProperty(False, convert=bool)
    showChildNodeTypes = _NotifyingProperty(True, convert=bool)
    showHidden = _NotifyingProperty(False, convert=bool)
    noneDisplay = _NotifyingProperty("None")
    baseName = _NotifyingProperty("")

    INSTANCES: list = []
    """Every selector made, so that the harness can detach them from the scene at the end."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.nodeTypes: list[str] = []
        self._current = None
        self._observations: list[tuple[Any, int]] = []
        qMRMLNodeComboBox.INSTANCES.append(self)

    def detach(self) -> None:
        """Remove the scene observers (what the widget's destructor does)."""
        for observed, tag in self._observations:
            observed.RemoveObserver(tag)
        self._observations = []

    # -- scene --
    def setMRMLScene(self, scene) -> None:
        self.detach()
        self._scene = scene
        if scene is not None:
            for event, callback in (
                (scene.NodeAddedEvent, self._onNodeAdded),
                (scene.NodeRemovedEvent, self._onNodeRemoved),
                (scene.EndCloseEvent, lambda caller, event: self._selectDefault()),
            ):
                self._observations.append((scene, scene.AddObserver(event, callback)))
        self.mrmlSceneChanged.emit(scene)
        self._current = None
        self._selectDefault()

    def _matches(self, node) -> bool:
        if node is None or (node.GetHideFromEditors() and not self.showHidden):
            return False
        for nodeType in self.nodeTypes:
            if node.GetClassName() == nodeType or (self.showChildNodeTypes and node.IsA(nodeType)):
                return True
        return False

    def nodes(self) -> list:
        if self._scene is None:
            return []
        return [n for n in (self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes())) if self._matches(n)]

    def _selectDefault(self) -> None:
        if self._current is None and not self.noneEnabled:
            candidates = self.nodes()
            if candidates:
                self._setCurrent(candidates[0])

    def _onNodeAdded(self, caller, event, calldata=None) -> None:
        self._selectDefault()

    _onNodeAdded.CallDataType = 13  # vtk.VTK_OBJECT

    def _onNodeRemoved(self, caller, event, calldata=None) -> None:
        if self._current is not None and (self._current.GetScene() is None or self._current not in self.nodes()):
            self._setCurrent(None)
            self._selectDefault()

    _onNodeRemoved.CallDataType = 13

    # -- selection --
    def currentNode(self):
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is not None and not self._matches(node):
            raise ValueError(f"{self.objectName}: {node.GetClassName()} is not one of {self.nodeTypes}")
        if node is None and not self.noneEnabled:
            self._selectDefault()
            return
        self._setCurrent(node)

    def setCurrentNodeID(self, nodeID: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if nodeID else None)

    def _setCurrent(self, node) -> None:
        if node is self._current:
            return
        self._current = node
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    """A node selector whose nodes carry check boxes (``checkedNodes``, ``setCheckState``,
    ``check``/``uncheck``, the ``checkedNodesChanged`` signal), as Slicer's subclass of
    qMRMLNodeComboBox: a node is unchecked when it enters the list, and a checked node that leaves
    the scene leaves the checked ones."""

    SIGNALS = ("checkedNodesChanged",)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._checkedIDs: list[str] = []

    def checkedNodes(self) -> list:
        """The checked nodes in scene order."""
        return [n for n in self.nodes() if n.GetID() in self._checkedIDs]

    def checkState(self, node) -> int:
        return Qt.Checked if node is not None and node.GetID() in self._checkedIDs else Qt.Unchecked

    def setCheckState(self, node, state) -> None:
        if not self._matches(node):
            raise ValueError(f"{self.objectName}: {node.GetClassName()} is not one of {self.nodeTypes}")
        checked = state == Qt.Checked
        if checked == (node.GetID() in self._checkedIDs):
            return
        if checked:
            self._checkedIDs.append(node.GetID())
        else:
            self._checkedIDs.remove(node.GetID())
        self.checkedNodesChanged.emit()

    def check(self, node) -> None:
        self.setCheckState(node, Qt.Checked)

    def uncheck(self, node) -> None:
        self.setCheckState(node, Qt.Unchecked)

    def _onNodeRemoved(self, caller, event, calldata=None) -> None:
        super()._onNodeRemoved(caller, event, calldata)
        present = {n.GetID() for n in self.nodes()}
        if any(i not in present for i in self._checkedIDs):
            self._checkedIDs = [i for i in self._checkedIDs if i in present]
            self.checkedNodesChanged.emit()

    _onNodeRemoved.CallDataType = 13


class qSlicerWidget(qMRMLWidget):
    pass


class qMRMLSpinBox(QDoubleSpinBox):
    pass


class qMRMLSliderWidget(ctkSliderWidget):
    pass


class qMRMLRangeWidget(ctkRangeWidget):
    pass


# ----------------------------------------------------------------------------------------------
# .ui loading
# ----------------------------------------------------------------------------------------------
def _propertyValue(element: ET.Element):
    value = element[0]
    if value.tag == "string":
        return value.text or ""
    if value.tag == "bool":
        return value.text == "true"
    if value.tag == "number":
        return int(value.text)
    if value.tag == "double":
        return float(value.text)
    if value.tag == "stringlist":
        return [s.text or "" for s in value.findall("string")]
    if value.tag in ("set", "enum", "cstring"):
        return value.text
    return None  # geometry, size hints, fonts: layout matters, not values


class QUiLoader:
    """Builds the widget tree of a Qt Designer file from the stand-in classes."""

    def __init__(self) -> None:
        self.classes = self.knownClasses()

    @staticmethod
    def knownClasses() -> dict[str, type]:
        import sys

        classes: dict[str, type] = {}
        for module in (sys.modules[__name__],):
            for name, value in vars(module).items():
                if isinstance(value, type) and issubclass(value, QObject):
                    classes[name] = value
        return classes

    def load(self, qfile: QFile):
        root = ET.parse(qfile.path).getroot()
        top = root.find("widget")
        named: dict[str, QObject] = {}
        widget = self._build(top, None, named)
        for connection in root.iter("connection"):
            sender = named[connection.findtext("sender")]
            receiver = named[connection.findtext("receiver")]
            slotName = _signalName(connection.findtext("slot"))
            sender.connect(connection.findtext("signal"), getattr(receiver, slotName))
        return widget

    def _build(self, element: ET.Element, parent: QWidget | None, named: dict):
        className = element.get("class")
        if className not in self.classes:
            raise RuntimeError(f"the .ui uses {className}, which the harness has no stand-in for")
        widget = self.classes[className](parent=parent)
        widget.objectName = element.get("name", "")
        named[widget.objectName] = widget
        for prop in element.findall("property"):
            value = _propertyValue(prop)
            name = prop.get("name")
            if value is None:
                continue
            if prop.get("stdset") == "0":
                widget.setProperty(name, value)
            elif hasattr(type(widget), name) or name in ("nodeTypes",):
                setattr(widget, name, value)
            else:
                widget.setProperty(name, value)
        for child in element:
            self._buildChildren(child, widget, named)
        return widget

    def _buildChildren(self, element: ET.Element, owner: QWidget, named: dict) -> None:
        if element.tag == "widget":
            self._build(element, owner, named)
        elif element.tag in ("layout", "item"):
            if element.tag == "layout":
                layout = self.classes.get(element.get("class"), QLayout)()
                layout._owner = owner
                layout.objectName = element.get("name", "")
                if owner.layout() is None:
                    owner._layout = layout
            for child in element:
                self._buildChildren(child, owner, named)


def qtModule() -> types.ModuleType:
    """The ``qt`` module: the Qt stand-ins above."""
    module = types.ModuleType("qt", "Stand-in for PythonQt's qt module (MLVIRNET test harness).")
    for name in (
        "QObject", "QWidget", "QLayout", "QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout", "QLabel",
        "QAbstractButton", "QPushButton", "QToolButton", "QCheckBox", "QComboBox", "QSpinBox", "QDoubleSpinBox",
        "QSlider", "QProgressBar", "QLineEdit", "QTextEdit", "QPlainTextEdit", "QGroupBox", "QFrame", "QDialog",
        "QMessageBox", "QFile", "QDir", "QIcon", "QColor", "QSettings", "QTimer", "Qt", "QApplication",
        "QSizePolicy", "QAction", "QMenu", "QUiLoader",
    ):
        setattr(module, name, globals()[name])
    return module


def ctkModule() -> types.ModuleType:
    """The ``ctk`` module: the CTK stand-ins above."""
    module = types.ModuleType("ctk", "Stand-in for PythonQt's ctk module (MLVIRNET test harness).")
    for name in (
        "ctkCollapsibleButton", "ctkPathLineEdit", "ctkCheckBox", "ctkCheckablePushButton", "ctkDirectoryButton",
        "ctkSliderWidget", "ctkDoubleSlider", "ctkRangeWidget", "ctkDoubleRangeSlider", "ctkColorPickerButton",
        "ctkMessageBox", "ctkComboBox", "ctkDoubleSpinBox",
    ):
        setattr(module, name, globals()[name])
    return module
