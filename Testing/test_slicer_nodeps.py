"""A fresh Slicer has none of torch, safetensors, nibabel, monai or open_clip. Every Lib entry point that a
module's widget slot (or self-test) calls is run in a subprocess where they cannot be imported: each either
needs none of them, or calls the one dependency guard (mosmos.mrml.deps.ensure_dependencies) before
anything tries to import them. Never a bare ImportError."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in the subprocess. The blocker hides the packages from every finder, so the import machinery behaves as
# if they were not installed (find_spec returns None, import raises ModuleNotFoundError).
SCRIPT = textwrap.dedent(r'''
    import importlib.abc, json, sys, traceback
    from pathlib import Path

    BLOCKED = {"torch", "safetensors", "nibabel", "monai", "open_clip"}
    attempts = []

    class Hide(importlib.abc.MetaPathFinder):
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                attempts.append(name)
                return None
            find = getattr(self.finder, "find_spec", None)
            return find(name, path, target) if find else None

        def invalidate_caches(self):
            getattr(self.finder, "invalidate_caches", lambda: None)()

    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
    ROOT, WORK, MODEL = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    sys.path[:0] = [str(ROOT), str(ROOT / "MOSMOSSegment"), str(ROOT / "MOSMOSTrain")]

    import numpy as np
    import slicer
    from mosmos.mrml import deps, models, pipeline, selftest, terminology, volumes
    from MOSMOSTrainLib import folders, job, settings
    assert not BLOCKED & set(sys.modules), "imported before the blocker"
    import_attempts = list(attempts)

    guard_calls = []
    real_guard = deps.ensure_dependencies

    def recording_guard(*args, **kwargs):
        guard_calls.append(len(attempts))
        return real_guard(*args, **kwargs)

    deps.ensure_dependencies = recording_guard
    slicer.mrmlScene = slicer.vtkMRMLScene()
    volume = volumes.volume_from_array(slicer.mrmlScene, np.zeros((4, 5, 6), np.int16), np.eye(4), "CT")
    (WORK / "dataset").mkdir()
    (WORK / "roco").mkdir()

    entries = {
        "list models": lambda: [m.name for m in models.list_models(MODEL.parent)],
        "model info": lambda: models.model_info(MODEL).organs,
        "add model": lambda: models.add_model_file(MODEL, WORK / "models"),
        "download model": lambda: models.ModelDownload("http://127.0.0.1:9/abdomen.mosmos", WORK / "models").start(),
        "output folder check": lambda: folders.check_output(WORK / "out", "pretrain").ok,
        "folder check (blocking)": lambda: folders.check_stage("finetune", WORK / "out", dataset=WORK / "dataset"),
        "folder check (background)": lambda: folders.FolderCheck("pretrain", output=WORK / "out",
                                                                  roco=WORK / "roco").start(),
        "start training": lambda: job.TrainingJob(settings.TrainingSettings(
            "pretrain", out=WORK / "run", roco=WORK / "roco")).start(),
        "segmentation job (built)": lambda: pipeline.SegmentationJob(volume, "liver", MODEL).model_file.name,
        "segment (GUI)": lambda: pipeline.SegmentationJob(volume, "liver", MODEL).start(),
        "segment (blocking)": lambda: pipeline.segment_volume_node(volume, ["liver"], MODEL),
        "self-test: segmentation inputs": lambda: selftest.segmentation_inputs(slicer.mrmlScene, WORK),
        "self-test: training folders": lambda: selftest.training_folders(WORK / "selftest"),
        "terminology at start-up": lambda: terminology.load_context(slicer.vtkSlicerTerminologiesModuleLogic()),
    }
    results = {"import_attempts": import_attempts}
    for name, call in entries.items():
        del guard_calls[:]
        before = len(attempts)
        try:
            value = call()
            outcome, message = "ok", repr(value)[:200]
        except ImportError as e:
            outcome, message = "ImportError", "".join(traceback.format_exception(e))[-1500:]
        except Exception as e:
            outcome, message = type(e).__name__, str(e)
        results[name] = {"outcome": outcome, "message": message, "guard": guard_calls[:1] and guard_calls[0] - before,
                         "blocked": attempts[before:]}
    print(json.dumps(results))
''')

NEEDS_NONE = ("list models", "model info", "output folder check", "segmentation job (built)",
              "terminology at start-up")
GUARDED = ("add model", "download model", "folder check (blocking)", "folder check (background)", "start training", "segment (GUI)",
           "segment (blocking)", "self-test: segmentation inputs", "self-test: training folders")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch
    from mosmos.files.modelfile import save_model

    work = tmp_path_factory.mktemp("nodeps")
    model = work / "models" / "abdomen.mosmos"
    model.parent.mkdir()
    save_model(model, {"w": torch.zeros(3)}, {"kind": "mosmos-segmentation", "modality": "CT", "config": {},
                                              "labels": {"0": "background", "1": "liver"}})
    script = work / "nodeps.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, TMPDIR=str(work))  # the segmentation jobs' work folders
    done = subprocess.run([sys.executable, str(script), str(ROOT), str(work), str(model)], capture_output=True,
                          text=True, timeout=300, cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_libs_needs_none_of_the_core_packages(results):
    assert results["import_attempts"] == []


@pytest.mark.parametrize("entry", NEEDS_NONE)
def test_entry_points_that_need_no_core_package(results, entry):
    assert results[entry]["outcome"] == "ok", results[entry]
    assert results["list models"]["message"] == "['abdomen.mosmos']"
    assert results["terminology at start-up"]["message"] == repr("Segmentation category and type - MOSMOS organs")


@pytest.mark.parametrize("entry", GUARDED)
def test_entry_points_go_through_the_dependency_guard_first(results, entry):
    result = results[entry]
    assert result["outcome"] != "ImportError", result["message"]
    # The guard ran before any of the packages was looked for, and its own message reached the caller: without
    # the PyTorch extension (as here, in plain Python) it says what to install.
    assert result["guard"] == 0, result
    assert result["outcome"] == "MosmosError" and "PyTorch extension" in result["message"], result


@pytest.mark.parametrize("testing, no_main_window, asks", [(False, False, True), (True, False, False),
                                                           (False, True, False)])
def test_the_guard_asks_only_where_someone_can_answer(monkeypatch, testing, no_main_window, asks):
    """A batch run (--no-main-window --python-script) or --testing would wait for ever on the install dialog."""
    import types

    import slicer
    from mosmos.mrml import deps

    options = types.SimpleNamespace(testingEnabled=testing, noMainWindow=no_main_window)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(commandOptions=lambda: options), raising=False)
    assert deps._ask_confirmation(None) is asks
    assert deps._ask_confirmation(True) is True and deps._ask_confirmation(False) is False


# ---- the one list of requirements, installed as this Slicer can ---------------------------------------------------

def test_requirements_are_pyprojects_less_what_slicer_and_the_pytorch_extension_own():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from mosmos.mrml import deps

    listed = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    names = [canonicalize_name(r.name) for r in deps.requirements()]
    assert names == [canonicalize_name(r.name) for r in listed if canonicalize_name(r.name) not in deps.PROTECTED]
    assert {"open-clip-torch", "monai", "nibabel", "safetensors", "python-gdcm"} <= set(names)
    assert not {"torch", "torchvision", "numpy", "pillow", "pydicom", "highdicom", "requests"} & set(names)


def test_pyproject_is_found_in_an_installed_extensions_layout(tmp_path):
    """CMake installs mosmos/ and pyproject.toml side by side in qt-scripted-modules (MOSMOS_CORE_RESOURCES);
    deps finds the list there as it does in the checkout."""
    import shutil

    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"list\(APPEND MOSMOS_CORE_RESOURCES [^)]*\bpyproject\.toml\b", top)
    installed = tmp_path / "lib" / "Slicer-5.12" / "qt-scripted-modules"
    shutil.copytree(ROOT / "mosmos", installed / "mosmos", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", installed)
    code = "from mosmos.mrml import deps; print(deps.PYPROJECT); print(' '.join(map(str, deps.requirements())))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(installed)))
    assert done.returncode == 0, done.stderr[-2000:]
    where, listed = done.stdout.splitlines()
    from mosmos.mrml import deps

    assert Path(where) == installed / "pyproject.toml"
    assert listed == " ".join(map(str, deps.requirements()))


@pytest.fixture
def absent_requirement(tmp_path, monkeypatch):
    """A pyproject.toml whose list holds torch and numpy (owned by others) and one distribution that is not
    installed; installing it means writing its metadata into a folder on sys.path, as pip would."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["torch>=2", "numpy", "mosmos-absent-dist>=1.0"]\n')
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    from mosmos.mrml import deps

    monkeypatch.setattr(deps, "PYPROJECT", tmp_path / "pyproject.toml")

    def install():
        info = site / "mosmos_absent_dist-1.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mosmos-absent-dist\nVersion: 1.2\n")
    return install


def test_slicer_core_has_no_slicer_packaging_so_5_10_installs_with_pip_install(absent_requirement, monkeypatch):
    """Slicer 5.10-5.11 (like the slicer-core wheel here) lack slicer.packaging: slicer.util.pip_install gets one
    string, the constraints file first, then what is missing (never torch)."""
    import importlib.metadata
    import importlib.util
    import shlex

    import slicer
    from mosmos.mrml import deps

    assert importlib.util.find_spec("slicer.packaging") is None
    calls = []

    def pip_install(requirements):  # Slicer 5.10.0's signature (Base/Python/slicer/util.py)
        args = shlex.split(requirements)
        calls.append((args, Path(args[1]).read_text()))
        absent_requirement()

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    assert deps.ensure_dependencies(ask_confirmation=False) == ["mosmos-absent-dist>=1.0"]
    (args, constraints), = calls
    assert args[0] == "-c" and args[2:] == ["mosmos-absent-dist>=1.0"]
    assert f"torch=={importlib.metadata.version('torch')}" in constraints.splitlines()
    assert f"numpy=={importlib.metadata.version('numpy')}" in constraints.splitlines()
    assert not Path(args[1]).exists()  # the constraints file is gone afterwards
    assert deps.ensure_dependencies(ask_confirmation=False) == [] and len(calls) == 1


def fake_packaging(calls: list, install):
    """slicer.packaging as Slicer 5.12 has it, for this process: pip_ensure with the signature of v5.12.3's
    Base/Python/slicer/packaging.py, so a wrong keyword fails here as it would there."""
    import types

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        calls.append(dict(requirements=requirements, constraints=Path(constraints).read_text(),
                          prompt_install=prompt_install, prompt_restart=prompt_restart, requester=requester,
                          skip_in_testing=skip_in_testing, show_progress=show_progress))
        if install is None:
            raise RuntimeError("User declined package installation")
        install()

    return types.SimpleNamespace(pip_ensure=pip_ensure)


@pytest.mark.parametrize("ask", [True, False])
def test_slicer_5_12_installs_with_pip_ensure(absent_requirement, monkeypatch, ask):
    import slicer
    from mosmos.mrml import deps

    calls = []
    packaging = fake_packaging(calls, absent_requirement)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: pytest.fail("pip_install on Slicer 5.12"))
    assert deps.ensure_dependencies(ask_confirmation=ask) == ["mosmos-absent-dist>=1.0"]
    call, = calls
    assert call["requirements"] == ["mosmos-absent-dist>=1.0"]
    assert "torch==" in call["constraints"] and "numpy==" in call["constraints"]
    # Asks (and offers a restart, shows progress) only where someone can answer; installs under --testing too.
    assert call["prompt_install"] is call["prompt_restart"] is call["show_progress"] is ask
    assert call["requester"] == "MOSMOS" and call["skip_in_testing"] is False


def test_declining_pip_ensures_dialog_is_one_clear_error(absent_requirement, monkeypatch):
    import slicer
    from mosmos.errors import MosmosError
    from mosmos.mrml import deps

    packaging = fake_packaging([], None)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    with pytest.raises(MosmosError, match="installation was cancelled"):
        deps.ensure_dependencies(ask_confirmation=True)


def test_a_missing_pyproject_names_the_file(tmp_path, monkeypatch):
    from mosmos.errors import MosmosError
    from mosmos.mrml import deps

    monkeypatch.setattr(deps, "_installed_core", lambda: False)
    with pytest.raises(MosmosError, match=re.escape(str(tmp_path / "pyproject.toml"))):
        deps.requirements(tmp_path / "pyproject.toml")


def test_a_core_installed_from_a_wheel_reads_its_metadata(tmp_path, monkeypatch):
    """No pyproject.toml beside a pip-installed core (the web app's): the distribution's Requires-Dist, made
    from that list, stands in; extras are not the core's needs."""
    from packaging.utils import canonicalize_name

    from mosmos.mrml import deps

    monkeypatch.setattr(deps, "PYPROJECT", tmp_path / "pyproject.toml")
    names = {canonicalize_name(r.name) for r in deps.requirements()}
    assert {"monai", "open-clip-torch", "nibabel", "safetensors"} <= names
    assert not names & {"torch", "numpy", "pytest", "mkdocs", "playwright"}
