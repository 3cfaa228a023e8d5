"""What every command shares: the typer apps, the two consoles, the global options and small printers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from lorastory import __version__
from lorastory.skips import Skip


@dataclass
class Options:
    debug: bool = False


app = typer.Typer(
    name="lorastory",
    help="From a folder of images to an illustrated story in a trained style.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Import, curate (Data-Juicer recipes) and export training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")

console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"lorastory {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    if isinstance(ctx.obj, Options):
        ctx.obj.debug = debug


def count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


def print_skips(skipped: list[Skip], limit: int = 10) -> None:
    for skip in skipped[:limit]:
        err_console.print(f"[yellow]skipped[/] {escape(skip.item)}: {escape(skip.reason)}")
    if len(skipped) > limit:
        err_console.print(f"[yellow]... and {len(skipped) - limit} more (see the report)[/]")


def clip_text(text: str, limit: int = 48) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for table cells."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
