"""The import graph of edgereg/, training/ and export/, read from the source (nothing is imported).

Two promises: no import cycle among their modules (imports inside functions and under
``TYPE_CHECKING`` count too: a cycle hidden in a function is still two modules that need each
other), and the runtime (``edgereg/``) never imports training or export code, so it runs where
neither torch nor onnx is installed. Only the commands in ``edgereg/cli/`` that train or export
(train, export, lr_find, synth, demo, ...) may import them.

Rules of the walk: ``edgereg.training`` is ``training/`` and ``edgereg.export`` is ``export/`` (the
installed layout); an import names the deepest module it reaches (``from edgereg.core import card``
is ``edgereg.core.card``); a package's ``__init__`` importing its own children and a module importing
its parent package are not edges (the package runs first either way).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"edgereg": ROOT / "edgereg", "edgereg.training": ROOT / "training", "edgereg.export": ROOT / "export"}
RUNTIME = "edgereg"
COMMANDS = "edgereg.cli"  # the commands: each may import what it runs
FORBIDDEN = ("edgereg.training", "edgereg.export")
# (importer, imported) pairs the runtime must keep, each with its reason; none today.
RUNTIME_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_files() -> dict[str, Path]:
    """Every module's dotted name -> its file (a package is its ``__init__.py``)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [part for part in path.relative_to(folder).with_suffix("").parts if part != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """``(dotted name, line)`` of everything ``module`` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names] + [(base, node.lineno)]
    return names


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the three packages."""
    modules = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(module, path):
            target = resolve(name)
            if target is None or target == module:
                continue
            if path.name == "__init__.py" and target.startswith(module + "."):
                continue  # a package importing its own children
            if module.startswith(target + "."):
                continue  # a module importing its parent package
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_the_three_packages():
    graph = import_graph()
    assert {"edgereg.core.card", "edgereg.training.targets.kind_training", "edgereg.export.int8.gate"} <= set(graph)
    assert "edgereg.core.kinds" in graph["edgereg.core.card"]  # a module-level import
    assert "edgereg.lab.intervals" in graph["edgereg.core.card"]  # one inside a function


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    lines = []
    for component in found:
        members = set(component)
        edges = [f"    {module} -> {target} (line {line})" for module in component
                 for target, line in sorted(graph[module].items()) if target in members]
        lines.append(" <-> ".join(component) + "\n" + "\n".join(edges))
    assert not found, "import cycles (break each at its inverted arrow):\n" + "\n".join(lines)


def test_the_runtime_imports_no_training_or_export_code():
    graph = import_graph()
    offending = [f"{module} -> {target} (line {line})"
                 for module, edges in sorted(graph.items())
                 if _inside(module, RUNTIME) and not any(_inside(module, p) for p in (*FORBIDDEN, COMMANDS))
                 for target, line in sorted(edges.items())
                 if any(_inside(target, p) for p in FORBIDDEN) and (module, target) not in RUNTIME_EXCEPTIONS]
    assert not offending, ("runtime modules import training or export code (move the torch-free part into the "
                           "runtime, or the import into an edgereg/cli command):\n" + "\n".join(offending))
