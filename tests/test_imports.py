"""The project's import graph, read from the source (nothing is imported): no circles in hyperiqa/ and
tuning/, hyperiqa/ never imports tuning, tuning/engine/ imports no workflow package, and Ray's private
attributes are reached from tuning/engine/ray_private.py only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hyperiqa", "tuning")
WORKFLOWS = ("tuning.sweep", "tuning.ablation", "tuning.confirmation")
CLI_FILES = ("tuning.search", "tuning.ablate", "tuning.confirm", "tuning.export")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, at any depth of the file (a lazy import still ties two modules)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imported(p, modules) for p in files}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_there_is_no_import_circle():
    assert circles(graph()) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_imports_no_workflow_and_no_cli_file():
    wrong = {(module, target) for module, targets in graph().items() if inside(module, "tuning.engine")
             for target in targets if any(inside(target, w) for w in (*WORKFLOWS, *CLI_FILES))}
    assert wrong == set()


def test_hyperiqa_imports_nothing_of_tuning():
    wrong = {(module, target) for module, targets in graph().items() if inside(module, "hyperiqa")
             for target in targets if inside(target, "tuning")}
    assert wrong == set()


def test_no_package_module_imports_a_cli_file():
    """search.py, ablate.py, confirm.py and export.py are entry points: nothing below them imports them."""
    wrong = {(module, target) for module, targets in graph().items() if module not in CLI_FILES
             for target in targets if target in CLI_FILES}
    assert wrong == set()


def test_ray_private_attributes_are_reached_in_one_module_only():
    """Ray's private names (a `._x` on a Ray object, `ray._private`) appear in tuning/engine/ray_private.py only."""
    markers = ("ray._private", "_local_tuner", "_tune_config", "_brackets", "_rungs", "_ot_trials", "_ot_study",
               "_completed_trials", "_trial_runs", "_logger_actor_cls", "_WandbLoggingActor", "_metric_op",
               "_setup_study", "ENABLE_RAY_CLUSTER")  # a name, not part of a longer one
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(re.escape(m) for m in markers) + r")(?![A-Za-z0-9_])")
    found = {(str(path.relative_to(ROOT)), match) for path in (ROOT / "tuning").rglob("*.py")
             if path.name != "ray_private.py" for match in pattern.findall(path.read_text())}
    assert found == set()
