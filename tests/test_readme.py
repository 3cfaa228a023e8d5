"""The README's commands keep working, and its pages keep their links.

Convention (also in docs/development.md): a ```bash block right after a ``<!-- test -->`` line is
run, one command per line (``\\`` continues a line, ``#`` starts a comment), in a temporary folder
that links ``examples/``; each command must exit 0. Those blocks must stay fast, offline and CPU-only.
Every other ``lorastory ...`` line shown in README.md or docs/*.md must name an existing command and
only options it has; ``python`` blocks must compile and their lorastory imports must work.
"""

from __future__ import annotations

import ast
import glob
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from lorastory.cli import app, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
TEST_MARKER = "<!-- test -->"
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    runnable: bool


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``; runnable when the line before the fence is the test marker."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if opened is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        marked = start > 0 and lines[start - 1].strip() == TEST_MARKER
        blocks.append(Block(page, start + 1, opened.group(1), "\n".join(body), marked))
        i += 1
    return blocks


def commands(block: Block) -> list[list[str]]:
    """The shell commands of a block as argument lists (continuations joined, comments dropped)."""
    joined = block.text.replace("\\\n", " ")
    return [args for line in joined.splitlines() if (args := shlex.split(line, comments=True))]


def lorastory_args(args: list[str]) -> list[str] | None:
    """The arguments after ``lorastory`` (or ``-m lorastory``), or None for another program."""
    for i, arg in enumerate(args):
        if arg == "lorastory" and (i == 0 or args[i - 1] == "-m" or all("=" in a for a in args[:i])):
            return args[i + 1:]
    return None


def shown_commands(runnable: bool) -> list[tuple[str, list[str]]]:
    """(where, arguments) of every lorastory command in the bash blocks of the pages."""
    found = []
    for page in PAGES:
        for block in code_blocks(page):
            if block.lang != "bash" or block.runnable != runnable:
                continue
            for args in commands(block):
                rest = lorastory_args(args)
                if rest is not None:
                    found.append((f"{page.relative_to(ROOT)}:{block.line}: {shlex.join(args)}", rest))
    return found


RUNNABLE = [cmd for cmd in shown_commands(runnable=True) if cmd[0].startswith("README.md")]
SHOWN = shown_commands(runnable=False)


def test_readme_marks_runnable_commands() -> None:
    # Removing the marker must not make this test pass vacuously.
    names = {" ".join(a for a in args if not a.startswith("-"))[:30] for _, args in RUNNABLE}
    assert len(RUNNABLE) >= 3, RUNNABLE
    assert any(args[:2] == ["data", "import"] for _, args in RUNNABLE), names


def test_readme_runnable_commands_exit_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One folder for the whole block, in order: later commands read what earlier ones wrote.
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for where, args in RUNNABLE:
        expanded = [match for arg in args for match in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
        assert main(expanded) == 0, where


def _is_group(command: Any) -> bool:
    # Duck-typed: typer builds its commands on its own copy of click.
    return isinstance(getattr(command, "commands", None), dict)


def _click_command(args: list[str]) -> tuple[Any, list[str], set[str]]:
    """The click command ``args`` names, the arguments left after its name, and options valid on the way."""
    command: Any = typer.main.get_command(app)
    allowed: set[str] = {"--help"}
    rest = list(args)
    while True:
        allowed |= {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        if not _is_group(command):
            return command, rest, allowed
        while rest and rest[0].startswith("-"):  # group options such as --debug
            rest.pop(0)
        if rest and rest[0] not in command.commands and getattr(command, "default_command", None):
            rest.insert(0, command.default_command)  # `lorastory eval RUN` is `lorastory eval run RUN`
        if not rest or rest[0] not in command.commands:
            return command, rest, allowed
        command = command.commands[rest.pop(0)]


@pytest.mark.parametrize("where,args", SHOWN, ids=[w for w, _ in SHOWN])
def test_shown_command_exists_with_its_options(where: str, args: list[str]) -> None:
    command, rest, allowed = _click_command(args)
    assert not _is_group(command) or "--help" in args or "--version" in args, (
        f"{where}: no such command")
    options = {arg.split("=", 1)[0] for arg in rest if arg.startswith("-") and not re.fullmatch(r"-[\d.]+", arg)}
    assert options <= allowed, f"{where}: unknown option(s) {sorted(options - allowed)}"


def test_python_blocks_compile_and_import() -> None:
    blocks = [b for page in PAGES for b in code_blocks(page) if b.lang == "python"]
    assert any(b.page == README for b in blocks), "the README's Python API section has no python block"
    for block in blocks:
        where = f"{block.page.relative_to(ROOT)}:{block.line}"
        tree = ast.parse(block.text, filename=where)
        imports = [node for node in tree.body if isinstance(node, ast.ImportFrom | ast.Import)]
        exec(compile(ast.Module(body=imports, type_ignores=[]), where, "exec"), {})  # noqa: S102


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_and_images_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(ROOT)}: broken link {target}"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", file.read_text(encoding="utf-8"),
                                                       flags=re.S | re.M), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.relative_to(ROOT)}: no heading for {target}"
