"""The package's import graph: no circle between modules, and no private name (``_x``) imported from another module."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "d3s"


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported d3s module, names)] for every import, at the top or inside a function."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names]
                if node.level == 1 and node.module:
                    edges.append((node.module.split(".")[0], names))
                elif node.level == 1:  # from . import x
                    edges += [(n, []) for n in names if n in modules]
                elif node.module and node.module.startswith("d3s."):
                    edges.append((node.module.split(".")[1], names))
            elif isinstance(node, ast.Import):
                edges += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("d3s.")]
        found[path.stem] = [(m, names) for m, names in edges if m in modules and m != path.stem]
    return found


def test_no_import_circle():
    graph = {m: {dep for dep, _ in edges} for m, edges in _imports().items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            assert state.get(dep) != 1, f"import circle: {' -> '.join(path + [m, dep])}"
            if dep not in state:
                visit(dep, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_private_name_crosses_modules():
    crossing = [f"{m} imports {name} from {dep}" for m, edges in _imports().items() for dep, names in edges
                for name in names if name.startswith("_") and not name.startswith("__")]
    assert not crossing, crossing
