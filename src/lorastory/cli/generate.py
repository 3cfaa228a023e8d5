"""``lorastory generate``, ``regenerate`` and ``grid``: story panels and storyboards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorastory.cli.common import app, console, err_console
from lorastory.errors import ConfigError
from lorastory.fileio import display_path
from lorastory.generate.grid import check_grid_output, check_grid_text, parse_size, save_storyboard
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.regenerate import regenerate_panel
from lorastory.generate.story import generate_story
from lorastory.generate.story_file import load_story, with_consistency


def _on_off_auto(value: str, flag: str) -> bool | None:
    choices = {"auto": None, "on": True, "off": False}
    if value not in choices:
        raise ConfigError(f"{flag} must be auto, on or off, not '{value}'")
    return choices[value]


@app.command("generate")
def generate_cmd(
    story_file: Annotated[Path, typer.Argument(help="Story YAML (title, character, style, defaults, panels).")],
    model: Annotated[str, typer.Option(help="Diffusers folder, hub id or .safetensors.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: stories/<story name>).")] = None,
    lora: Annotated[Optional[Path], typer.Option(help="LoRA .safetensors to apply.")] = None,
    lora_scale: Annotated[float, typer.Option(help="LoRA strength (a finite number from -100 to 100).")] = 1.0,
    family: Annotated[Optional[str], typer.Option(help="kolors, sdxl, sd15, flux or qwen-image (default: detected).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Panels per batch (default: auto).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow a .ckpt/.pt LoRA (loaded with weights_only).")] = False,
    consistency: Annotated[Optional[str], typer.Option(
        help="Override the story's consistency mode: none, attention, reference or both.")] = None,
    ip_adapter: Annotated[Optional[str], typer.Option(
        help="IP-Adapter folder or hub id for the reference modes (overrides the story's).")] = None,
    fast: Annotated[Optional[bool], typer.Option(
        "--fast/--no-fast", help="Fuse the LoRA and q/k/v into the weights (default: on a GPU).")] = None,
    compile: Annotated[str, typer.Option(
        help="Compile the denoiser's and VAE's repeated blocks: auto (on a GPU when the story saves more "
             "than the warm-up costs; the speed line says why), on or off.")] = "auto",
    overwrite: Annotated[bool, typer.Option(
        help="Replace an earlier run in --out (only the files it wrote; other files are kept).")] = False,
    base_dtype: Annotated[str, typer.Option(
        help="Denoiser blocks' Linear layers (the family's): default, fp8 (fp8 matmuls; Ada/Hopper) or fp8-weights "
             "(stored in fp8). Needs torchao (the fp8 extra).")] = "default",
    offload: Annotated[bool, typer.Option(
        "--offload", help="For a small GPU: encode every prompt first, then keep the denoiser on the GPU with the "
                         "batch its memory holds (Kolors in 12 GB); the speed line says what it chose.")] = False,
) -> None:
    """Render a story's panels, manifest and storyboard."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    story = load_story(story_file)
    changes = {k: v for k, v in (("mode", consistency), ("ip_adapter", ip_adapter)) if v is not None}
    if changes:
        story = with_consistency(story, **changes)
    out = out or Path("stories") / story_file.stem
    columns = (TextColumn("denoising"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("generate", total=None)
        result = generate_story(
            story, model, out, lora=str(lora) if lora else None, lora_scale=lora_scale, family=family,
            batch_size=batch_size, allow_pickle=allow_pickle, fast=fast, compile=_on_off_auto(compile, "--compile"),
            on_step=lambda done, total: progress.update(task, completed=done, total=total),
            overwrite=overwrite, inputs=[("story file", story_file)], base_dtype=base_dtype, offload=offload,
        )
    count = len(result.panels)
    console.print(f"Rendered {count} panel{'s' * (count != 1)} in {result.seconds:.1f} s.", markup=False)
    console.print(f"  storyboard: {display_path(result.storyboard)}\n  manifest:   {display_path(result.manifest)}",
                  markup=False)
    if result.speed:
        console.print(f"  speed:      {result.speed}", markup=False)


@app.command("regenerate")
def regenerate_cmd(
    run: Annotated[Path, typer.Argument(help="A story run folder (with manifest.json).")],
    panel: Annotated[int, typer.Option(help="Panel number, from 1.")],
    seed: Annotated[int, typer.Option(help="The new seed (0 to 2**64-1).")],
    model: Annotated[Optional[str], typer.Option(help="Model (default: the one in manifest.json).")] = None,
    lora: Annotated[Optional[Path], typer.Option(help="LoRA (default: the one in manifest.json).")] = None,
) -> None:
    """Re-render one panel with a new seed; the other panels stay exactly as they are."""
    path = regenerate_panel(run, panel, seed, model=model, lora=str(lora) if lora else None)
    console.print(f"Rewrote {display_path(path)} (seed {seed}), the manifest and the storyboard.", markup=False)


@app.command("grid")
def grid_cmd(
    images: Annotated[list[Path], typer.Argument(help="Panel images, in reading order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Storyboard file to write.")],
    cols: Annotated[int, typer.Option(help="Columns.")] = 2,
    rows: Annotated[Optional[int], typer.Option(help="Rows (default: as many as needed).")] = None,
    spacing: Annotated[int, typer.Option(help="Gap between panels in pixels.")] = 0,
    title: Annotated[Optional[str], typer.Option(help="Title above the grid.")] = None,
    caption: Annotated[Optional[list[str]], typer.Option("--caption", help="Caption per panel (repeatable).")] = None,
    captions_from_metadata: Annotated[
        bool, typer.Option("--captions", help="Caption each panel with the prompt stored in its PNG.")
    ] = False,
    resize: Annotated[Optional[str], typer.Option(help="Final size WxH, e.g. 1024x2048 as in the reference.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Tile images into a storyboard (2 columns by default, CJK captions)."""
    size = parse_size(resize, "--resize") if resize else None
    check_grid_text(title, caption)
    check_grid_output(out, images, overwrite)
    captions = caption
    if captions_from_metadata and not captions:
        captions = [(p.prompt if (p := read_parameters(image)) else None) for image in images]
    board = save_storyboard(images, out, cols=cols, rows=rows, spacing=spacing, title=title,
                            captions=captions, resize_to=size)
    console.print(f"Wrote {display_path(out)} ({board.width}x{board.height}).", markup=False)
