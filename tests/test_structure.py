"""The import structure of src/bucketly: no circles, and no import from a lower layer upward.

The layers, from the ground up (docs/architecture is the folder names, ../shared/STYLE.md):
``errors`` and ``_speedups``; ``protocol`` (sans-I/O); ``unique``, ``handlers``, ``store``,
``client``; ``buckets``; ``server``; ``cli`` on top. Imports are read from the source with
``ast``; those under ``if TYPE_CHECKING:`` are left out, since they never run (annotations may
name a type of a layer above, as long as nothing imports it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import bucketly

SRC = Path(bucketly.__file__).parent
#: For each layer (a top-level module or package of bucketly), what it must not import.
FORBIDDEN = {
    "protocol": {"server", "client", "buckets", "store", "cli", "handlers", "unique"},
    "store": {"server", "client", "buckets", "cli"},
    "client": {"server", "buckets", "store", "cli"},
    "buckets": {"server", "client", "cli"},
    "server": {"cli", "client"},
    "handlers": {"server", "client", "buckets", "cli", "store"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    """The bucketly modules ``path`` imports when it runs."""
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("bucketly"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                if module.startswith("bucketly"):
                    found.add(module)
                    # "from . import x" imports the submodule x
                    for alias in child.names:
                        if (SRC.parent / (module.replace(".", "/") + f"/{alias.name}.py")).exists():
                            found.add(f"{module}.{alias.name}")
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _runtime_imports(path):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]  # a name imported from a module
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_circles() -> None:
    graph = _graph()
    # A package's __init__ importing its own modules is no circle of the code's design.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert _cycles(graph) == []


def test_no_import_from_a_lower_layer_upward() -> None:
    upward = sorted(
        f"{source} imports {target}"
        for source, targets in _graph().items()
        for target in targets
        if _layer(target) in FORBIDDEN.get(_layer(source), set())
    )
    assert upward == []


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    """The checks themselves can fail: they find what they are meant to find."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _graph()
    assert "bucketly.server.ops" in graph["bucketly.server.connection"]
    assert "bucketly.protocol.messages" in graph["bucketly.protocol.connection"]
