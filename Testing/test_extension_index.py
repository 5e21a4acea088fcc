"""The Slicer Extensions Index's checks, run offline on this checkout.

Written from Slicer/ExtensionsIndex at commit 07f1d1b2781c7dd9f6e2a9f5521b3ed43631724c (main, 2026-08-07):
scripts/check_description_files.py (the CI that gates a pull request adding MOSMOS.json) and the questions of
scripts/extension_ai_analysis.py (the review that follows it). What needs the network there is checked here
on the files the URLs name: the catalog schema against the copy in Testing/Data/slicer_schema (Slicer
v5.12.3), the icon and screenshot URLs against the files at those paths in this repository, the clone's size
against the tracked files plus git's object store."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "Testing" / "Data" / "slicer_schema" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
ENTRY = ROOT / "MOSMOS.json"
CMAKE = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
# Where raw files of the default branch are served: the icon's and screenshots' URLs start with it.
RAW = "https://raw.githubusercontent.com/mosmos-slicer/SlicerMOSMOS/main/"
# The files Slicer's module loader imports (the AI review reads every .py; these are the ones run at start-up).
MODULE_FILES = sorted([ROOT / "MOSMOSSegment" / "MOSMOSSegment.py", ROOT / "MOSMOSTrain" / "MOSMOSTrain.py",
                       *(ROOT / "MOSMOSTrain" / "MOSMOSTrainLib").glob("*.py")])

# check_description_files.py: ACCEPTED_EXTENSION_CATEGORIES (the index's list, data rather than code).
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT",
    "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning",
    "Otolaryngology", "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy",
    "Registration", "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
}
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
SIZE_LIMIT_MB = 100


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def cmake_urls(variable: str) -> list[str]:
    """The index's own patterns for set(EXTENSION_ICONURL "...") and set(EXTENSION_SCREENSHOTURLS "...")."""
    pattern = {"EXTENSION_ICONURL": r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)',
               "EXTENSION_SCREENSHOTURLS": r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)'}[variable]
    found = re.findall(pattern, CMAKE, re.IGNORECASE | re.MULTILINE)
    assert found, f"CMakeLists.txt: no {variable} (or it is empty)"
    return found[0].split()


def s4ext() -> dict[str, str]:
    lines = (ROOT / "MOSMOS.s4ext").read_text(encoding="utf-8").splitlines()
    return {key: value.strip() for key, _, value in (line.partition(" ") for line in lines)
            if key and not key.startswith("#")}


def git(*args: str) -> str | None:
    """git's output in this checkout, or None where it fails (no git, or not a repository)."""
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def test_catalog_entry_is_valid_against_slicers_schema(entry):
    import jsonschema

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    # The entry names the schema it follows; the index downloads that URL, the copy here is the same file.
    assert entry["$schema"] == schema["$id"]
    jsonschema.validate(entry, schema)


def test_catalog_entry_is_json_with_lf_line_endings():
    raw = ENTRY.read_bytes()
    assert b"\r" not in raw, "MOSMOS.json: CR or CRLF line endings; the index accepts LF only"
    json.loads(raw)


def test_category_is_one_the_index_knows(entry):
    assert entry["category"] in ACCEPTED_CATEGORIES


def test_names_of_extension_and_repository(entry):
    """The extension's name (the catalog file's stem) does not start with "Slicer"; the repository's does;
    scm_url is git or https."""
    assert not ENTRY.stem.lower().startswith("slicer")
    url = urllib.parse.urlsplit(entry["scm_url"].strip().strip("/"))
    assert url.scheme in ("git", "https")
    repository = Path(url.path).stem
    assert re.match(r"(Slicer|SlicerExtension)[-_]?", repository), repository


def test_project_name_is_the_catalog_entrys_name():
    found = re.findall(r'project\s*\(\s*([^\s\)\n\r]+)', CMAKE, re.IGNORECASE | re.MULTILINE)
    assert found and found[0].strip("\"'") == ENTRY.stem


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_icon_and_screenshots_are_in_the_repository_where_their_urls_point():
    icon, = cmake_urls("EXTENSION_ICONURL")
    screenshots = cmake_urls("EXTENSION_SCREENSHOTURLS")
    assert screenshots
    in_git = git("rev-parse", "--is-inside-work-tree") is not None
    description = s4ext()
    assert description["iconurl"] == icon and description["screenshoturls"].split() == screenshots
    for url in (icon, *screenshots):
        assert url.startswith(RAW), url
        path = ROOT / url.removeprefix(RAW)
        assert path.is_file(), f"{url}: no such file in the repository"
        assert is_png(path), f"{path}: not a PNG"
        if in_git:  # a copy without git (a test machine's) cannot tell
            assert git("ls-files", "--error-unmatch", url.removeprefix(RAW)) is not None, \
                f"{path}: not committed, so the URL would not serve it"


def test_license_file_is_the_apache_license_the_package_declares():
    found = [name for name in LICENSE_NAMES if (ROOT / name).is_file()]
    assert found, "no license file in the repository root"
    text = (ROOT / found[0]).read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    import tomllib

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == {"text": "Apache-2.0"}


def test_repository_is_under_100_mb():
    """The index sums every file of the clone, .git included: the tracked files plus git's objects."""
    listed = git("ls-files", "-z")
    if listed is None:  # a copy without git: everything but what .gitignore keeps out of a clone
        files = [p for p in ROOT.rglob("*") if p.is_file()
                 and not {".venv", "demo-out", "study-out", "site", "__pycache__", ".pytest_cache"} & set(p.parts)]
        objects = 0
    else:
        files = [ROOT / name for name in listed.split("\0") if name]
        counts = dict(line.split(": ") for line in git("count-objects", "-v").splitlines())
        objects = (int(counts["size"]) + int(counts["size-pack"])) * 1024
    total = sum(p.stat().st_size for p in files if p.is_file()) + objects
    assert total < SIZE_LIMIT_MB * 1024 * 1024, f"{total / 2**20:.1f} MB"


# ---- the review's rules (extension_ai_analysis.py QUESTIONS) -------------------------------------------------------

def runs_at_import(node: ast.stmt) -> bool:
    """Anything but imports, definitions, docstrings, constants and the script guard runs code at import."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return False
    if isinstance(node, ast.Expr):
        return not isinstance(node.value, ast.Constant)
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        return node.value is not None and any(isinstance(n, (ast.Call, ast.Await, ast.Lambda, ast.NamedExpr))
                                              for n in ast.walk(node.value))
    if isinstance(node, ast.If):
        return ast.unparse(node.test) != "__name__ == '__main__'"
    return True


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_module_files_run_no_code_at_import(path):
    """"Is any code executed at the file scope when a module is imported?" must be no: Slicer imports these
    files at start-up, before any dependency is installed."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    running = [f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}" for node in body if runs_at_import(node)]
    assert not running, "\n".join(running)


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_module_files_import_only_slicers_packages_at_file_scope(path):
    """"Python packages imported at the file scope that are not from the Python Standard Library and not from
    Slicer, vtk, SimpleITK, numpy, and scipy": none, besides this extension's own bundled code."""
    own = {"mosmos", "MOSMOSTrainLib"}
    slicers = {"slicer", "vtk", "qt", "ctk", "SimpleITK", "numpy", "scipy", "__future__"}
    body = ast.parse(path.read_text(encoding="utf-8")).body
    roots = {alias.name.split(".")[0] for node in body if isinstance(node, ast.Import) for alias in node.names}
    roots |= {(node.module or "").split(".")[0] for node in body if isinstance(node, ast.ImportFrom)
              and not node.level}
    assert roots <= set(sys.stdlib_module_names) | slicers | own, roots - set(sys.stdlib_module_names) - slicers - own


def pip_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("pip_install", "pip_ensure"):
                yield node


def test_nothing_pip_installs_torch():
    """"Does it directly use pip_install to install pytorch?" must be no: torch comes from the PyTorch
    extension (it picks the build that fits the GPU driver). No pip call names it; the requirements that
    mosmos.mrml.deps passes are checked without torch in test_slicer_nodeps.py."""
    calls = 0
    for path in [*ROOT.glob("MOSMOS*/**/*.py"), *(ROOT / "mosmos").rglob("*.py"), *(ROOT / "Resources").rglob("*.py")]:
        for call in pip_calls(ast.parse(path.read_text(encoding="utf-8"))):
            calls += 1
            literals = [n.value for n in ast.walk(call) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            assert not any(re.search(r"\btorch", text) for text in literals), f"{path}:{call.lineno}"
    assert calls, "no pip call found: the check looks at nothing"
