"""One naming rule in the core: snake_case for every function, argument, variable and attribute it defines in
mosmos/ (read statically). Slicer's camelCase belongs to the module files (MOSMOSSegment, MOSMOSTrain), which Slicer
and Qt call into; inside mosmos/ only a name Slicer, Qt or trame calls by name may keep it, listed in CALLED_IN."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAMEL = re.compile(r"^_*[a-z][a-z0-9]*[A-Z]")
# name -> who calls it by that name (an override or callback Slicer, Qt or trame looks up); none today.
CALLED_IN: dict[str, str] = {}


def defined_names(tree: ast.AST):
    """(name, line) of each function, argument, variable, import alias and ``self.`` attribute the code defines."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
                yield arg.arg, node.lineno
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id, node.lineno
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from ((a.asname, node.lineno) for a in node.names if a.asname)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id == "self"):
            yield node.attr, node.lineno


def camel_case_names(source: str, where: str) -> list[str]:
    return [f"{where}:{line}: {name}" for name, line in defined_names(ast.parse(source))
            if CAMEL.match(name) and name not in CALLED_IN]


def test_the_core_defines_no_camel_case_name():
    found = [hit for path in sorted((ROOT / "mosmos").rglob("*.py"))
             for hit in camel_case_names(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == [], "snake_case in mosmos/ (Slicer's camelCase only in the module files):\n" + "\n".join(found)


def test_the_rule_sees_each_kind_of_name():
    source = ("import numpy as npArray\ndef readArray(volumeNode, *, kw_ok=1):\n    tableNode = 1\n"
              "    self.workDir = 2\n    for segNode in []: pass\n    ok_name = 3\n")
    assert [hit.split(": ")[1] for hit in camel_case_names(source, "x.py")] == [
        "npArray", "readArray", "volumeNode", "tableNode", "workDir", "segNode"]
