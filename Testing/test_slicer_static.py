"""Static checks of the Slicer module: every widget the code uses exists in the .ui file, every parameter-node
field is bound to a widget, and every Lib file is listed in the module's CMakeLists.txt."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MOSMOSSegment"
SOURCE = (MODULE / "MOSMOSSegment.py").read_text()
UI = ET.parse(MODULE / "Resources" / "UI" / "MOSMOSSegment.ui")


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in UI.iter("widget")}


def parameter_names() -> dict[str, str]:
    """SlicerParameterName -> widget name."""
    found = {}
    for widget in UI.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[prop.findtext("string")] = widget.get("name")
    return found


def wrapper_fields() -> list[str]:
    tree = ast.parse(SOURCE)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return [item.target.id for item in node.body if isinstance(item, ast.AnnAssign)]
    raise AssertionError("no @parameterNodeWrapper class in MOSMOSSegment.py")


def test_every_ui_name_used_in_code_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used, "the widget uses no .ui widgets?"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"used in MOSMOSSegment.py but not in the .ui file: {missing}"


def test_every_parameter_field_has_a_widget_and_back():
    fields = wrapper_fields()
    names = parameter_names()
    assert sorted(fields) == sorted(names), f"fields {sorted(fields)} vs SlicerParameterName {sorted(names)}"
    # The GUI connectors bind by exact widget class.
    classes = {name: ui_widgets()[widget].get("class") for name, widget in names.items()}
    assert classes["inputVolume"] == classes["outputSegmentation"] == "qMRMLNodeComboBox"
    assert classes["attentionOpacity"] == "ctkSliderWidget" and classes["modelsFolder"] == "ctkPathLineEdit"


def test_ui_file_is_a_qmrml_widget_with_scene_connections():
    root = UI.getroot().find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == "MOSMOSSegment"
    receivers = {c.findtext("receiver") for c in UI.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {name for name, w in ui_widgets().items() if w.get("class", "").startswith("qMRML") and name != "MOSMOSSegment"}
    assert mrml <= receivers


def test_cmake_lists_every_lib_file_and_resource():
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MOSMOSSegment")
    for path in sorted((MODULE / "MOSMOSSegmentLib").iterdir()):
        if path.suffix in (".py", ".csv"):
            assert f"MOSMOSSegmentLib/{path.name}" in cmake, path.name
    for resource in ("Resources/Icons/MOSMOSSegment.png", "Resources/UI/MOSMOSSegment.ui"):
        assert resource in cmake and (MODULE / resource).is_file()
    assert "WITH_GENERIC_TESTS" in cmake
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "project(MOSMOS)" in top and 'EXTENSION_CATEGORY "Segmentation"' in top
    assert "add_subdirectory(MOSMOSSegment)" in top


def test_lib_has_no_qt():
    for path in (MODULE / "MOSMOSSegmentLib").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt"}, path.name
