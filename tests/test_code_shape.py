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
    # Imports under ``if TYPE_CHECKING:`` only name types for annotations; they never run, so a settings
    # model and the factory that takes the whole config may name each other.
    graph = grimp.build_graph("lorastory", exclude_type_checking_imports=True)
    imports = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    cycle = _find_cycle(imports)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _type_checking_names(tree: ast.Module) -> set[str]:
    """Names a module binds only inside ``if TYPE_CHECKING:`` (never at run time)."""
    checking, runtime = set(), set()
    for node in tree.body:
        bucket = checking if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) else runtime
        for sub in ast.walk(node) if bucket is checking or isinstance(node, (ast.Import, ast.ImportFrom)) else [node]:
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                bucket.update(alias.asname or alias.name.split(".")[0] for alias in sub.names)
            elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bucket.add(sub.name)
    return checking - runtime


def _runtime_uses(node: ast.AST, names: set[str], bound: frozenset[str], found: list[int]) -> None:
    """Line numbers where ``names`` are read at run time while not bound locally (annotations are not run)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        outer = [*getattr(node, "decorator_list", []), *node.args.defaults, *[d for d in node.args.kw_defaults if d]]
        for part in outer:
            _runtime_uses(part, names, bound, found)
        body = node.body if isinstance(node.body, list) else [node.body]
        local = set(bound) | {a.arg for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs}
        for statement in body:
            for sub in ast.walk(statement):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    local.update(alias.asname or alias.name.split(".")[0] for alias in sub.names)
                elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    local.add(sub.id)
        for statement in body:
            _runtime_uses(statement, names, frozenset(local), found)
        return
    if isinstance(node, ast.AnnAssign):
        if node.value is not None:
            _runtime_uses(node.value, names, bound, found)
        return
    if isinstance(node, ast.arg):
        return
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names and node.id not in bound:
        found.append(node.lineno)
    for child in ast.iter_child_nodes(node):
        _runtime_uses(child, names, bound, found)


def test_type_checking_imports_are_not_used_at_run_time():
    """A heavy library imported under ``TYPE_CHECKING`` (to keep start-up fast) must be imported again in
    each function that runs it; ruff cannot see a missing one, since the ``TYPE_CHECKING`` import satisfies it."""
    problems = []
    for file in sorted(SRC.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        names = _type_checking_names(tree)
        if not names:
            continue
        found: list[int] = []
        for node in tree.body:
            if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
                _runtime_uses(node, names, frozenset(), found)
        problems += [f"{file.relative_to(SRC).as_posix()}:{line}" for line in found]
    assert not problems, "names imported only under TYPE_CHECKING, used at run time: " + ", ".join(problems)


def test_cli_start_up_imports_no_heavy_library():
    import subprocess
    import sys

    heavy = ["torch", "diffusers", "transformers", "gradio", "pandas", "safetensors", "ray", "cv2", "scipy", "torchao",
             "accelerate", "peft"]
    code = "import sys, lorastory.cli; print(' '.join(m for m in %r if m in sys.modules))" % heavy
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"'lorastory --help' imports {loaded}: import them inside the functions that use them"
