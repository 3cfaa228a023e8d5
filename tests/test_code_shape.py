"""The code's shape: small modules and functions, enforced so it cannot drift.

A module may have at most 500 lines and a function at most 120. A place still over would be
listed with its size: it may only shrink, and the test fails once it fits (so the entry is
removed) or when anything else grows past a limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp  # import-linter's graph builder

SRC = Path(__file__).resolve().parents[1] / "src" / "lorastory"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120

# Places still over a limit, with their size today (none: keep it so).
KNOWN_LARGE_MODULES: dict[str, int] = {}
KNOWN_LONG_FUNCTIONS: dict[str, int] = {}


def _measure() -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for file in sorted(SRC.rglob("*.py")):
        name = file.relative_to(SRC).as_posix()
        text = file.read_text(encoding="utf-8")
        modules[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[f"{name}:{node.name}"] = max(
                    functions.get(f"{name}:{node.name}", 0), node.end_lineno - node.lineno + 1
                )
    return modules, functions


def _check(sizes: dict[str, int], limit: int, known: dict[str, int], what: str) -> list[str]:
    problems = []
    for name, size in sizes.items():
        if size > limit and size > known.get(name, limit):
            problems.append(f"{what} {name}: {size} lines (limit {limit}" + (f", was {known[name]})" if name in known else ")"))
    for name, size in known.items():
        if sizes.get(name, 0) <= limit:
            problems.append(f"{what} {name} now fits the limit: remove it from the known list")
    return problems


def test_modules_and_functions_stay_small():
    modules, functions = _measure()
    problems = _check(modules, MAX_MODULE_LINES, KNOWN_LARGE_MODULES, "module")
    problems += _check(functions, MAX_FUNCTION_LINES, KNOWN_LONG_FUNCTIONS, "function")
    assert not problems, "\n".join(problems)


def _own_module(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "lorastory"
    return any(alias.name.split(".")[0] == "lorastory" for alias in node.names)


def _imports_in_functions(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [node for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom)) and _own_module(node)]
    return found


def test_lorastory_modules_are_imported_at_module_top():
    # A lazy import of our own code hides the real import graph (and the cycles the next test looks for).
    # Heavy third-party libraries (torch, diffusers, gradio) may still be imported inside functions.
    problems = []
    for file in sorted(SRC.rglob("*.py")):
        for node in _imports_in_functions(ast.parse(file.read_text(encoding="utf-8"))):
            problems.append(f"{file.relative_to(SRC).as_posix()}:{node.lineno}: {ast.unparse(node)}")
    assert not problems, "import these at the module top:\n" + "\n".join(sorted(set(problems)))


def _find_cycle(imports: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(imports):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(imports[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(imports.get(nxt, ()))))
    return None


def test_no_import_cycle():
    graph = grimp.build_graph("lorastory")
    imports = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    cycle = _find_cycle(imports)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
