"""No import cycles: no module imports one that imports it back, directly or round a longer loop.

Every import counts, inside functions and under ``TYPE_CHECKING`` too: a cycle there is still
two modules that each need the other. The plugin, the shapes and the server are all checked.
"""

from __future__ import annotations

import grimp

PACKAGES = ("pytest_distill", "distill_shapes", "distill_server")


def import_graph() -> dict[str, set[str]]:
    """Each checked module and the checked modules it imports."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (Tarjan's, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "; ".join(edges)


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert "pytest_distill.plugin" in graph and "distill_shapes" in graph
    assert [describe(c, graph) for c in cycles(graph)] == []


def test_the_cycle_finder_finds_loops_of_any_length_and_only_loops() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": {"e"},
        "e": set(),
        "f": {"f"},
        "g": {"d"},
    }
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["f"]]
    assert describe(["a", "b", "c"], graph) == "a -> b; b -> c; c -> a"
