"""Which part of the code may import which, read from the source (every import, lazy ones inside functions too).
docs/architecture.md draws these rules; this test keeps the drawing true.

- adapters/ (lm-eval tasks, the bridge, the sandbox) knows the runner only through the engine interface,
  runner/engines/base.py: the bridge takes an engine, a progress hook and an answer recorder typed there.
  adapters/sandbox/ is a library of its own: it imports nothing of the runner, and any part may use it.
- runner/'s folders are layers (LAYERS, lowest first): a module imports its own folder and the folders
  below it, never one above. The entry points (`python -m runner`, the CLI, Hydra's sweep callbacks) sit
  on top. One module is shared upward on purpose: runner/job/results.py, the plain records of what a job
  produced, which tracking and reporting read.
- runner/ has no import circles: each module can be read after the ones it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

from runner.config.resolvers import PROJECT_ROOT

ADAPTERS_MAY_IMPORT = {"runner.engines.base"}
LAYERS = ("config", "console", "catalog", "machine", "engines", "tracking", "reporting", "job")
ENTRY = {"runner.__main__", "runner.cli", "runner.sweep_callbacks"}
# module -> the layers that may read it from below
SHARED_RECORDS = {"runner.job.results": ("tracking", "reporting")}


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


def _layer(module: str) -> int:
    """The layer of a runner module: its folder's place in LAYERS; the entry points are above them all."""
    if module in ENTRY:
        return len(LAYERS)
    folder = module.split(".")[1]
    assert folder in LAYERS, f"{module}: runner/{folder}/ is no layer of LAYERS (add it, and to docs/architecture.md)"
    return LAYERS.index(folder)


def test_runner_folders_import_only_their_own_layer_and_the_ones_below():
    sources = {name: path for name, path in _sources("runner").items() if name.count(".") >= 1}
    known = set(sources)
    upward = []
    for name, path in sorted(sources.items()):
        if name.endswith("__init__") or name == "runner":
            continue
        for dep in sorted(_imports(path, known) - {name}):
            if name.startswith(dep + ".") or name.split(".")[1] in SHARED_RECORDS.get(dep, ()):
                continue
            if _layer(dep) > _layer(name):
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_what_is_shared_upward_imports_only_below_the_layers_that_read_it():
    sources = _sources("runner")
    for name, layers in SHARED_RECORDS.items():
        readers = min(LAYERS.index(layer) for layer in layers)
        above = [dep for dep in _imports(sources[name], set(sources)) if _layer(dep) >= readers]
        assert not above, f"{name} imports {above}"


def test_the_sandbox_is_a_library_of_its_own_and_only_the_job_uses_the_bridge_and_tasks():
    runner_modules = set(_sources("runner"))
    sandbox = {name: path for name, path in _sources("adapters").items() if name.startswith("adapters.sandbox")}
    assert sandbox and not {
        name: _imports(path, runner_modules) for name, path in sandbox.items() if _imports(path, runner_modules)
    }
    adapters = set(_sources("adapters"))
    users = sorted(
        name
        for name, path in _sources("runner").items()
        if any(not dep.startswith("adapters.sandbox") for dep in _imports(path, adapters))
        and not name.startswith("runner.job.")
    )
    assert not users, f"only runner/job/ runs lm-eval through the bridge; also: {users}"
