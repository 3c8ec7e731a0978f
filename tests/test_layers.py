"""The house's layers, read from the code: no import circle, and no import that climbs back up.

The graph is built from every ``import`` of ``src/bcmanager`` (those inside functions and under
``TYPE_CHECKING`` too: a circle hidden there is still a circle). docs/design.md draws the same
layers; this test is what keeps the drawing true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bcmanager

PACKAGE = Path(bcmanager.__file__).parent

# Each layer, and the layers it may import besides itself. The top-level modules and ``reads``
# are the ground floor: names, settings, wire models and readers that every program shares.
MAY_IMPORT = {
    "ground": set(),
    "core": {"ground"},
    "facility": {"ground", "core"},
    "http": {"ground", "core", "facility"},
    "agent": {"ground"},
    "sim": {"ground"},
    "cli": {"ground", "core", "facility", "http", "agent", "sim"},
}
# The commands that only talk to a manager: they import nothing of the server.
CLIENT_COMMANDS = {"bcmanager.cli.status", "bcmanager.cli.runs"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that ``name`` imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {each for each in found if each in known and each != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module == "bcmanager.__main__":
        return "cli"  # ``python -m bcmanager``: the command line
    if len(parts) == 1 or parts[1] not in MAY_IMPORT or parts[1] == "ground":
        return "ground"
    return parts[1]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, as the modules around it (the first repeated at the end), or
    None: a depth-first walk that meets a module already on its path has closed a circle."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        trail = [start]
        ahead = {start: iter(sorted(graph[start]))}
        while trail:
            step = next(ahead[trail[-1]], None)
            if step is None:
                done.add(trail.pop())
            elif step in ahead and step not in done:
                return [*trail[trail.index(step) :], step]
            elif step not in done:
                trail.append(step)
                ahead[step] = iter(sorted(graph.get(step, ())))
    return None


def test_the_package_has_no_import_circle() -> None:
    assert find_circle(import_graph()) is None


def test_each_layer_imports_only_those_below_it() -> None:
    wrong = [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) != layer_of(module)
        and layer_of(target) not in MAY_IMPORT[layer_of(module)]
    ]
    assert wrong == []


def test_the_agent_and_the_client_commands_import_no_server_internals() -> None:
    graph = import_graph()
    clients = [m for m in graph if layer_of(m) in {"agent", "sim"} or m in CLIENT_COMMANDS]
    assert {"bcmanager.agent", "bcmanager.cli.status"} <= set(clients)
    server = {"core", "facility", "http"}
    wrong = [f"{m} imports {t}" for m in clients for t in graph[m] if layer_of(t) in server]
    assert wrong == []


@pytest.mark.parametrize(
    ("graph", "circle"),
    [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_circle_finder_finds_circles_and_only_circles(
    graph: dict[str, set[str]], circle: list[str] | None
) -> None:
    assert find_circle(graph) == circle


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    source = tmp_path / "bcmanager" / "core" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from bcmanager.facility import facility\nfrom . import y\n")
    known = {"bcmanager.facility.facility", "bcmanager.core.y", "bcmanager.facility"}
    found = _imports_of_file(source, tmp_path, known)
    assert found == {"bcmanager.facility", "bcmanager.facility.facility", "bcmanager.core.y"}


def _imports_of_file(source: Path, root: Path, known: set[str]) -> set[str]:
    name = ".".join(source.relative_to(root).with_suffix("").parts)
    return _imports(name, source, known)


LONGEST_FUNCTION = 100


def test_no_function_is_over_a_hundred_lines() -> None:
    """A function that long does several things; the house keeps each to one."""
    long = [
        f"{_module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
    ]
    assert long == []
