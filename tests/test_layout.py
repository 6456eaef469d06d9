"""The layout of the code: imports point one way (no cycle, imports inside functions included), only
the config layer and the builder itself reach the tiny-world builder, and source files stay short."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the config resolver ${tiny_world:...} builds the default world on first use
MAY_IMPORT_TINY_WORLD = {"configs"}
TINY_WORLD = "exp_datasets.tiny_world"


def project_modules():
    """Dotted name -> path of every module of the project (tests excluded)."""
    paths = [p for p in REPO.glob("*.py")] + list((REPO / "exp_datasets").rglob("*.py"))
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


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "meta_train" in graph["run"]  # imported inside run.main only
    assert "exp_datasets.tiny_world" in graph["configs"]  # inside the resolver
    assert {"exp_datasets.tiny_world.report", "exp_datasets.tiny_world.world"} <= graph["exp_datasets.tiny_world"]


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


def test_only_the_config_layer_reaches_the_tiny_world_builder():
    graph = import_graph()
    reaching = {name for name, targets in graph.items()
                if not name.startswith(TINY_WORLD) and any(t.startswith(TINY_WORLD) for t in targets)}
    assert reaching == MAY_IMPORT_TINY_WORLD


def test_no_source_file_over_500_lines():
    sources = list(project_modules().values()) + list((REPO / "tests").glob("*.py"))
    long = {str(path.relative_to(REPO)): n for path in sources if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}
