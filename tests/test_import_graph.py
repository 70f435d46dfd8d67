"""No import circles inside the package.

Every ``import`` and ``from ... import`` of every module under ``aaren_rl/`` is read with
``ast`` (top-level, inside functions and under ``if TYPE_CHECKING:`` alike: a circle is a
circle in the layout even when Python happens to tolerate it at run time). Edges go from a
module to the ``aaren_rl.*`` modules it names; ``from pkg import name`` counts as an edge to
``pkg.name`` when that is a module, else to ``pkg``. A package's ``__init__`` is the package
itself. The test fails on any strongly connected component of more than one module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "aaren_rl"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Circles that are known and scheduled to be broken; each entry names its modules exactly.
# Remove an entry once its circle is gone (the test fails on a stale entry too).
KNOWN_CIRCLES: dict[str, frozenset[str]] = {}


def module_name(path: Path) -> str:
    """``aaren_rl/agents/rollout.py`` -> ``aaren_rl.agents.rollout``; ``__init__`` -> package."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The ``aaren_rl`` modules that ``module`` (file ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()

    def add(name: str) -> None:
        # the longest prefix of ``name`` that is one of our modules
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                out.add(candidate)
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = resolve_relative(module, path.name == "__init__.py", node.level, node.module)
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    names = set(modules)
    return {m: imports_of(m, p, names) for m, p in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module (the circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(frozenset(component))
    return circles


def test_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader against hand-checked edges: absolute, relative, ``from pkg import module``,
    imports inside functions and under ``TYPE_CHECKING``; and Tarjan on a hand-made graph."""
    graph = import_graph()
    # absolute, top level
    assert "aaren_rl.nn.aaren" in graph["aaren_rl.agents.fast_step"]
    # relative (`from .step_checks import check_step_inputs`)
    assert "aaren_rl.agents.step_checks" in graph["aaren_rl.agents.fast_step"]
    # inside a function (`from aaren_rl.agents import fast_step_numba`): a module, not the package
    assert "aaren_rl.agents.fast_step_numba" in graph["aaren_rl.agents.fast_step"]
    # `from aaren_rl.bench import agent, backbone, export`: three modules, not the package
    assert {"aaren_rl.bench.agent", "aaren_rl.bench.backbone", "aaren_rl.bench.export"} <= graph[
        "aaren_rl.bench.cli"
    ]
    assert "aaren_rl.bench.common" in graph["aaren_rl.bench.agent"]
    # a package's __init__ is the package
    assert "aaren_rl.training.loop" in graph["aaren_rl.training"]

    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(map(sorted, strongly_connected(toy))) == [["a", "b", "c"], ["d", "e"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    circles = strongly_connected(import_graph())
    unexpected = [sorted(c) for c in circles if c not in KNOWN_CIRCLES.values()]
    assert not unexpected, f"import circles in {PACKAGE}: {unexpected}"


def test_known_circles_still_exist() -> None:
    """An allow-list entry whose circle is gone must be deleted, so the list cannot go stale."""
    circles = strongly_connected(import_graph())
    stale = [name for name, members in KNOWN_CIRCLES.items() if members not in circles]
    assert not stale, f"the circles {stale} are gone: delete their entries from KNOWN_CIRCLES"
