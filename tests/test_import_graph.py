"""The import graph of the repository, read from the source (ast, every .py file, imports
inside functions included, since a cycle hidden there is still a cycle):

- no import cycle among the modules of apps/*;
- the apps are layered, common < services < workers < provisioning < web, and import only
  downward: a lower app tells a higher one what happened through apps/common/events.py,
  and shared vocabulary (the worker states) lives in apps/common;
- memrun/ and worker_daemon/ import no Django, nor apps/ or memrun_site/;
- memrun/ does not import worker_daemon/ (the daemon builds on the SDK, not the reverse);
- nothing outside memrun/ imports a private `memrun._x` module.

Each rule is also run over a small planted tree that breaks it, so that a checker that
sees nothing cannot pass.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SKIP_DIRS = {".venv", "var", "build", "dist", "node_modules", "__pycache__"}
_DJANGO = ("django", "ninja", "apps", "memrun_site")
LAYERS = ("common", "services", "workers", "provisioning", "web")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    where: str  # path:line


def python_files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".") and "egg-info" not in d
        )
        yield from (Path(folder) / name for name in sorted(files) if name.endswith(".py"))


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> list[Import]:
    """Every import of every file under `root`. `from a import b` counts as importing
    `a.b` when that is a module here, else `a`; a relative import is resolved."""
    files = list(python_files(root))
    known = {module_name(root, path) for path in files}
    found: list[Import] = []
    for path in files:
        source = module_name(root, path)
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [Import(source, alias.name, where) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    found.append(Import(source, child if child in known else base, where))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append(Import(source, node.args[0].value, where))
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _app(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "apps" else None


def app_module_cycles(found: list[Import]) -> list[list[str]]:
    """Cycles among modules of apps/* (each strongly connected group of two or more, or a
    module importing itself), as sorted module lists."""
    graph: dict[str, set[str]] = {}
    for edge in found:
        if _app(edge.source) and _app(edge.target):
            graph.setdefault(edge.source, set()).add(edge.target)
            graph.setdefault(edge.target, set())
    # Tarjan's strongly connected components, iteratively (no recursion limit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in graph[node]:
                        cycles.append(sorted(group))
    return cycles


def layer_violations(found: list[Import]) -> list[str]:
    """Imports that break the layering rules of the module docstring, one line each."""
    problems = []
    for edge in found:
        source, target = edge.source, edge.target
        app, target_app = _app(source), _app(target)
        rule = ""
        if app and target_app and not {app, target_app} <= set(LAYERS):
            rule = f"place the new app in LAYERS ({', '.join(LAYERS)})"
        elif app and target_app and LAYERS.index(target_app) > LAYERS.index(app):
            rule = f"apps import only downward ({' < '.join(LAYERS)}): emit an event instead"
        elif (_within(source, "memrun") or _within(source, "worker_daemon")) and any(
            _within(target, banned) for banned in _DJANGO
        ):
            rule = "memrun/ and worker_daemon/ import no Django, apps/ or memrun_site/"
        elif _within(source, "memrun") and _within(target, "worker_daemon"):
            rule = "memrun/ does not import worker_daemon/"
        elif (
            not _within(source, "memrun")
            and _within(target, "memrun")
            and any(part.startswith("_") for part in target.split(".")[1:])
        ):
            rule = "a private memrun module is imported from outside memrun/"
        if rule:
            problems.append(f"{edge.where}: {source} imports {target}: {rule}")
    return problems


def test_the_checker_reads_this_repository() -> None:
    found = imports(ROOT)
    sources = {edge.source for edge in found}
    # Function-level imports are read: apps/provisioning/apps.py imports only in ready().
    assert any(
        edge.source == "apps.provisioning.apps" and edge.target == "apps.common.events"
        for edge in found
    )
    assert {"apps.workers.services", "memrun.cli", "worker_daemon.cli"} <= sources


def test_no_import_cycles_among_the_apps() -> None:
    assert app_module_cycles(imports(ROOT)) == []


def test_the_layers_hold() -> None:
    assert layer_violations(imports(ROOT)) == []


PLANTED = {
    "apps/__init__.py": "",
    "apps/common/__init__.py": "",
    "apps/common/util.py": "from apps.workers import models\n",
    "apps/workers/__init__.py": "",
    "apps/workers/models.py": "import apps.billing\n",
    "apps/billing/__init__.py": "",
    "apps/workers/services.py": (
        "def soon():\n    from apps.provisioning.tasks import reconcile_soon\n"
    ),
    "apps/provisioning/__init__.py": "",
    "apps/provisioning/tasks.py": "from . import reconcile\n",
    "apps/provisioning/reconcile.py": "from ..workers.services import soon\n",
    "memrun/__init__.py": "",
    "memrun/_client.py": "",
    "memrun/cli.py": "def run():\n    import worker_daemon.main\n",
    "memrun/site.py": "import importlib\nimportlib.import_module('django.conf')\n",
    "worker_daemon/__init__.py": "",
    "worker_daemon/main.py": "from memrun import _client\nfrom apps.workers.models import x\n",
    "tools/check.py": "import memrun._client\nimport memrun.cli\n",
}


@pytest.fixture
def planted(tmp_path: Path) -> list[Import]:
    for name, text in PLANTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return imports(tmp_path)


def test_a_cycle_hidden_in_a_function_level_import_is_found(planted: list[Import]) -> None:
    assert app_module_cycles(planted) == [
        ["apps.provisioning.reconcile", "apps.provisioning.tasks", "apps.workers.services"]
    ]


def test_each_planted_layer_violation_is_named(planted: list[Import]) -> None:
    problems = layer_violations(planted)
    expected = [
        "apps/common/util.py:1: apps.common.util imports apps.workers.models: apps import "
        "only downward",
        "apps/workers/services.py:2: apps.workers.services imports apps.provisioning.tasks: "
        "apps import only downward",
        "apps/workers/models.py:1: apps.workers.models imports apps.billing: place the new app",
        "memrun/cli.py:2: memrun.cli imports worker_daemon.main: memrun/ does not import",
        "memrun/site.py:2: memrun.site imports django.conf: memrun/ and worker_daemon/",
        "tools/check.py:1: tools.check imports memrun._client: a private memrun module",
        "worker_daemon/main.py:1: worker_daemon.main imports memrun._client: a private",
        "worker_daemon/main.py:2: worker_daemon.main imports apps.workers.models: memrun/ and",
    ]
    assert len(problems) == len(expected), problems
    for line in expected:
        assert any(problem.startswith(line) for problem in problems), (line, problems)
