"""The layout of the code: imports point one way (no cycle, imports inside functions included), the
plumbing package imports nothing of the method, and only the entry points reach the tiny-world builder
(through its explicit build call)."""

import ast

from conftest import REPO

ENTRY_POINTS = {"run", "train_qa", "demo", "worlds"}
PLUMBING = "plumbing"
TINY_WORLD = "tiny_world"


def project_modules():
    """Dotted name -> path of every module of the project (tests and benchmarks excluded)."""
    paths = list(REPO.glob("*.py"))
    for package in ("exp_datasets", PLUMBING, TINY_WORLD):
        paths += list((REPO / package).rglob("*.py"))
    modules = {}
    for path in paths:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name, path, modules):
    """Project modules that `name` imports anywhere in its source (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import submodule` imports the submodule, `from module import name` the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a, a.b and a.b.c, except the packages `name` itself lies in (already running)
            parts = target.split(".")
            prefixes = {".".join(parts[:i]) for i in range(1, len(parts))}
            found.update(p for p in prefixes if p in modules and not name.startswith(p + "."))
            found.update({target} & set(modules))
    found.discard(name)
    return found


def import_graph():
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def in_package(name, package):
    return name == package or name.startswith(package + ".")


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "tiny_world" in graph["demo"]  # imported inside demo.world_overrides only
    assert {"tiny_world.sanity_report", "tiny_world.world", "tiny_world.model"} <= graph["tiny_world"]
    assert {"plumbing.errors", "plumbing.files"} <= graph["plumbing.loading"]


def test_no_import_cycle_among_the_project_modules():
    graph = import_graph()
    state = {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(graph[name]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_plumbing_imports_nothing_of_the_method():
    graph = import_graph()
    outside = {
        (name, target)
        for name, targets in graph.items()
        if in_package(name, PLUMBING)
        for target in targets
        if not in_package(target, PLUMBING)
    }
    assert outside == set()


def test_only_the_entry_points_reach_the_tiny_world_builder():
    graph = import_graph()
    reaching = {
        name
        for name, targets in graph.items()
        if not in_package(name, TINY_WORLD) and any(in_package(t, TINY_WORLD) for t in targets)
    }
    assert reaching <= ENTRY_POINTS and {"run", "train_qa"} <= reaching
