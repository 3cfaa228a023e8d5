"""Trying one panel before rendering a whole story: a single-panel preview, and a LoRA-scale X/Y grid
(scales × seeds, or scales × the checkpoints of the LoRA's training run) for that panel.

Both render with :func:`lorastory.generate.story.generate_story` (one-panel stories), into the
workspace's ``previews/`` folder; the grid loads the model once and takes each LoRA out again
after its render, so every cell is the base model plus one LoRA at one scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError
from lorastory.eval.checkpoints import checkpoint_candidates
from lorastory.eval.compare import load_pipe
from lorastory.eval.sweep import parse_scales
from lorastory.generate.grid import save_storyboard
from lorastory.generate.story import generate_story
from lorastory.ui.actions.models import check_machine, resolve_model
from lorastory.ui.jobs import JobContext
from lorastory.ui.workspace import Workspace

GRID_AXES = ("seeds", "checkpoints")
MAX_CELLS = 36


def one_panel(story: Any, index: int, seeds: list[int] | None = None) -> Any:
    """``story`` with only panel ``index`` (1-based), once per seed in ``seeds`` (default: its own seed)."""
    if not 1 <= index <= len(story.panels):
        raise ConfigError(f"panel {index}: the story has {len(story.panels)} panel(s)")
    panel = story.panels[index - 1]
    seed = panel.seed if panel.seed is not None else story.defaults.seed + index - 1
    panels = [panel.model_copy(update={"seed": s}) for s in (seeds or [seed])]
    return story.model_copy(update={"panels": panels})


def parse_seeds(text: str) -> list[int]:
    """``"1, 2, 3"`` → the seeds (whole numbers, at least one)."""
    seeds = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        try:
            seeds.append(int(part))
        except ValueError:
            raise ConfigError(f"seed '{part}' is not a whole number; write e.g. 1, 2, 3") from None
    if not seeds:
        raise ConfigError("give at least one seed, e.g. 1, 2")
    return seeds


def preview_job(ws: Workspace, story: Any, index: int, model: str, lora: str | None, scale: float,
                name: str, base_dtype: str = "default", offload: bool = False) -> Callable[[JobContext], Any]:
    """Render panel ``index`` of the form's story alone into ``previews/NAME-panel-N`` (with the Story tab's
    base dtype and offload: the preview is rendered as the story will be)."""
    single = one_panel(story, index)
    model_path = resolve_model(ws, model)
    check_machine(base_dtype, offload)
    lora_path = str(ws.resolve(lora, must_exist=True)) if lora else None
    out = ws.child("previews", f"{name}-panel-{index}")

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, f"loading the model for panel {index}")
        result = generate_story(single, model_path, out, lora=lora_path, lora_scale=scale, overwrite=True,
                                base_dtype=base_dtype, offload=offload,
                                on_step=lambda done, total: ctx.progress(done / total, f"panel {index}, step {done}/{total}"))
        ctx.data["image"] = str(result.panels[0])
        return {"image": ws.rel(result.panels[0])}

    return run


def grid_loras(ws: Workspace, lora: str, axis: str) -> list[tuple[str, Path]]:
    """(label, file) of the LoRAs across the grid's columns: the one chosen, or its run's checkpoints."""
    path = ws.resolve(lora, must_exist=True)
    if axis != "checkpoints":
        return [(path.stem, path)]
    found = checkpoint_candidates(path.parent)
    if not found:
        raise ConfigError(f"{ws.rel(path.parent)}: no checkpoints to compare; train with 'checkpoint every' set")
    return [(f"step {step}", file) for step, file in found]


def grid_job(ws: Workspace, story: Any, index: int, model: str, lora: str | None, scales_text: str, axis: str,
             seeds_text: str, name: str) -> Callable[[JobContext], Any]:
    """Panel ``index`` at each LoRA scale (rows) × each seed or checkpoint (columns), as one captioned grid."""
    if not lora:
        raise ConfigError("choose a LoRA for the X/Y grid")
    if axis not in GRID_AXES:
        raise ConfigError(f"grid columns: '{axis}' is not one of {', '.join(GRID_AXES)}")
    scales = parse_scales(scales_text)
    seeds = parse_seeds(seeds_text) if axis == "seeds" else None
    loras = grid_loras(ws, lora, axis)
    columns = len(seeds) if seeds else len(loras)
    if len(scales) * columns > MAX_CELLS:
        raise ConfigError(f"{len(scales)} scales × {columns} columns is over {MAX_CELLS} pictures; use fewer")
    model_path = resolve_model(ws, model)
    base = one_panel(story, index)
    out = ws.child("previews", f"{name}-grid-{index}")

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, "loading the model")
        pipe = load_pipe(model_path, None, None)
        cells: list[tuple[float, str, Any]] = []
        for scale in scales:  # rows
            for label, file in loras:
                cells += [(scale, label, seed) for seed in (seeds or [None])]
        pictures, captions = [], []
        for number, (scale, label, seed) in enumerate(cells):
            ctx.check()
            ctx.progress(number / len(cells), f"picture {number + 1}/{len(cells)}: scale {scale:g}, {label}")
            single = one_panel(story, index, [seed]) if seed is not None else base
            file = dict(loras)[label]
            folder = out / f"cell-{number:02d}"
            result = generate_story(single, model_path, folder, lora=str(file), lora_scale=scale, pipe=pipe,
                                    fast=False, compile=False, overwrite=True)
            _drop_adapters(pipe)
            pictures.append(result.panels[0])
            captions.append(f"scale {scale:g}, " + (f"seed {seed}" if seed is not None else label))
        target = out / "grid.png"
        save_storyboard(pictures, target, cols=columns, rows=len(scales), captions=captions, spacing=4,
                        title=f"panel {index}: LoRA scale (rows) × {axis} (columns)")
        ctx.data["grid"] = str(target)
        return {"grid": ws.rel(target), "cells": len(cells)}

    return run


def _drop_adapters(pipe: Any) -> None:
    """Take every LoRA out of ``pipe`` again (the next cell starts from the base model)."""
    names = sorted({name for adapters in pipe.get_list_adapters().values() for name in adapters})
    if names:
        pipe.delete_adapters(names)
