"""Measure the package's structure: import cycles, imports of the search's runner or of commands, long code."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGE = "muratune"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# Command modules: the CLI, the demo, and each stage's entry point (what one command runs). Library code never
# imports them; only other command modules may. The doctor is a command package: its checks run the other stages'
# entry points (a search, a CAM export) as a user would.
COMMAND_PACKAGES = ("muratune.cli", "muratune.doctor")
COMMAND_MODULES = (
    "muratune.demo",
    "muratune.trainables.standalone",
    "muratune.search.run",
    "muratune.ensemble.build",
    "muratune.ensemble.predict",
    "muratune.cam.export",
    "muratune.report.write",
    "muratune.refit.run",
)
# The search's runner: no other stage may learn names or helpers from it (shared Tune-job helpers live in
# muratune.search.job). Only its callers import it: the CLI, and the doctor, which runs a search as a user would.
SEARCH_RUNNER = "muratune.search.run"
RUNNER_CALLERS = ("muratune.cli", "muratune.doctor")


def _in_package(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_command(module: str) -> bool:
    """Whether a module is a command module (see COMMAND_MODULES)."""
    return module in COMMAND_MODULES or _in_package(module, COMMAND_PACKAGES)


def may_import_runner(module: str) -> bool:
    """Whether a module may import the search's runner: the search's own modules and the runner's callers."""
    return _in_package(module, ("muratune.search", *RUNNER_CALLERS))


@dataclass
class Findings:
    """What the measurement found; empty lists mean the rule holds."""

    cycles: list[list[str]] = field(default_factory=list)
    runner_imports: list[str] = field(default_factory=list)
    command_imports: list[str] = field(default_factory=list)
    long_functions: list[str] = field(default_factory=list)
    long_modules: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        """Whether every rule holds."""
        return not any(asdict(self).values())


def module_name(path: Path, root: Path) -> str:
    """The dotted module name of a file under ``root`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every package module a module imports, at the top or inside functions (relative imports resolved)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_closest(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else _closest(base, known))
                if full in known and base in known:
                    found.add(base)  # a submodule imported through its package runs the package's __init__ first
    return {module for module in found if module and module != name}


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    return ".".join(parts[:keep] + ([node.module] if node.module else []))


def _closest(dotted: str, known: set[str]) -> str:
    """The longest known module that ``dotted`` names or lies in ("" outside the package)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return ""


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def long_functions(tree: ast.Module, name: str, limit: int) -> list[str]:
    """Functions and methods longer than ``limit`` lines (decorators and docstrings included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append(f"{name}.{node.name} ({length} lines)")
    return found


def measure(root: Path) -> Findings:
    """Measure every module of the package under ``root``."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    names = {module_name(path, root): path for path in files}
    known = set(names)
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in names.items()}
    graph = {
        name: imported_modules(trees[name], name, names[name].name == "__init__.py", known) for name in sorted(names)
    }
    findings = Findings(cycles=find_cycles(graph))
    for name, imports in graph.items():
        for target in sorted(imports):
            if target == SEARCH_RUNNER and not may_import_runner(name):
                findings.runner_imports.append(f"{name} -> {target}")
            if is_command(target) and not is_command(name):
                findings.command_imports.append(f"{name} -> {target}")
        findings.long_functions.extend(long_functions(trees[name], name, MAX_FUNCTION_LINES))
        lines = len(names[name].read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            findings.long_modules.append(f"{name} ({lines} lines)")
    return findings


def main(argv: list[str] | None = None) -> int:
    """Print the findings (text or JSON); exit 1 when a rule is broken."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    findings = measure(args.root)
    if args.json:
        print(json.dumps(asdict(findings), indent=2))
    else:
        for key, values in asdict(findings).items():
            print(f"{key}: {len(values)}")
            for value in values:
                print(f"  {' <-> '.join(value) if isinstance(value, list) else value}")
    return 0 if findings.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
