"""The package's layering (STYLE.md): no import cycle between nipype_xai's packages, and the
cores never import Nipype, so a reader finds any computation without reading Nipype code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nipype_xai"

#: Packages and modules that must not import Nipype (STYLE.md: cores have no Nipype, no paths).
CORES = ("attribution", "metrics", "synth", "models", "registration", "templates", "anatomy",
         "images", "tables", "atomic")


def _imports(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports (top level and inside functions), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                found.add(target)
                if not node.module:
                    found.update(f"{target}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        package = name if is_package else name.rsplit(".", 1)[0]
        yield name, path, _imports(path, package)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, set[str]]:
    """``unit -> units it imports``, a unit being a subpackage or a top-level module."""
    graph: dict[str, set[str]] = {}
    for name, _, imported in _modules():
        if name == "nipype_xai":
            continue
        for target in imported:
            if target.startswith("nipype_xai.") and _unit(target) != _unit(name):
                graph.setdefault(_unit(name), set()).add(_unit(target))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_packages():
    assert _cycles(package_graph()) == []


def test_cores_do_not_import_nipype():
    offenders = sorted(
        f"{name} imports {target}"
        for name, _, imported in _modules() if _unit(name) in CORES
        for target in imported if target == "nipype" or target.startswith("nipype.")
    )
    assert not offenders, offenders
