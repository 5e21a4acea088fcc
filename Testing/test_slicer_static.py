"""Static checks of the Slicer modules: every widget the code uses exists in the .ui file, every parameter-node
field is bound to a widget that Slicer's GUI connectors accept for its type, every Lib file is listed in the
module's CMakeLists.txt, and the widget's Qt slots keep the rules a fresh Slicer needs (errors reach the GUI,
no slow check on the GUI thread, no stale parameter values, nothing that a scene close breaks)."""

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

    def lib_files(self) -> list[Path]:
        """The module's own Lib files (MOSMOSSegment has none: its logic is the core's mosmos.mrml)."""
        lib = self.folder / f"{self.name}Lib"
        return sorted(lib.iterdir()) if lib.is_dir() else []

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


def field_defaults(module: Module) -> dict:
    """field -> its default value, each expression evaluated with the names the module file imports from
    mosmos and its Lib (the training defaults are the core's, read from there rather than spelled again)."""
    import importlib
    import sys

    sys.path[:0] = [str(ROOT / "MOSMOSSegment"), str(ROOT / "MOSMOSTrain")]
    import slicer  # noqa: F401  (the Libs run on slicer-core, a test dependency)

    items = {name: item.value for name, item in module.fields().items()
             if item.value is not None and not isinstance(item.value, ast.Call)}
    used = {n.id for value in items.values() for n in ast.walk(value) if isinstance(n, ast.Name)}
    namespace = {}
    for node in ast.parse(module.source).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("mosmos", f"{module.name}Lib"):
            for alias in node.names:
                if (alias.asname or alias.name) in used:
                    namespace[alias.asname or alias.name] = getattr(importlib.import_module(node.module), alias.name)
    return {name: eval(compile(ast.Expression(value), module.name, "eval"), namespace)
            for name, value in items.items()}


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
    defaults = field_defaults(module)
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
                default = defaults[field]
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
    for path in module.lib_files():
        if path.suffix in (".py", ".csv", ".json"):
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
    for path in (p for p in module.lib_files() if p.suffix == ".py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt"}, path.name


def test_training_gui_defaults_are_the_libs():
    """The GUI shows the paper's defaults that MOSMOSTrainLib uses when a setting is left out, which are the
    core's configurations' (mosmos.train.config): read from there, not spelled again."""
    from MOSMOSTrainLib.settings import FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS, TrainingSettings

    from mosmos.train.config import FinetuneConfig, PretrainConfig

    train = Module("MOSMOSTrain")
    defaults = field_defaults(train)
    spelled = [name for name, item in train.fields().items() if isinstance(item.value, ast.Constant)
               and name not in ("stage", "clipWeights", "maxSteps")]
    assert not spelled, f"defaults spelled in MOSMOSTrain.py rather than read from the core: {spelled}"
    assert PRETRAIN_DEFAULTS == {k: getattr(PretrainConfig, k) for k in PRETRAIN_DEFAULTS}
    assert FINETUNE_DEFAULTS == {k: getattr(FinetuneConfig, k) for k in FINETUNE_DEFAULTS}
    assert (defaults["backbone"], defaults["device"], defaults["workers"], defaults["checkpointEvery"]) == \
        (PretrainConfig.backbone, FinetuneConfig.device, TrainingSettings.workers, FinetuneConfig.checkpoint_every)
    assert (defaults["architecture"], defaults["initialization"]) == (FinetuneConfig.arch, FinetuneConfig.init)
    assert (defaults["pretrainEpochs"], defaults["pretrainBatchSize"], defaults["pretrainLearningRate"]) == \
        (PRETRAIN_DEFAULTS["epochs"], PRETRAIN_DEFAULTS["batch_size"], PRETRAIN_DEFAULTS["lr"])
    assert (defaults["finetuneEpochs"], defaults["finetuneBatchSize"], defaults["finetuneLearningRate"]) == \
        (FINETUNE_DEFAULTS["epochs"], FINETUNE_DEFAULTS["batch_size"], FINETUNE_DEFAULTS["lr"])
    assert (defaults["lambdaPta"], defaults["labelRatio"]) == (FINETUNE_DEFAULTS["lambda_pta"],
                                                              FINETUNE_DEFAULTS["label_ratio"])


# ---- Qt slots -----------------------------------------------------------------------------------------------------

# Lib calls that cannot fail in a way worth a dialog: path and text helpers, the parameter node, and the jobs'
# best-effort cleanup (error handlers call it; it never raises).
PURE = {"given", "describe", "default_models_dir", "getParameterNode", "statusText", "cleanup", "tooltip"}
# Blocking for seconds to minutes on real data: never on the GUI thread from a slot.
SLOW = {"checkFolders", "check_stage", "check_roco", "check_dataset", "summarize_roco", "segment",
        "segment_volume_node", "train", "wait"}
LIB_ATTRIBUTES = {"logic", "_job", "_check"}  # the widget's attributes that hold Lib objects


def _chain(node):
    """["self", "_job", "cancel"] for self._job.cancel; None when the chain does not start at a name."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return [node.id] + names[::-1] if isinstance(node, ast.Name) else None


def _is_parameter_node(node) -> bool:
    return _chain(node) == ["self", "_parameterNode"]


class Slots:
    """The widget class of a module file: its slots (Qt connections, VTK observers) and what they reach."""

    def __init__(self, module: Module):
        tree = ast.parse(module.source)
        self.lib_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                          and (node.module or "").split(".")[0] in ("mosmos", "MOSMOSSegmentLib", "MOSMOSTrainLib")
                          for alias in node.names}
        self.lib_names |= {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                           for alias in node.names if alias.name.split(".")[0] == "mosmos"}
        widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Widget"))
        self.methods = {f.name: f for f in widget.body if isinstance(f, ast.FunctionDef)}
        self.bound = set(module.parameter_names().values())
        self.slots = {}  # slot name -> ("qt", widget or attribute name, signal) | ("vtk", None, None)
        for call in ast.walk(widget):
            if not isinstance(call, ast.Call):
                continue
            chain = _chain(call.func)
            if chain and chain[-1] == "connect" and len(call.args) == 2:
                target = _chain(call.args[1])
                if target and target[:1] == ["self"] and len(target) == 2:
                    sender = chain[-2] if len(chain) >= 3 else None
                    self.slots[target[1]] = ("qt", sender, ast.literal_eval(call.args[0]))
            if chain == ["self", "addObserver"] and len(call.args) == 3:
                target = _chain(call.args[2])
                if target and len(target) == 2:
                    self.slots[target[1]] = ("vtk", None, None)

    def lib_call(self, call: ast.Call, local_lib: set) -> str | None:
        """The called name when ``call`` goes into Lib code (or a Lib object the widget holds), else None."""
        chain = _chain(call.func)
        if not chain or len(chain) < 2:
            return chain[0] if chain and chain[0] in self.lib_names | local_lib else None
        if chain[0] in self.lib_names | local_lib or (chain[0] == "self" and chain[1] in LIB_ATTRIBUTES):
            return chain[-1]
        return None

    def walk(self, name: str, wrapped: bool = False, seen=None):
        """Yield (method, node, wrapped) for every call reachable from ``name`` through self.method() calls;
        ``wrapped``: inside the module's error display (tryWithErrorDisplay, or try/except Exception)."""
        seen = set() if seen is None else seen
        if (name, wrapped) in seen or name not in self.methods:
            return
        seen.add((name, wrapped))
        function = self.methods[name]
        local_lib = set()
        for node in ast.walk(function):  # names bound to Lib objects: run = self._job, check = self._check
            if isinstance(node, ast.Assign) and any(_chain(n) and (_chain(n)[0] in self.lib_names or _chain(n)[:2] in
                                                    (["self", a] for a in LIB_ATTRIBUTES)) for n in ast.walk(node.value)):
                local_lib |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        yield from self._visit(function, function.body, wrapped, local_lib, seen)

    def _visit(self, function, statements, wrapped, local_lib, seen):
        for statement in statements:
            inner = wrapped
            if isinstance(statement, ast.With) and any(
                    (_chain(item.context_expr.func) or [""])[-1] == "tryWithErrorDisplay"
                    for item in statement.items if isinstance(item.context_expr, ast.Call)):
                inner = True
            if isinstance(statement, ast.Try) and any(
                    h.type is None or (isinstance(h.type, ast.Name) and h.type.id in ("Exception", "BaseException"))
                    for h in statement.handlers):
                yield from self._visit(function, statement.body, True, local_lib, seen)
                for block in (statement.handlers, statement.orelse, statement.finalbody):
                    for part in block:
                        yield from self._visit(function, part.body if isinstance(part, ast.ExceptHandler)
                                               else [part], wrapped, local_lib, seen)
                continue
            children = [n for n in ast.iter_child_nodes(statement) if isinstance(n, ast.stmt)]
            for node in ast.walk(statement) if not children else self._expressions(statement):
                yield function.name, node, inner, local_lib
                if isinstance(node, ast.Call) and _chain(node.func) and _chain(node.func)[0] == "self" \
                        and len(_chain(node.func)) == 2:
                    yield from self.walk(_chain(node.func)[1], inner, seen)
            if children:
                yield from self._visit(function, children, inner, local_lib, seen)

    @staticmethod
    def _expressions(statement):
        """The nodes of a compound statement outside its nested statements (an if's test, a with's items)."""
        for child in ast.iter_child_nodes(statement):
            if not isinstance(child, ast.stmt):
                yield from ast.walk(child)


@pytest.fixture(params=MODULES)
def slots(request) -> Slots:
    return Slots(Module(request.param))


def test_slots_are_found(slots):
    kinds = {kind for kind, _, _ in slots.slots.values()}
    assert kinds == {"qt", "vtk"} and len(slots.slots) >= 6, slots.slots


def test_every_slot_that_reaches_lib_code_shows_its_errors(slots):
    """An exception escaping a Qt slot is a console traceback and nothing in the GUI (issue 17, defect 2)."""
    bare = set()
    for slot in slots.slots:
        for method, node, wrapped, local_lib in slots.walk(slot):
            called = isinstance(node, ast.Call) and slots.lib_call(node, local_lib)
            if called and called not in PURE and not wrapped:
                bare.add(f"{slot} -> {method}: {ast.unparse(node)}")
    assert not bare, "Lib calls outside slicer.util.tryWithErrorDisplay / except Exception:\n" + "\n".join(sorted(bare))


def test_no_slot_runs_a_slow_check_or_a_blocking_stop(slots):
    """Folder checks take minutes on real data, a blocking cancel seconds: the GUI thread must not wait (defect 3)."""
    blocking = set()
    for slot in slots.slots:
        for method, node, _, local_lib in slots.walk(slot):
            called = isinstance(node, ast.Call) and slots.lib_call(node, local_lib)
            if called in SLOW or (called in ("cancel", "stop") and not any(
                    k.arg == "wait" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in node.keywords)):
                blocking.add(f"{slot} -> {method}: {ast.unparse(node)}")
    assert not blocking, "\n".join(sorted(blocking))


def test_slots_of_parameter_bound_widgets_do_not_read_the_parameter_node(slots):
    """PythonQt calls slots in connection order; a slot connected in setup() runs before the GUI connectors
    update the parameter node, so reading the node there gives the previous value (defect 4)."""
    stale = set()
    for slot, (kind, sender, signal) in slots.slots.items():
        if kind == "qt" and sender in slots.bound:
            stale |= {f"{sender}.{signal} -> {slot} -> {method}" for method, node, _, _ in slots.walk(slot)
                      if _is_parameter_node(node)}
    assert not stale, "\n".join(sorted(stale))


def test_timer_slots_survive_a_scene_close(slots):
    """A scene close while the module is hidden leaves the widget's parameter node None; a running job's timer
    goes on (defect 7). Timer slots use the parameter node only behind a None check, and never set it."""
    broken = set()
    timers = [slot for slot, (kind, _, signal) in slots.slots.items() if signal == "timeout()"]
    assert timers
    for slot in timers:
        checked = {}
        for method, node, _, _ in slots.walk(slot):
            function = slots.methods[method]
            if method not in checked:
                checked[method] = any(
                    isinstance(n, (ast.BoolOp, ast.UnaryOp, ast.If, ast.IfExp)) and any(
                        _is_parameter_node(v) or (isinstance(v, ast.Name) and v.id == "p") for v in
                        ([n.operand] if isinstance(n, ast.UnaryOp) else n.values if isinstance(n, ast.BoolOp)
                         else [n.test]))
                    for n in ast.walk(function))
            if isinstance(node, ast.Attribute) and _is_parameter_node(node.value):
                if isinstance(node.ctx, ast.Store) or not checked[method]:
                    broken.add(f"{slot} -> {method}: self._parameterNode.{node.attr}")
    assert not broken, "\n".join(sorted(broken))


def test_module_files_leave_the_dependencies_to_the_lib(module):
    """The one dependency guard lives in mosmos.mrml.deps and runs inside the Lib entry points; module files
    import no core dependency at their top (Slicer loads them before anything is installed). Their Lib is
    mosmos.mrml, bundled with the extension, which imports none of them either (test_slicer_nodeps)."""
    tree = ast.parse(module.source)
    top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in top}
    assert not roots & {"torch", "safetensors", "nibabel", "monai", "open_clip"}, top
    allowed = {"mosmos.mrml", "mosmos.mrml.process", "mosmos.options"}   # options: torch-free, the choices' names
    assert {name for name in top if name.split(".")[0] == "mosmos"} <= allowed, top


# ---- translations -------------------------------------------------------------------------------------------------
# As Slicer's scripted-module template (v5.12.3 Utilities/Templates/Modules/Scripted/TemplateKey.py): Python strings
# people read go through slicer.i18n's tr (imported as _) or translate(); the .ui files' strings are translated by
# the .ui loader (context: the form's class), so there the identifiers are the ones marked notr="true".

TRANSLATORS = ("_", "translate")
# Properties and the arguments of Slicer's and Qt's dialogs that show their text to people.
VISIBLE_ATTRIBUTES = {"text", "toolTip", "title", "helpText", "acknowledgementText", "windowTitle",
                      "placeholderText", "statusTip"}
VISIBLE_ARGUMENTS = {"errorDisplay": (0,), "warningDisplay": (0,), "infoDisplay": (0,), "tryWithErrorDisplay": (0,),
                     "confirmOkCancelDisplay": (0, 1), "confirmYesNoDisplay": (0, 1), "addItem": (0,),
                     "getOpenFileName": (1, 3), "getSaveFileName": (1, 3), "getExistingDirectory": (1,),
                     "getText": (1, 2), "_log": (0,), "appendPlainText": (0,), "setText": (0,), "QLabel": (0,),
                     "QPushButton": (0,)}


def _is_translation(node: ast.AST) -> bool:
    """_("..."), translate("...", "...") or _("... {x}").format(x=...) (whose arguments are values)."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "format":
        return _is_translation(func.value)
    return getattr(func, "id", None) in TRANSLATORS


def untranslated_text(node: ast.AST, phrases_only: bool) -> list[str]:
    """String literals in node, outside any translation, that read as text: any with a letter, or (phrases_only)
    only those with two words or more, which a key, a file name or an identifier never is."""
    if _is_translation(node):
        return []
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
            getattr(node.func.value, "id", None) == "logging" or node.func.attr in ("connect", "value", "setValue")):
        return []  # the log, signal signatures and settings keys are for developers
    if isinstance(node, ast.JoinedStr):
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
        return [ast.unparse(node)] if re.search(r"[A-Za-z]", text) else []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        pattern = r"[A-Za-z]{2,}\s+[A-Za-z]" if phrases_only else r"[A-Za-z]"
        return [node.value] if re.search(pattern, node.value) else []
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant):
            continue  # docstrings and the like are for developers
        found += untranslated_text(child, phrases_only)
    return found


def gui_classes(module: Module) -> list[ast.ClassDef]:
    """The module class (title, help, acknowledgement) and its widget: what people see. The logic's errors come
    from the core and the self-test's messages are for developers."""
    names = {module.name, f"{module.name}Widget"}
    return [node for node in ast.parse(module.source).body if isinstance(node, ast.ClassDef) and node.name in names]


def test_module_imports_slicers_translation_functions(module):
    tree = ast.parse(module.source)
    imported = {(node.module, alias.name, alias.asname) for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert {("slicer.i18n", "tr", "_"), ("slicer.i18n", "translate", None)} <= imported
    assert f'self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]' in module.source


def test_every_user_visible_string_in_the_gui_code_is_translatable(module):
    classes = gui_classes(module)
    assert len(classes) == 2
    missing = []
    for cls in classes:
        for node in ast.walk(cls):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "contributors"
                                                    for t in node.targets):
                continue  # people's names
            shown = []
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr in VISIBLE_ATTRIBUTES
                                                    for t in node.targets):
                shown = [node.value]
            elif isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                shown = [node.args[i] for i in VISIBLE_ARGUMENTS.get(name, ()) if i < len(node.args)]
            for value in shown:
                missing += [f"{module.name}.py:{node.lineno}: {text!r}" for text in untranslated_text(value, False)]
        # Text that reaches people through a variable: phrases anywhere in the GUI classes.
        missing += [f"{module.name}.py: {text!r}" for text in untranslated_text(cls, True)
                    if text != "MOSMOS developers"]
    assert not missing, "not wrapped in _():\n" + "\n".join(sorted(set(missing)))


def test_ui_files_leave_text_to_translators_and_identifiers_alone(module):
    """People's text in the .ui file is translatable (no notr); parameter names and node classes, which a
    translation would break, are marked notr="true"; the form's class is the module's name (the context)."""
    assert module.ui.getroot().findtext("class") == module.name
    texts = identifiers = 0
    for prop in module.ui.iter("property"):
        value = next(iter(prop), None)
        if value is None or value.tag not in ("string", "stringlist"):
            continue
        if prop.get("name") in ("SlicerParameterName", "nodeTypes"):
            identifiers += 1
            assert value.get("notr") == "true", f"{module.name}.ui: {prop.get('name')} {value.text!r} is translatable"
        elif prop.get("name") in VISIBLE_ATTRIBUTES | {"nameFilters"}:
            texts += 1
            assert value.get("notr") != "true", f"{module.name}.ui: {prop.get('name')} {value.text!r} is not"
    assert texts > 10 and identifiers > 3


# ---- extension packaging ------------------------------------------------------------------------------------------

def test_extension_descriptions_agree_and_state_the_minimum_slicer():
    """The catalog reads MOSMOS.json since Slicer 5.4 (Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json:
    required $schema, category, scm_url; no other keys than its properties); MOSMOS.s4ext stays for older
    tooling. Both agree with CMakeLists.txt, and the minimum Slicer (5.10, Python 3.12) is stated everywhere
    a person or CMake reads it (the JSON schema has no field for it)."""
    import json

    entry = json.loads((ROOT / "MOSMOS.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#")
    s4ext = dict(line.split(" ", 1) for line in (ROOT / "MOSMOS.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#") and " " in line)
    assert entry["scm_url"] == s4ext["scmurl"] and entry["scm_revision"] == s4ext["scmrevision"]
    assert entry["category"] == s4ext["category"] == "Segmentation"
    assert entry["build_dependencies"] == s4ext["depends"].split() == ["PyTorch"]
    top = (ROOT / "CMakeLists.txt").read_text()
    assert 'EXTENSION_DEPENDS "PyTorch"' in top and f'EXTENSION_HOMEPAGE "{s4ext["homepage"]}"' in top
    assert re.search(r"find_package\(Slicer 5\.10 REQUIRED\)", top)
    for text in (s4ext["description"], re.search(r'EXTENSION_DESCRIPTION "([^"]*)"', top).group(1),
                 (ROOT / "README.md").read_text()):
        assert "Slicer 5.10 or later" in text


def test_batch_script_is_installed_with_the_extension():
    top = (ROOT / "CMakeLists.txt").read_text()
    script = "Resources/Scripts/MOSMOSSegmentBatch.py"
    assert (ROOT / script).is_file()
    assert re.search(r"list\(APPEND MOSMOS_CORE_RESOURCES [^)]*" + re.escape(script), top)
    assert "RESOURCES ${MOSMOS_CORE_RESOURCES}" in top


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    return names | {(node.module or "").split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and not node.level}


def test_core_imports_slicer_only_in_its_mrml_and_web_parts():
    """qt/ctk nowhere in mosmos/; slicer, vtk and trame only in mosmos/mrml (shared with the Slicer module)
    and mosmos/web (the browser app)."""
    core = ROOT / "mosmos"
    for path in core.rglob("*.py"):
        imported = imported_roots(path)
        assert not imported & {"qt", "ctk", "PythonQt"}, path
        if path.parent.name not in ("mrml", "web"):
            assert not imported & {"slicer", "vtk", "trame", "trame_slicer"}, path
