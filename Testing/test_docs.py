"""The front page and the documentation site: the README stays a front page whose commands run, the site
builds in strict mode, and its CLI reference documents every sub-command and option the parsers accept."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- runnable: (?P<mark>quick|slow) -->\n)?```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)\n```", re.S)


def readme_blocks(lang: str = "sh"):
    """(mark, body) of each fenced block of ``lang`` in the README; mark is "quick", "slow" or None."""
    return [(m["mark"], m["body"]) for m in BLOCK.finditer(README.read_text(encoding="utf-8")) if m["lang"] == lang]


def shell_commands(body: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, split as the shell would."""
    text = body.replace("\\\n", " ")
    return [words for line in text.splitlines() if (words := shlex.split(line, comments=True))]


def cli_hook():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"
    install = next(i for i, line in enumerate(lines) if line.startswith("## Install in 3D Slicer"))
    segment = next(i for i, line in enumerate(lines) if line.startswith("mosmos segment "))
    console = next(i for i, line in enumerate(lines) if "MOSMOSSegmentLogic().segment(" in line)
    assert max(install, segment, console) < 120, (install, segment, console)
    assert not [line for line in lines if "/tmp/" in line], "hand-script paths do not belong on the front page"


def test_readme_and_docs_link_only_to_files_the_repository_holds():
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: link to missing {target}"
        assert "../shared" not in page.read_text(encoding="utf-8"), page


def _defines(module: Path, name: str) -> bool:
    """Whether ``module`` defines or imports ``name`` at its top level, or names it in its ``_LAZY`` table of
    names imported on first use (read statically)."""
    import ast

    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and name in {a.asname or a.name for a in node.names}:
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
        if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets) and isinstance(node.value, ast.Dict) \
                and name in {k.value for k in node.value.keys if isinstance(k, ast.Constant)}:
            return True
    return False


def test_files_and_python_names_the_pages_cite_exist():
    """Paths (`mosmos/...`, `Testing/...`, `benchmarks/...`) and dotted names (`mosmos.a.b.name`) in code spans
    name what the repository holds, so a moved module cannot leave a page pointing at nothing."""
    cited = 0
    for page in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for span in re.findall(r"`([^`\n]+)`", page.read_text(encoding="utf-8")):
            word = span.split()[0] if span.split() else ""
            where = f"{page.relative_to(ROOT)}: `{span}`"
            if re.fullmatch(r"(mosmos|Testing|benchmarks|Resources|docs|MOSMOS\w+)/[\w./-]*", word):
                assert (ROOT / word).exists(), f"{where} names a missing file"
                cited += 1
            elif re.fullmatch(r"mosmos(\.\w+)+", word):
                parts = word.split(".")
                for cut in range(len(parts), 0, -1):
                    base = ROOT.joinpath(*parts[:cut])
                    module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
                    if module.is_file():
                        break
                else:
                    pytest.fail(f"{where}: no such module")
                rest = parts[cut:]
                assert len(rest) <= 2 and all(_defines(module, name) for name in rest[:1]), f"{where}: not defined"
                cited += 1
    assert cited > 40


def test_every_readme_command_names_real_options():
    """Each mosmos command line of the README parses with the real parser (a renamed option fails here), each
    make target exists, and each script it runs is in the repository and accepts its arguments."""
    from mosmos.cli import build_parser

    makefile = (ROOT / "Makefile").read_text()
    spec = importlib.util.spec_from_file_location("batch", ROOT / "Resources" / "Scripts" / "MOSMOSSegmentBatch.py")
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    seen = set()
    for _, body in readme_blocks():
        for words in shell_commands(body):
            if words[0] == "torchrun":
                words = words[words.index("mosmos"):]
            seen.add(words[0])
            if words[0] == "mosmos":
                build_parser().parse_args(words[1:])
            elif words[0] == "make":
                assert re.search(rf"^{words[1]}:", makefile, re.M), f"make {words[1]}: no such target"
            elif words[0] == "python":
                assert words[1] == "Resources/Scripts/MOSMOSSegmentBatch.py", words
                batch.parse_args(words[2:])
            elif words[0] == "Slicer":
                script = words[words.index("--python-script") + 1]
                assert (ROOT / script).is_file(), script
                batch.parse_args(words[words.index(script) + 1:])
            else:
                pytest.fail(f"README command not checked: {' '.join(words)}")
    assert {"mosmos", "make", "python", "Slicer"} <= seen


def test_readme_quick_commands_run(tmp_path):
    """The blocks marked quick run as written, in a fresh folder beside the repository's test data."""
    (tmp_path / "Testing").symlink_to(ROOT / "Testing")
    (tmp_path / "Resources").symlink_to(ROOT / "Resources")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    quick = [body for mark, body in readme_blocks() if mark == "quick"]
    assert len(quick) >= 2
    for body in quick:
        for words in shell_commands(body):
            if words[0] == "python":
                words[0] = sys.executable
            result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{' '.join(words)}\n{result.stderr[-2000:]}"
            if "--output" in words:
                assert (tmp_path / words[words.index("--output") + 1]).exists(), words
    assert (tmp_path / "attention" / "liver.nii.gz").is_file()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The documentation site, built the way `make docs` builds it (strict: any warning fails)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_docs_build_in_strict_mode_with_every_page(site):
    for page in ("index.html", "user-guide/cli-reference/index.html", "reference/api/index.html",
                 "method/index.html", "training/index.html", "evidence/pretraining-study/index.html"):
        assert (site / page).is_file(), page
    api = (site / "reference/api/index.html").read_text(encoding="utf-8")
    assert "mosmos.inference.segmenter.Segmenter" in api and "Segment <code>array</code>" in api


def test_cli_reference_documents_every_command_and_option(site):
    import html

    from mosmos.cli import build_parser

    hook = cli_hook()
    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "user-guide/cli-reference/index.html").read_text("utf-8")))
    page = " ".join(page.split())
    commands = list(hook.commands(build_parser()))
    assert {" ".join(path) for path, _, _ in commands} >= {
        "mosmos segment", "mosmos finetune", "mosmos pretrain", "mosmos models pull", "mosmos study", "mosmos web"}
    for path, parser, description in commands:
        command = " ".join(path)
        assert description, f"{command}: no help text"
        assert command in page, f"{command}: missing from the CLI reference"
        for names, action, text in hook.options(parser):
            assert text.strip(), f"{command} {names}: an option without help text"
            shown = " ".join(text.replace("`", "").split())  # markdown shows `x` as code, without the backticks
            assert shown in page, f"{command} {names}: its help is missing from the CLI reference"


# ---- the API page: every parameter has an Args: entry -----------------------------------------------------------

API_PAGE = ROOT / "docs" / "reference" / "api.md"
DIRECTIVE = re.compile(r"^::: (?P<path>[\w.]+)\n(?:    options:\n(?P<options>(?:      .*\n)*))?", re.M)


def api_page_objects() -> list[tuple[str, list[str] | None]]:
    """(dotted path, the members the page shows: None for the default, [] for none) of each ``:::`` directive."""
    found = []
    for m in DIRECTIVE.finditer(API_PAGE.read_text(encoding="utf-8")):
        members = re.search(r"members: (.*)", m["options"] or "")
        shown = None if members is None else ([] if members[1].strip() == "false"
                                               else re.findall(r"\w+", members[1]))
        found.append((m["path"], shown))
    return found


def source_node(dotted: str):
    """The ast node of ``mosmos.a.b.name``, following the module's own imports (``from .x import name``), read
    without importing anything."""
    import ast

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                tree = ast.parse(path.read_text(encoding="utf-8"))
                name = parts[cut]
                for node in tree.body:
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                        return node
                    if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                        package = parts[:cut] if path.name == "__init__.py" else parts[:cut - 1]
                        module = package[: len(package) - node.level + 1] if node.level else []
                        return source_node(".".join(module + (node.module or "").split(".") + [name]).strip("."))
    raise AssertionError(f"{dotted}: not found in the source")


def documented_args(docstring: str | None) -> set[str]:
    """The names an ``Args:`` section (Google style) lists: ``name: meaning`` or ``name (type): meaning``."""
    lines = (docstring or "").splitlines()
    names = set()
    for i, line in enumerate(lines):
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            indent = None
            for entry in lines[i + 1:]:
                if not entry.strip():
                    continue
                width = len(entry) - len(entry.lstrip())
                if indent is None:
                    indent = width
                if width < indent:
                    break
                if width == indent and (m := re.match(r"\s*(\*{0,2}\w+)\s*(\(.*\))?:", entry)):
                    names.add(m[1])
    return names


def parameters(node) -> list[str]:
    """A function's parameters (``*args``, ``**kw`` as such), or a class's: its ``__init__``'s, else (a
    dataclass) its annotated fields that ``__init__`` takes."""
    import ast

    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is not None:
            return parameters(init)
        return [n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and n.value is None
                or isinstance(n, ast.AnnAssign) and "init=False" not in ast.unparse(n.value)]
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names += [f"*{a.vararg.arg}"] if a.vararg else []
    names += [f"**{a.kwarg.arg}"] if a.kwarg else []
    return [n for n in names if n not in ("self", "cls")]


def test_every_parameter_on_the_api_page_has_an_args_entry():
    """mkdocstrings renders an ``Args:`` entry per parameter (with the annotation's type); a parameter without one
    reads as missing on the page. Classes: their ``__init__``'s parameters (merged into the class), or a
    dataclass's fields."""
    import ast

    objects = api_page_objects()
    assert len(objects) > 20, "the API page's directives were not read"
    missing = []
    for dotted, members in objects:
        node = source_node(dotted)
        targets = [(dotted, node)]
        if isinstance(node, ast.ClassDef) and members:
            targets += [(f"{dotted}.{m}", next(n for n in node.body if getattr(n, "name", None) == m))
                        for m in members]
        for name, target in targets:
            docs = ast.get_docstring(target)
            if isinstance(target, ast.ClassDef):
                init = next((n for n in target.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                docs = (docs or "") + "\n" + (ast.get_docstring(init) or "" if init else "")
            undocumented = [p for p in parameters(target) if p.lstrip("*") not in
                            {d.lstrip("*") for d in documented_args(docs)}]
            if undocumented:
                missing.append(f"{name}: {', '.join(undocumented)}")
    assert not missing, "parameters without an Args: entry:\n" + "\n".join(missing)


def test_the_args_reader_reads_google_style():
    doc = "Do it.\n\nArgs:\n    a: the first.\n    b (int): the second,\n        on two lines.\n    **kw: more.\n\n" \
          "Returns:\n    c: not a parameter.\n"
    assert documented_args(doc) == {"a", "b", "**kw"}
