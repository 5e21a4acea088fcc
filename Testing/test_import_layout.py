"""The core's layout, read statically (nothing is imported): no import circles between its modules nor between
its packages, no import that runs up a floor, and no loose modules beside its subpackages other than the public
face, the options and the command's entry point.

The floors, from the ground (a module imports from its own floor or below; within a floor, the packages form no
circle):

0. ``mosmos`` (the public face: its version), ``errors``, ``options``
1. ``tags``, ``losses``, ``data``, ``files``, ``qc`` (data reads tags; qc, numpy only, reads tags and files)
2. ``models``
3. ``inference``
4. ``evaluation`` (scores segmentations the inference makes)
5. ``train`` (validates with evaluation's Dice, stitches with inference's sliding window)
6. ``experiments`` (pre-train, fine-tune, evaluate)
7. ``mrml`` (Slicer's scene; its self-test runs an experiment recipe)
8. ``web``
9. ``commands``, ``cli``, ``__main__``
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "mosmos"
TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "errors", "options"}
FLOORS = [{"mosmos", "errors", "options"}, {"tags", "losses", "data", "files", "qc"}, {"models"}, {"inference"},
          {"evaluation"}, {"train"}, {"experiments"}, {"mrml"}, {"web"}, {"commands", "cli", "__main__"}]
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if package else parts), package


def import_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports anywhere in its body (inside functions too), with ``from pkg import
    submodule`` as an edge to the submodule and ``importlib.import_module("mosmos...")`` literals counted."""
    modules = {module_name(p)[0]: p for p in CORE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = module_name(path)[1]
        here = name if package else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                edges.add(node.args[0].value)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_core_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 80 and graph["mosmos.inference.segmenter"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def package_of(module: str) -> str:
    """``mosmos.inference.io`` -> ``inference``; ``mosmos.cli`` -> ``cli``; ``mosmos`` -> ``mosmos``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, edges in graph.items():
        packages.setdefault(package_of(module), set()).update(package_of(e) for e in edges)
    return {p: edges - {p} for p, edges in packages.items()}


def imports_up(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a package on a higher floor than the importer's, as "importer -> imported"."""
    return sorted(f"{m} -> {e}" for m, edges in graph.items() for e in edges
                  if FLOOR[package_of(e)] > FLOOR[package_of(m)])


def test_the_packages_have_no_import_circle():
    packages = package_graph(import_graph())
    assert {"models", "train", "inference", "evaluation"} <= set(packages)
    cycle = find_cycle(packages)
    assert cycle is None, "import circle between packages: " + " -> ".join(cycle)


def test_every_package_has_a_floor_and_imports_none_above_it():
    graph = import_graph()
    unplaced = set(package_graph(graph)) - set(FLOOR)
    assert not unplaced, f"packages without a floor in this test's FLOORS: {sorted(unplaced)}"
    up = imports_up(graph)
    assert not up, "imports up a floor (see this module's docstring):\n" + "\n".join(up)


def test_the_floor_checker_finds_an_import_up_and_a_package_circle():
    graph = {"mosmos.models.a": {"mosmos.train.config"}, "mosmos.train.config": {"mosmos.options"},
             "mosmos.options": set(), "mosmos.inference.b": {"mosmos.models.a"}}
    assert imports_up(graph) == ["mosmos.models.a -> mosmos.train.config"]
    assert find_cycle(package_graph({**graph, "mosmos.train.c": {"mosmos.inference.b"},
                                     "mosmos.inference.d": {"mosmos.train.c"}})) is not None
    assert find_cycle(package_graph(graph)) is None


def test_the_circle_finder_finds_circles():
    # the checker itself: a lazy import back up a layer is a circle too
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_has_rooms_not_loose_modules():
    loose = {p.stem for p in CORE.glob("*.py")} - TOP_LEVEL_MODULES
    assert not loose, f"modules beside the subpackages: {sorted(loose)}; put each in the subpackage of its job"
    for package in (p for p in CORE.iterdir() if (p / "__init__.py").is_file()):
        assert ast.get_docstring(ast.parse((package / "__init__.py").read_text())), f"{package.name}: no docstring"


def test_import_mosmos_stays_light():
    """The public face imports nothing heavy when read (its names load lazily)."""
    tree = ast.parse((CORE / "__init__.py").read_text())
    imported = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)} | {
        a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"errors", "importlib"}, imported
