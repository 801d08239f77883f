"""Which part of the code may import which, read from the source (every import, lazy ones inside functions too).

- adapters/ (lm-eval tasks, the bridge, the sandbox) knows the runner only through the engine interface,
  runner/engines/base.py: the bridge takes an engine, a progress hook and an answer recorder typed there.
- runner/ has no import circles: each module can be read after the ones it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

from runner.config.resolvers import PROJECT_ROOT

ADAPTERS_MAY_IMPORT = {"runner.engines.base"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(package: str) -> dict[str, Path]:
    root = PROJECT_ROOT / package
    return {_module_name(p): p for p in root.rglob("*.py") if "data" not in p.relative_to(root).parts}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports: `import a.b`, `from a import b` (a module or a name in a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:  # a.b.C -> a.b, the innermost module named
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_adapters_reach_the_runner_only_through_the_engine_interface():
    runner_modules = set(_sources("runner"))
    reaching = {
        name: sorted(_imports(path, runner_modules) - ADAPTERS_MAY_IMPORT)
        for name, path in _sources("adapters").items()
    }
    assert not {name: found for name, found in reaching.items() if found}


def test_the_runner_has_no_import_circles():
    sources = _sources("runner")
    graph = {name: _imports(path, set(sources)) - {name} for name, path in sources.items()}
    # A package's __init__ is imported with each of its modules: an edge to it is no circle of its own making.
    graph = {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}
    circles = []
    for start in sorted(graph):
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph.get(node, ())):
                if dep == start:
                    circles.append(" -> ".join([*path, start]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert not circles, "\n".join(circles)
