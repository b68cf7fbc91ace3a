"""The import graph keeps the layering README's architecture section promises: data flows one way.

Read from the source with `ast` (every import, the lazy ones inside functions too), so a new arrow that
closes a circle fails here before it confuses anyone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import facesmith

ROOT = Path(facesmith.__file__).parent
# What each layer may import from facesmith; anything not listed is off limits to it.
ALLOWED = {
    "errors": set(),
    "progress": set(),
    "runtime": {"errors"},
    "attributes": {"errors", "progress"},
    "data": {"attributes", "config", "errors", "progress"},
}


def module_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts).removesuffix(".__init__")
        package = parts[:-1] if path.name != "__init__.py" else parts
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                names = [".".join(p for p in (base, node.module or "") if p)]
            else:
                continue
            targets |= {n for n in names if n.startswith("facesmith.")}
    return graph


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if not state.get(nxt) and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if not state.get(start) and (found := visit(start, [start])):
            return found
    return None


def test_no_module_imports_itself_in_a_circle():
    graph = module_imports()
    known = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    assert cycle(known) is None


def test_no_circle_between_layers():
    layers: dict[str, set[str]] = {}
    for module, targets in module_imports().items():
        layers.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    assert cycle(layers) is None


def test_the_bottom_layers_import_only_what_is_below_them():
    for module, targets in module_imports().items():
        own = layer(module)
        if own in ALLOWED:
            above = {layer(t) for t in targets} - ALLOWED[own] - {own}
            assert not above, f"{module} imports {sorted(above)}"
