"""The code's shape: small modules and functions, enforced so it cannot drift.

A module may have at most 500 lines and a function at most 120. A place still over would be
listed with its size: it may only shrink, and the test fails once it fits (so the entry is
removed) or when anything else grows past a limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
