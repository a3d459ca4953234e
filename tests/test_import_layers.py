"""Imports go one way: pipelines -> components -> ssr, and inside ``ssr`` from the wiring (CLI,
pipeline steps, serving) down to the library, with leaf modules at the bottom and no cycle.

Every ``import`` counts, at module level or deferred inside a function: a cycle that works only
because one side defers its import is still a cycle. The checker itself is tested on a graph
with a cycle put in, so that a passing run means something.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssr", "components", "pipelines")

# (importer prefixes, forbidden import prefixes, why)
CONTRACTS: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (
        ("ssr.metrics", "ssr.errors", "ssr.redact", "ssr.fsutil"),
        ("ssr",),
        "leaf modules import nothing of ssr (errors excepted for fsutil)",
    ),
    (
        ("ssr.tracking", "ssr.storage", "ssr.data", "ssr.plots", "ssr.config", "ssr.model"),
        (
            "ssr.training",
            "ssr.evaluation",
            "ssr.registry",
            "ssr.cluster",
            "ssr.steps",
            "ssr.cli",
            "ssr.commands",
            "ssr.serving",
        ),
        "library layers below training know nothing of training, evaluation or the wiring",
    ),
    (
        ("ssr.training", "ssr.evaluation", "ssr.registry", "ssr.cluster", "ssr.baseline"),
        ("ssr.cli", "ssr.commands", "ssr.steps"),
        "the library does not import the CLI or the pipeline steps that call it",
    ),
    (("ssr",), ("components", "pipelines"), "ssr never imports the KFP wiring"),
    (("components",), ("pipelines",), "components never import the pipeline"),
]
ALLOWED = {("ssr.fsutil", "ssr.errors")}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of :data:`PACKAGES`."""
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, name, path.name == "__init__.py"):
                # `from pkg import x`: the submodule pkg.x when it is one, else pkg (where x is
                # defined or re-exported); `import a.b`: a.b
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
        # a submodule importing its own package's __init__ is how Python loads it, not a cycle
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports that break a contract, as ``importer -> imported (why)``."""
    found = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if (importer, target) in ALLOWED:
                continue
            for sources, forbidden, why in CONTRACTS:
                if _under(importer, sources) and _under(target, forbidden):
                    found.append(f"{importer} -> {target} ({why})")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_imports_follow_the_layers(graph: dict[str, set[str]]) -> None:
    assert violations(graph) == []


def test_the_checker_sees_a_cycle_put_in(graph: dict[str, set[str]]) -> None:
    broken = {name: set(targets) for name, targets in graph.items()}
    broken["ssr.metrics"].add("ssr.evaluation")  # evaluation imports metrics: now a cycle
    assert any({"ssr.evaluation", "ssr.metrics"} <= set(c) for c in cycles(broken))
    assert any(v.startswith("ssr.metrics -> ssr.evaluation") for v in violations(broken))


def test_the_checker_reads_deferred_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "ssr"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from ssr.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    files = {k: v for k, v in module_files(tmp_path).items() if k.startswith("ssr")}
    graph = import_graph(files)
    assert graph["ssr.a"] == {"ssr.sub.b"} and graph["ssr.sub.b"] == {"ssr.a"}
    assert cycles(graph) == [["ssr.a", "ssr.sub.b"]]
