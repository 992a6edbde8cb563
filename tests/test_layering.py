"""The project's import graph: dependencies point one way and form no cycle.

The graph is read with :mod:`ast` from the sources of ``common/``, ``experiments/``,
``crowdai/`` and ``bench/`` (nothing is imported), every ``import`` statement counted,
those inside functions (lazy imports) included. An edge ``a -> b`` means module ``a``
names module ``b`` in an import statement:

* ``import p.q.r`` is an edge to ``p.q.r``;
* ``from p.q import r`` is an edge to the module ``p.q.r`` when ``p/q/r.py`` (or
  ``p/q/r/__init__.py``) exists, and to the package ``p.q`` (its ``__init__``) when ``r``
  is an attribute defined there; relative imports are resolved first.

Importing ``p.q.r`` also runs ``p/__init__`` and ``p/q/__init__``, but that implicit
parent initialisation is not an edge: Python always initialises a package before its
children, so a child module (``common/x.py`` doing ``from common import mp3``, which
names ``common.mp3``) would otherwise "depend" on a package ``__init__`` that imports it,
a cycle that can never fail. A child that takes a *name* from its package's
``__init__`` (``from common.models import build_model`` inside ``common/models/musicnn.py``)
does depend on it, and is an edge.

The layers, from the bottom: ``common`` (the library) imports no other package;
``experiments`` and ``crowdai`` import ``common`` only (not each other); ``bench`` may
import all three. So nothing of the product imports ``bench`` or ``tests``, and no two
top-level packages import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "experiments", "crowdai", "bench")

#: What signal I/O must not pull in, even lazily: pretrained-model code and deep learning.
PRETRAINED_MODULES = ("common.embeddings", "common.pretrained", "common.models")
DEEP_LEARNING_LIBRARIES = ("keras", "tensorflow")


def module_name(path: Path) -> str:
    """``common/models/__init__.py`` -> ``common.models``; ``common/io.py`` -> ``common.io``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Module name -> source file, for every module of :data:`PACKAGES`."""
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def resolve_from(node: ast.ImportFrom, *, importer: str, is_package: bool) -> str:
    """Absolute name of the module a ``from ... import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, *, importer: str, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """Project modules and top-level external packages that ``path`` imports, lazily or not.

    Returns
    -------
    (set of str, set of str)
        Project module names (edges as defined in the module docstring) and the first
        component of every other imported name (``keras``, ``numpy``, ...).
    """
    internal: set[str] = set()
    external: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] not in PACKAGES:
            external.add(name.split(".")[0])
            return
        while name and name not in modules:  # ``import common.models.musicnn.x`` cannot happen,
            name = name.rpartition(".")[0]   # but a stale name must not crash the walk
        if name:
            internal.add(name)

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(node, importer=importer, is_package=path.name == "__init__.py")
            for alias in node.names:
                child = f"{source}.{alias.name}"
                add(child if child in modules else source)
    internal.discard(importer)
    return internal, external


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    """Module -> (project modules it imports, external packages it imports)."""
    modules = project_modules()
    return {name: imports_of(path, importer=name, modules=modules) for name, path in modules.items()}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles as paths ``[a, b, ..., a]``: a shortest one through each module on a cycle.

    Tarjan's algorithm finds the strongly connected components; within each, a
    breadth-first search from every module back to itself gives a shortest cycle through
    it (so two cycles sharing a module are both reported, unless one is a detour of the other).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the ~100 modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)

    cycles: set[tuple[str, ...]] = set()
    for component in components:
        for start in component:
            cycle = shortest_cycle(edges, start=start, within=component)
            at = cycle.index(min(cycle))  # one rotation per cycle: from its smallest module
            cycles.add(tuple(cycle[at:] + cycle[:at] + [cycle[at]]))
    return sorted(list(cycle) for cycle in cycles)


def shortest_cycle(edges: dict[str, set[str]], *, start: str, within: set[str]) -> list[str]:
    """Modules of a shortest cycle through ``start`` inside ``within`` (``start`` first, not repeated)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while start not in parents:  # ``within`` is strongly connected: the search ends
        following = []
        for node in frontier:
            for succ in sorted(edges[node] & within):
                if succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    path = [parents[start]]
    while path[-1] != start:
        path.append(parents[path[-1]])
    return path[::-1]


def test_find_cycles_reports_each_cycle_as_a_path():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "f"}, "f": set()}
    assert find_cycles(edges) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    # two cycles sharing ``x``: both are reported
    edges = {"x": {"y", "z"}, "y": {"x"}, "z": {"x"}}
    assert find_cycles(edges) == [["x", "y", "x"], ["x", "z", "x"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_from_package_import_module_names_the_module_not_the_package(graph):
    internal, _ = graph["common.audio"]
    assert "common.mp3" in internal  # ``from common import mp3``
    assert "common" not in internal


def test_lazy_imports_are_edges(graph):
    # common/audio.py imports librosa only inside a function
    assert "librosa" in graph["common.audio"][1]


#: Which top-level packages each may import: imports point from the tools down to the library.
ALLOWED_PACKAGE_IMPORTS = {
    "common": set(),
    "experiments": {"common"},
    "crowdai": {"common"},
    "bench": {"common", "experiments", "crowdai"},
}
#: What the product (every package but ``bench``) must never import, even lazily.
NOT_PRODUCT = ("bench", "tests")


def package_edges(graph) -> set[tuple[str, str, str, str]]:
    """``(package, imported package, module, imported module)`` of every import across top-level packages.

    ``tests`` is not one of :data:`PACKAGES`, so an import of it counts among the external names.
    """
    edges = set()
    for module, (internal, external) in graph.items():
        package = module.split(".")[0]
        for target in internal | {name for name in external if name in NOT_PRODUCT}:
            if target.split(".")[0] != package:
                edges.add((package, target.split(".")[0], module, target))
    return edges


def test_package_edges_see_lazy_imports_of_bench_and_tests():
    graph = {"crowdai.x": ({"bench.predict", "common.io"}, {"tests", "numpy"}), "bench.y": ({"crowdai.x"}, set())}
    assert package_edges(graph) == {("crowdai", "bench", "crowdai.x", "bench.predict"),
                                    ("crowdai", "common", "crowdai.x", "common.io"),
                                    ("crowdai", "tests", "crowdai.x", "tests"),
                                    ("bench", "crowdai", "bench.y", "crowdai.x")}


def test_the_product_imports_neither_bench_nor_tests(graph):
    offending = sorted(f"{module} -> {target}" for package, imported, module, target in package_edges(graph)
                       if package != "bench" and imported in NOT_PRODUCT)
    assert not offending, ("common/, experiments/ and crowdai/ must not import bench/ or tests/:\n"
                           + "\n".join(offending))


def test_packages_import_only_the_layers_below_them(graph):
    offending = sorted(f"{module} -> {target} "
                       f"({package} may import {sorted(ALLOWED_PACKAGE_IMPORTS[package]) or 'none'})"
                       for package, imported, module, target in package_edges(graph)
                       if imported not in ALLOWED_PACKAGE_IMPORTS[package])
    assert not offending, "imports across top-level packages against the layering:\n" + "\n".join(offending)


def test_no_two_packages_import_each_other(graph):
    pairs = {(package, imported) for package, imported, _, _ in package_edges(graph)}
    mutual = sorted(f"{a} <-> {b}" for a, b in pairs if (b, a) in pairs and a < b)
    assert not mutual, "top-level packages that import each other:\n" + "\n".join(mutual)


def test_no_import_cycles(graph):
    cycles = find_cycles({module: internal for module, (internal, _) in graph.items()})
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_signal_io_imports_no_pretrained_model_code(graph):
    """common/audio.py and what it imports, transitively and lazily, stay model-free.

    Each offence is reported once, as the import chain that first reaches it.
    """

    def forbidden(module: str) -> bool:
        return any(module == bad or module.startswith(bad + ".") for bad in PRETRAINED_MODULES)

    offending = []
    chains = {"common.audio": ["common.audio"]}
    todo = ["common.audio"]
    while todo:  # breadth-first: the shortest chain to each module
        module = todo.pop(0)
        offending += [
            " -> ".join([*chains[module], library])
            for library in sorted(graph[module][1] & set(DEEP_LEARNING_LIBRARIES))
        ]
        for target in sorted(graph[module][0]):
            if target in chains:
                continue
            chains[target] = [*chains[module], target]
            if forbidden(target):
                offending.append(" -> ".join(chains[target]))  # not followed further
            else:
                todo.append(target)
    assert not offending, "common/audio.py reaches pretrained-model code:\n" + "\n".join(offending)
