"""The package's layers: no import cycle among gpo_mpi's modules, and mpi4py imported by mpi.py alone (cli.py
reads its version)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gpo_mpi"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules `path` imports (relative imports resolved; `from . import x` counts x if it is a module)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_import_cycle_among_the_modules():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {other for other in imports(path, top_level_only=True) if other in modules and other != name}
             for name, path in modules.items()}
    # a package's __init__ is imported by its submodules' import anyway: leave those edges out
    graph = {name: {other for other in edges if not name.startswith(other + ".")} for name, edges in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(name, trail):
        if name in done:
            return
        if name in visiting:
            cycles.append(trail[trail.index(name):] + [name])
            return
        visiting.add(name)
        for other in sorted(graph[name]):
            visit(other, trail + [name])
        visiting.discard(name)
        done.add(name)
    for name in sorted(graph):
        visit(name, [])
    assert not cycles, cycles
    assert "gpo_mpi.mutate" in graph["gpo_mpi.mutations.ppo"]  # the graph sees relative imports


def test_mpi4py_only_in_mpi_py():
    importers = {module_name(path) for path in PACKAGE.rglob("*.py")
                 if any(name.split(".")[0] == "mpi4py" for name in imports(path, top_level_only=False))}
    assert importers == {"gpo_mpi.mpi", "gpo_mpi.cli"}
