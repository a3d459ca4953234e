"""Imports go one way: pipelines -> components -> ssr, and inside ``ssr`` from the wiring (CLI,
pipeline steps, serving) down to the library, with leaf modules at the bottom and no cycle.

Every ``import`` counts, at module level or deferred inside a function: a cycle that works only
because one side defers its import is still a cycle. The checker itself is tested on a graph
with a cycle put in, so that a passing run means something.

An import deferred into a function must earn its place: it keeps a heavy third-party package
(:data:`HEAVY`) out of its module's import, or a package the registered model's environment
does not hold out of the modules that model loads, or it guards an optional one with
``except ImportError``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable, Mapping
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

# What runs where only the registered model's requirements are installed (its own environment
# and the serve image): the module MLflow loads for the model and the serve image's entry
# point. Then the requirements' import names where they differ from the distribution's.
MODEL_ENTRIES = ("ssr.registry.pyfunc_model", "ssr.registry.transcriber", "ssr.serving")
IMPORT_NAMES = {"mlflow-skinny": "mlflow", "pyyaml": "yaml", "flashlight-text": "flashlight"}

# Third-party packages that take about 0.1 s or more to import (``python -X importtime``: torch,
# mlflow and sklearn several seconds; safetensors for its ``safetensors.torch``).
HEAVY = frozenset(
    {
        "boto3",
        "botocore",
        "fastapi",
        "kfp",
        "kubeflow_katib_api",
        "kubeflow_trainer_api",
        "kubernetes",
        "matplotlib",
        "mlflow",
        "numpy",
        "pandas",
        "pydantic",
        "requests",
        "safetensors",
        "scipy",
        "sklearn",
        "sqlalchemy",
        "torch",
        "uvicorn",
        "wandb",
    }
)


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


def _parents(module: str) -> list[str]:
    """The packages whose ``__init__`` importing ``module`` runs first, outermost first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve(target: str, files: Mapping[str, Path]) -> str:
    """A project module (the longest prefix that is one: ``from pkg import x`` is the submodule
    pkg.x when it is one, else pkg, where x is defined or re-exported) or a third-party
    package's root."""
    if target.split(".")[0] not in PACKAGES:
        return target.split(".")[0]
    while target and target not in files:
        target = target.rpartition(".")[0]
    return target


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for imported in _imported(node, name, path.name == "__init__.py"):
                target = _resolve(imported, files)
                # importing a.b.c runs a/__init__.py and a/b/__init__.py first: edges to them too
                for module in [*_parents(target), target]:
                    if module in files and module != name:
                        graph[name].add(module)
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


def _split_imports(
    files: Mapping[str, Path],
) -> tuple[dict[str, set[str]], dict[str, list[tuple[int, list[str]]]]]:
    """Per module: what it imports when loaded, and its deferred imports (line, targets) that
    are not guarded by ``except ImportError``. ``if TYPE_CHECKING:`` imports are neither."""
    loaded: dict[str, set[str]] = {}
    deferred: dict[str, list[tuple[int, list[str]]]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        skip: set[int] = set()  # ids of import nodes that run only for type checkers
        inner: set[int] = set()
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner.update(id(n) for n in ast.walk(node))
            elif isinstance(node, ast.Try) and any(
                h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers
            ):
                guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        loaded[name], deferred[name] = set(), []
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skip:
                continue
            targets = [
                _resolve(t, files) for t in _imported(node, name, path.name == "__init__.py")
            ]
            if id(node) not in inner:
                loaded[name].update(targets)
            elif id(node) not in guarded:
                deferred[name].append((node.lineno, targets))
    return loaded, deferred


def load_closure(
    files: Mapping[str, Path], loaded: Mapping[str, set[str]]
) -> Callable[[str], frozenset[str]]:
    """module -> what importing it loads: project modules (itself and its packages' __init__
    included) and third-party top-level packages; deferred imports not."""
    memo: dict[str, frozenset[str]] = {}

    def closure(module: str) -> frozenset[str]:
        # A whole walk per module, memoised only when complete: a memo filled inside an import
        # cycle (a package __init__ and its submodules) would hold a partial closure, and which
        # one would depend on set order, i.e. on the interpreter's hash seed.
        if module not in memo:
            seen: set[str] = set()
            stack = [module]
            while stack:
                name = stack.pop()
                if name in seen:
                    continue
                seen.add(name)
                if name in files:
                    stack += [*_parents(name), *loaded[name]]
            memo[module] = frozenset(seen)
        return memo[module]

    return closure


def deferred_imports_that_save_nothing(
    files: Mapping[str, Path],
    model_entries: Iterable[str] = (),
    serving: frozenset[str] = frozenset(),
) -> list[str]:
    """Deferred imports that keep no :data:`HEAVY` package out of their module's import and,
    in the modules loaded from ``model_entries`` (where only the model's requirements are
    installed), no package outside ``serving`` and the standard library either."""
    loaded, deferred = _split_imports(files)
    closure = load_closure(files, loaded)
    in_model = frozenset().union(*(closure(m) for m in model_entries))
    found = []
    for name in sorted(deferred):
        for line, targets in deferred[name]:
            gained = frozenset().union(*(closure(t) for t in targets)) - closure(name)
            if gained & HEAVY:
                continue
            if name in in_model and gained - files.keys() - serving - sys.stdlib_module_names:
                continue
            found.append(f"{name}:{line} imports {', '.join(targets)}")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_imports_follow_the_layers(graph: dict[str, set[str]]) -> None:
    assert violations(graph) == []


def serving_packages() -> frozenset[str]:
    """The import names of the shipped model's requirements (``ssr register`` pins them)."""
    from ssr.registry.register import serving_distributions

    return frozenset(
        IMPORT_NAMES.get(d.lower(), d.lower().replace("-", "_")) for d in serving_distributions()
    )


def test_deferred_imports_save_start_up_time() -> None:
    files = {k: v for k, v in module_files().items() if k.startswith("ssr")}
    assert deferred_imports_that_save_nothing(files, MODEL_ENTRIES, serving_packages()) == []


@pytest.mark.parametrize("entry", MODEL_ENTRIES)
def test_the_shipped_model_imports_only_its_requirements(entry: str) -> None:
    """The registered model's code (all of ``ssr``, as MLflow code) is loaded, and the serve
    image runs, where only the model's pinned requirements are installed
    (tests/test_model_env.py builds such an environment, slowly): what the entry module loads
    must be among them or in the standard library."""
    files = {k: v for k, v in module_files().items() if k.startswith("ssr")}
    loaded, _ = _split_imports(files)
    outside = load_closure(files, loaded)(entry) - files.keys() - serving_packages()
    assert sorted(outside - sys.stdlib_module_names) == []


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
    assert graph["ssr.a"] == {"ssr.sub", "ssr.sub.b"} and graph["ssr.sub.b"] == {"ssr.a"}
    assert cycles(graph) == [["ssr.a", "ssr.sub.b"]]


def test_the_checker_sees_a_cycle_through_a_package_init(tmp_path: Path) -> None:
    """``from ssr.pkg.leaf import x`` runs ``ssr/pkg/__init__.py`` first: when that imports
    the importer back, it is a cycle although ``leaf`` itself imports nothing."""
    package = tmp_path / "ssr"
    (package / "pkg").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pkg" / "__init__.py").write_text("from ssr.pkg.loop import run\n")
    (package / "pkg" / "leaf.py").write_text("X = 1\n")
    (package / "pkg" / "loop.py").write_text("from ssr.other import y\n")
    (package / "other.py").write_text("from ssr.pkg.leaf import X\ny = X\n")
    files = {k: v for k, v in module_files(tmp_path).items() if k.startswith("ssr")}
    assert cycles(import_graph(files)) == [["ssr.other", "ssr.pkg", "ssr.pkg.loop"]]


def test_closures_inside_an_import_cycle_are_whole(tmp_path: Path) -> None:
    """A package __init__ that imports a submodule is a cycle (the submodule's import runs the
    __init__ first); the closure of a sibling must hold what the cycle loads, whichever module
    was asked about first (a partial memo once made this depend on the hash seed)."""
    package = tmp_path / "ssr" / "pkg"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from ssr.pkg import a\n")
    (package / "a.py").write_text("import torch\n")
    (package / "b.py").write_text("X = 1\n")
    files = {k: v for k, v in module_files(tmp_path).items() if k.startswith("ssr")}
    loaded, _ = _split_imports(files)
    for first in ("ssr.pkg.a", "ssr.pkg", "ssr.pkg.b"):
        closure = load_closure(files, loaded)
        closure(first)
        assert "torch" in closure("ssr.pkg.b") and "torch" in closure("ssr.pkg")


def test_the_checker_sees_a_deferred_import_that_saves_nothing(tmp_path: Path) -> None:
    package = tmp_path / "ssr"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "heavy.py").write_text("import torch\n")
    (package / "light.py").write_text("import json\n")
    (package / "a.py").write_text(
        "import numpy\n"
        "def f():\n    from ssr import heavy\n"  # keeps torch out: fine
        "def g():\n    import numpy.linalg\n"  # numpy is already loaded: saves nothing
        "def h():\n    from ssr import light\n"  # nothing heavy at all: saves nothing
        "def i():\n    try:\n        import fcntl\n    except ImportError:\n        pass\n"
    )
    (package / "uses_tqdm.py").write_text("import tqdm\n")
    (package / "model.py").write_text("import numpy\ndef f():\n    from ssr import uses_tqdm\n")
    files = {k: v for k, v in module_files(tmp_path).items() if k.startswith("ssr")}
    found = [line.split(" ", 1)[0] for line in deferred_imports_that_save_nothing(files)]
    assert found == ["ssr.a:5", "ssr.a:7", "ssr.model:3"]
    # in the shipped model's modules, keeping a package its environment lacks out is a reason
    found = deferred_imports_that_save_nothing(files, ["ssr.model"], frozenset({"numpy"}))
    assert [line.split(" ", 1)[0] for line in found] == ["ssr.a:5", "ssr.a:7"]
