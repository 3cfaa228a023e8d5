"""``lorastory model ...``: tiny random models, the embedded toy model, a tiny IP-Adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lorastory.cli.common import console, model_app
from lorastory.fileio import check_output_folder, check_outputs_apart
from lorastory.models.ip_adapter import build_tiny_ip_adapter
from lorastory.models.tiny import build_tiny_model
from lorastory.models.toy import write_toy_model


@model_app.command("tiny")
def model_tiny(
    family: Annotated[str, typer.Option(help="kolors, sdxl, sd15, flux, qwen-image, qwen-image-edit, or clip / chinese-clip (for eval tests).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the diffusers model into.")],
    seed: Annotated[int, typer.Option(help="Weights seed (same seed, same bytes).")] = 0,
    resolution: Annotated[int, typer.Option(min=8, max=4096, help="Native image size in pixels (CLIP: its input size).")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Build a tiny random model of a family as a diffusers (or transformers CLIP) folder, offline and deterministic."""
    check_output_folder(out, overwrite)

    build_tiny_model(family, out, seed=seed, resolution=resolution)
    console.print(f"Wrote tiny {family} model to {out}")


@model_app.command("toy")
def model_toy(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the model into.")],
    component: Annotated[str, typer.Option(help="kolors (the toy text-to-image model) or clip (the toy Chinese CLIP).")] = "kolors",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write the embedded toy model (trained by lorastory on its toy world) as a normal model folder."""
    check_output_folder(out, overwrite)

    write_toy_model(out, component)
    console.print(f"Wrote the toy {component} model to {out}", markup=False)


@model_app.command("tiny-ip-adapter")
def model_tiny_ip_adapter(
    model: Annotated[Path, typer.Option(help="Diffusers model folder whose UNet the adapter must fit.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the IP-Adapter (and its image encoder) into.")],
    seed: Annotated[int, typer.Option(help="Weights seed (same seed, same bytes).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Build a tiny random IP-Adapter-Plus for a model, in the family's published layout (for tests and demos)."""
    check_outputs_apart([("--out", out)], [("--model", model)])
    check_output_folder(out, overwrite)

    build_tiny_ip_adapter(out, model, seed=seed)
    console.print(f"Wrote a tiny IP-Adapter for {model} to {out} (consistency.ip_adapter: {out})", markup=False)
