"""Static checks of the Slicer modules: every widget the code uses exists in the .ui file, every parameter-node
field is bound to a widget that Slicer's GUI connectors accept for its type, and every Lib file is listed in the
module's CMakeLists.txt."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("MOSMOSSegment", "MOSMOSTrain")


class Module:
    def __init__(self, name: str):
        self.name = name
        self.folder = ROOT / name
        self.source = (self.folder / f"{name}.py").read_text()
        self.ui = ET.parse(self.folder / "Resources" / "UI" / f"{name}.ui")

    def widgets(self) -> dict[str, ET.Element]:
        return {w.get("name"): w for w in self.ui.iter("widget")}

    def parameter_names(self) -> dict[str, str]:
        """SlicerParameterName -> widget name."""
        found = {}
        for widget in self.ui.iter("widget"):
            for prop in widget.findall("property"):
                if prop.get("name") == "SlicerParameterName":
                    found[prop.findtext("string")] = widget.get("name")
        return found

    def fields(self) -> dict[str, ast.AnnAssign]:
        for node in ast.parse(self.source).body:
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
                return {item.target.id: item for item in node.body if isinstance(item, ast.AnnAssign)}
        raise AssertionError(f"no @parameterNodeWrapper class in {self.name}.py")


@pytest.fixture(params=MODULES)
def module(request) -> Module:
    return Module(request.param)


def split_annotation(node: ast.expr) -> tuple[str, list[str]]:
    """("Path" | "str" | "slicer.vtkMRML..." ..., names of the Annotated extras such as "Choice")."""
    extras = []
    if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Annotated":
        base, *rest = node.slice.elts
        extras = [getattr(e.func, "id", getattr(e.func, "attr", "")) for e in rest if isinstance(e, ast.Call)]
        node = base
    return ast.unparse(node), extras


def widget_property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return next(iter(prop)).text
    return None


def test_every_ui_name_used_in_code_exists(module):
    used = set(re.findall(r"self\.ui\.(\w+)", module.source))
    assert used, "the widget uses no .ui widgets?"
    missing = sorted(used - set(module.widgets()))
    assert not missing, f"used in {module.name}.py but not in the .ui file: {missing}"


def test_every_parameter_field_has_a_fitting_widget_and_back(module):
    fields, names, widgets = module.fields(), module.parameter_names(), module.widgets()
    assert sorted(fields) == sorted(names), f"fields {sorted(fields)} vs SlicerParameterName {sorted(names)}"
    for field, item in fields.items():
        widget = widgets[names[field]]
        cls = widget.get("class")
        base, extras = split_annotation(item.annotation)
        # Slicer's connectors (parameterNodeWrapper/guiConnectors.py) match by exact widget class.
        if "vtkMRML" in base:
            assert cls == "qMRMLNodeComboBox", field
        elif base == "Path":
            assert cls == "ctkPathLineEdit", field
        elif base == "bool":
            assert cls == "QCheckBox", field
        elif base == "str":
            assert cls == ("QComboBox" if "Choice" in extras else "QLineEdit"), field
        elif base == "int":
            assert cls == "QSpinBox", field
        elif base == "float":
            assert cls in ("QDoubleSpinBox", "ctkSliderWidget"), field
            if cls == "ctkSliderWidget":
                assert "WithinRange" in extras, f"{field}: a ctkSliderWidget needs a bounded float"
            else:
                # The spin box rounds to its decimals (Qt's default: 2): the default must survive that.
                decimals = int(widget_property(widget, "decimals") or 2)
                default = ast.literal_eval(item.value)
                assert round(default, decimals) == pytest.approx(default), f"{field}: {decimals} decimals"
        else:
            raise AssertionError(f"{field}: no GUI connector for {base}")


def test_ui_file_is_a_qmrml_widget_with_scene_connections(module):
    root = module.ui.getroot().find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == module.name
    receivers = {c.findtext("receiver") for c in module.ui.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {name for name, w in module.widgets().items()
            if w.get("class", "").startswith("qMRML") and name != module.name}
    assert mrml <= receivers


def test_cmake_lists_every_lib_file_and_resource(module):
    name = module.name
    cmake = (module.folder / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", name)
    for path in sorted((module.folder / f"{name}Lib").iterdir()):
        if path.suffix in (".py", ".csv"):
            assert f"{name}Lib/{path.name}" in cmake, path.name
    for resource in (f"Resources/Icons/{name}.png", f"Resources/UI/{name}.ui"):
        assert resource in cmake and (module.folder / resource).is_file()
    assert "WITH_GENERIC_TESTS" in cmake
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "project(MOSMOS)" in top and 'EXTENSION_CATEGORY "Segmentation"' in top
    assert f"add_subdirectory({name})" in top


def test_icon_is_128_pixels(module):
    from PIL import Image

    with Image.open(module.folder / "Resources" / "Icons" / f"{module.name}.png") as icon:
        assert icon.size == (128, 128)


def test_lib_has_no_qt(module):
    for path in (module.folder / f"{module.name}Lib").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt"}, path.name


def test_training_gui_defaults_are_the_libs():
    """The GUI shows the paper's defaults that MOSMOSTrainLib uses when a setting is left out."""
    import sys

    sys.path[:0] = [str(ROOT / "MOSMOSSegment"), str(ROOT / "MOSMOSTrain")]
    import slicer  # noqa: F401  (MOSMOSTrainLib runs on slicer-core, a test dependency)

    from MOSMOSTrainLib.settings import FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS

    defaults = {name: ast.literal_eval(item.value) for name, item in Module("MOSMOSTrain").fields().items()
                if item.value is not None and not isinstance(item.value, ast.Call)}
    assert (defaults["pretrainEpochs"], defaults["pretrainBatchSize"], defaults["pretrainLearningRate"]) == \
        (PRETRAIN_DEFAULTS["epochs"], PRETRAIN_DEFAULTS["batch_size"], PRETRAIN_DEFAULTS["lr"])
    assert (defaults["finetuneEpochs"], defaults["finetuneBatchSize"], defaults["finetuneLearningRate"]) == \
        (FINETUNE_DEFAULTS["epochs"], FINETUNE_DEFAULTS["batch_size"], FINETUNE_DEFAULTS["lr"])
    assert (defaults["lambdaPta"], defaults["labelRatio"]) == (FINETUNE_DEFAULTS["lambda_pta"],
                                                              FINETUNE_DEFAULTS["label_ratio"])
