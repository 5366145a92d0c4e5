"""The package's structure: no import cycles among its modules, and no module of 450 lines or more."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "hparr"
MAX_LINES = 450


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, at module level or inside functions: `import a.b` imports
    a.b; `from a import b` imports a.b when that is a module, else a; relative imports are resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def a_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """One cycle through members[0] inside the component `members`, as a list of modules (first = last)."""
    inside = set(members)
    start = members[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first from start, back to start
        nxt = []
        for node in frontier:
            for m in sorted(graph[node] & inside):
                if m == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if m not in parent:
                    parent[m] = node
                    nxt.append(m)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def strong_components(graph: dict[str, set[str]]) -> list[list[str]]:
    names = sorted(graph)
    index = {n: i for i, n in enumerate(names)}
    rows = [index[a] for a in names for _ in graph[a]]
    cols = [index[b] for a in names for b in sorted(graph[a])]
    matrix = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(matrix, directed=True, connection="strong")
    groups: dict[int, list[str]] = {}
    for name, label in zip(names, labels):
        groups.setdefault(int(label), []).append(name)
    return list(groups.values())


def test_the_import_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "hparr.layout" in graph["hparr.report.discovery"]  # from ..layout import NAME
    assert "hparr.report._study_figures" in graph["hparr.report.study"]  # from . import MODULE
    assert "hparr.files" in graph["hparr.report"]  # from .. import MODULE, in a package's __init__
    assert "hparr.report.figures" in graph["hparr.cli._reinit"]  # an import inside a function
    # the reinit stage draws no figures: no module of it reaches the report
    assert not any(dep.startswith("hparr.report") for name, deps in graph.items() if name.startswith("hparr.reinit")
                   for dep in deps)
    # the cycle finder on a made-up graph: a -> b -> c -> a, and d -> a
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (cycle,) = [c for c in strong_components(toy) if len(c) > 1]
    assert sorted(cycle) == ["a", "b", "c"] and a_cycle(toy, cycle) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = [a_cycle(graph, members) for members in strong_components(graph) if len(members) > 1]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_is_under_450_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    large = {name: n for name, n in sorted(sizes.items()) if n >= MAX_LINES}
    assert not large, f"modules of {MAX_LINES} lines or more: " + ", ".join(f"{k} ({v})" for k, v in large.items())
