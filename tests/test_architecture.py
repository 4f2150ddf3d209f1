"""The house of docs/architecture.md: the core's imports run one way (no cycle), and the engine
never reaches back to the Server it is built by.

Imports are read from the source with ``ast``, every one of them: at the top, inside
functions and under ``if TYPE_CHECKING:``, since a cycle hidden there is still a cycle.
Each package below the core (``drivers/``, ``integrations/``) counts as one node that
imports whatever any of its modules imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "machinery_aio"
ENGINE = ("worker", "runner", "periodic", "tasks", "publisher")
"""Modules the Server builds and hands only what they use: none may import ``server``."""


def node_of(module: str) -> str | None:
    """``machinery_aio.drivers.redis.broker`` -> ``drivers``; None outside the package."""
    parts = module.split(".")
    if parts[0] != "machinery_aio" or len(parts) == 1:
        return None
    return parts[1]


def imported(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Absolute names of every module ``source`` (the module ``module``) imports."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # ``from . import gotime``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_graph() -> dict[str, set[str]]:
    """Core node -> the core nodes it imports."""
    nodes = {node_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    graph: dict[str, set[str]] = {str(n): set() for n in nodes}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        source_node = node_of(name)
        if source_node is None:
            continue  # machinery_aio/__init__.py: the public API, importing everything, imported by nobody
        for target in imported(path.read_text(), name, path.name == "__init__.py"):
            target_node = node_of(target)
            if target_node in graph and target_node != source_node:
                graph[source_node].add(target_node)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = (
        "from __future__ import annotations\n"
        "import machinery_aio.gotime\n"
        "from typing import TYPE_CHECKING\n"
        "from . import state\n"
        "from .drivers.redis import keys\n"
        "if TYPE_CHECKING:\n"
        "    from .server import Server\n"
        "def later():\n"
        "    from .cron import CronSchedule\n"
    )
    found = {node_of(m) for m in imported(source, "machinery_aio.worker", is_package=False)} - {None}
    assert found == {"gotime", "state", "drivers", "server", "cron"}


def test_the_graph_holds_the_known_arrows() -> None:
    graph = core_graph()
    assert {"worker", "periodic", "publisher", "tasks", "drivers"} <= graph["server"]
    assert "runner" in graph["worker"]
    assert "publisher" in graph["runner"]
    assert "server" in graph["cli"]
    # drivers see only the wire (signature, state, gotime, gotypes) and the config
    assert graph["drivers"] <= {"config", "gotime", "gotypes", "log", "signature", "state", "urls"}


def test_the_core_has_no_import_cycle() -> None:
    graph = core_graph()
    cycle: list[str] = []
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle = list(reversed(exc.args[1]))  # graphlib lists it against the arrows
        order = []
    assert not cycle, f"import cycle in the core: {' imports '.join(cycle)}"
    assert set(order) == set(graph)


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_never_imports_the_server(module: str) -> None:
    graph = core_graph()
    assert "server" not in graph[module]
    assert "server" not in reachable(graph, module), f"{module} reaches server.py through its imports"
