"""The Gallery / Eval tab's actions: earlier runs, a story run with the parameters read back from
each PNG, and the scoring job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError, LorastoryError
from lorastory.eval.report import evaluate_run
from lorastory.fileio import parse_json
from lorastory.generate.pngmeta import read_parameters
from lorastory.generate.rundir import read_manifest
from lorastory.ui.jobs import JobContext
from lorastory.ui.workspace import Workspace


def story_runs(ws: Workspace) -> list[str]:
    return [str(Path(p).parent.as_posix()) for p in ws.list("stories", "*/manifest.json")]


def train_runs(ws: Workspace) -> list[str]:
    return [str(Path(p).parent.as_posix()) for p in ws.list("runs", "*/config.yaml")]


def run_details(ws: Workspace, run: str) -> dict[str, Any]:
    """A story run as the gallery shows it: panels with the parameters read back from each PNG."""
    folder = ws.resolve(run, must_exist=True)
    manifest_path = folder / "manifest.json"
    manifest = _json_or_none(manifest_path, read_manifest)
    rows, panels = [], []
    for path in sorted(folder.glob("panel-*.png")):
        if not ws.is_inside(path):
            continue
        params = read_parameters(path)
        panels.append(str(path))
        if params is None:
            rows.append([path.name, "", "", "", "", "", "", "", ""])
            continue
        lora = f"{params.lora_name}:{params.lora_scale:g}" if params.lora_name and params.lora_scale is not None else ""
        rows.append([path.name, params.prompt, params.negative_prompt, params.seed, params.steps, params.cfg_scale,
                     params.sampler, f"{params.width}x{params.height}", lora])
    scores_path = folder / "scores.json"
    scores = _json_or_none(scores_path, lambda path: parse_json(path.read_bytes(), str(path)))
    board = folder / ((manifest.storyboard if manifest is not None else None) or "storyboard.png")
    # The JSON view shows the manifest as written (keys left out stay out; unknown ones kept).
    shown = manifest.model_dump(exclude_unset=True) if manifest is not None else {}
    return {"folder": folder, "manifest": shown, "rows": rows, "panels": panels, "scores": scores,
            "storyboard": str(board) if board.is_file() and ws.is_inside(board) else None}


def _json_or_none(path: Path, read: Callable[[Path], Any]) -> Any:
    """What ``read`` makes of a JSON file, or None when it is missing or damaged (the gallery shows what it can)."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except (LorastoryError, OSError):
        return None


PARAM_COLUMNS = ["file", "prompt", "negative", "seed", "steps", "cfg", "sampler", "size", "lora"]


def eval_job(ws: Workspace, run: str, clip_model: str, compare: bool) -> Callable[[JobContext], Any]:
    """Score a story run (``scores.json``) with a CLIP model from the workspace; optionally LoRA on/off."""
    folder = ws.resolve(run, must_exist=True)
    clip = str(ws.resolve(clip_model, must_exist=True)) if clip_model else ""
    if not clip:
        raise ConfigError("choose a CLIP model folder from models/ (no hub is reachable from the app)")

    def run_job(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(0.0, "loading CLIP and scoring")
        scores = evaluate_run(folder, clip_model=clip, compare=compare, annotate=True,
                              on_step=lambda done, total: ctx.stage("rendering with and without the LoRA: step", done, total))
        ctx.data["run"] = str(folder)
        return {"summary": scores.summary}

    return run_job
