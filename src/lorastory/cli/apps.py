"""``lorastory demo`` and ``lorastory ui``: the whole job offline, and the web app."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from lorastory.cli.common import app, console
from lorastory.demo import DemoSize, run_demo
from lorastory.ui.app import check_bind, launch


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo makes.")] = Path("demo-out"),
    pictures: Annotated[int, typer.Option(min=8, help="Toy-world pictures to draw and curate.")] = 120,
    train_steps: Annotated[int, typer.Option(min=1, help="LoRA training steps.")] = 300,
    story_steps: Annotated[int, typer.Option(min=1, help="Sampling steps per panel.")] = 30,
) -> None:
    """Run the whole job offline on the embedded toy model: data → curation → style LoRA → story → scores."""
    run_demo(out, console, DemoSize(pictures=pictures, train_steps=train_steps, story_steps=story_steps))


# --- ui --------------------------------------------------------------------------------


@app.command("ui")
def ui_cmd(
    host: Annotated[str, typer.Option(help="Address to bind; anything but 127.0.0.1/localhost needs --auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 7860,
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="The only folder the app reads, writes and serves.")] = Path("lorastory-workspace"),
    auth: Annotated[Optional[str], typer.Option(help="USER:PASSWORD login (or set LORASTORY_UI_AUTH).", show_default=False)] = None,
) -> None:
    """The web app: data, training, stories and the gallery in a browser."""
    check_bind(host, auth)  # refuse an open bind before anything is built
    console.print(f"workspace: {workspace.resolve()}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]serving on {host}:{port} to other machines; login required[/]")

    show_job_log()
    launch(workspace, host=host, port=port, auth=auth)


def show_job_log() -> None:
    """The web app's job lines (start, end, time taken) on this console; other libraries keep their levels."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ui_log = logging.getLogger("lorastory.ui")
    ui_log.addHandler(handler)
    ui_log.setLevel(logging.INFO)
