"""LoRA on/off: render a story with and without its LoRA at the same seeds, score both.

The run folder says everything needed: ``story.yaml`` (the resolved story),
``manifest.json`` (base model, LoRA file and scale). :func:`compare_lora`
loads the base model once, renders ``compare/without_lora`` first (the pipeline
is still clean), then applies the LoRA and renders ``compare/with_lora`` —
the same panels, seeds, sampler and size, on the same device, so the only
difference is the LoRA. Both are scored with the same models; the result has
each side's summary, the differences (with − without) and
``compare/lora_on_off.png``: the panels with the LoRA in the top row and
without it in the bottom row, each captioned with its scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorastory.eval.errors import EvalError
from lorastory.eval.run import read_run
from lorastory.eval.scores import SCORES_FILE, Scores, score_caption
from lorastory.fileio import atomic_write_json, file_sha256
from lorastory.generate.grid import save_storyboard
from lorastory.generate.manifest import RunManifest
from lorastory.generate.story import generate_story, lora_tag_name
from lorastory.generate.story_file import load_story
from lorastory.models.registry import FAMILIES, load_pipeline

COMPARE_DIR = "compare"
WITH_DIR = "with_lora"
WITHOUT_DIR = "without_lora"
IMAGE_FILE = "lora_on_off.png"
RESULT_FILE = "compare.json"
SUMMARY_KEYS = ("clip_t_mean", "clip_t_content_mean", "style_score_mean", "consistency", "subject_consistency", "aesthetic_mean")
PANEL_KEYS = ("clip_t", "clip_t_content", "style_score", "aesthetic", "consistency")


def _delta(with_value: float | None, without_value: float | None, digits: int = 6) -> float | None:
    if with_value is None or without_value is None:
        return None
    return round(with_value - without_value, digits)


def _find_lora(recorded: str, run_dir: Path) -> Path:
    """The LoRA the manifest names: as recorded (relative to where generate ran), else beside the run."""
    path = Path(recorded).expanduser()
    if path.is_file():
        return path
    for candidate in (run_dir / recorded, run_dir / path.name, run_dir.parent / path.name):
        if candidate.is_file():
            return candidate
    raise EvalError(f"the run's LoRA {recorded} is not found; pass --lora FILE")


def _resolve_lora(manifest: RunManifest | None, run_dir: Path, lora: str | None, lora_scale: float | None, notes: list[str]) -> tuple[Path, float]:
    record = manifest.lora if manifest is not None else None
    if lora is not None:
        path = Path(lora)
    elif record is not None:
        path = _find_lora(record.path, run_dir)
    else:
        raise EvalError(f"{run_dir} was generated without a LoRA, so there is nothing to compare; pass --lora FILE")
    if not path.is_file():
        raise EvalError(f"LoRA {path}: no such file")
    if lora is None and record is not None and record.sha256 and file_sha256(path) != record.sha256:
        notes.append(f"{path} has changed since the run was generated (sha256 differs); comparing with the file as it is now")
    recorded = record.scale if record is not None else 1.0
    try:
        scale = float(lora_scale if lora_scale is not None else recorded)
    except (TypeError, ValueError):
        raise EvalError(f"{run_dir / 'manifest.json'}: LoRA scale {recorded!r} is not a number; pass --lora-scale") from None
    if not math.isfinite(scale):
        raise EvalError(f"LoRA scale {scale}: pass a finite number (e.g. --lora-scale 1)")
    return path, scale


def family_name(manifest: RunManifest | None) -> str | None:
    """The family of the pipeline class the manifest records (e.g. KolorsPipeline → kolors)."""
    recorded = str((manifest.family if manifest is not None else None) or "")
    for name, family in FAMILIES.items():
        if recorded in (name, family.pipeline_class):
            return name
    return None


def load_pipe(model: str, family: str | None, device: str | None) -> Any:
    """The base pipeline on ``device`` (default: CUDA when available), bf16 on a GPU, fp32 on the CPU."""
    import torch

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    pipe = load_pipeline(model, family, dtype=dtype)
    pipe.to(target)
    return pipe


def _two_row_image(out: Path, with_scores: Scores, without_scores: Scores, title: str) -> Path:
    with_dir, without_dir = out / WITH_DIR, out / WITHOUT_DIR
    panels = [with_dir / p.file for p in with_scores.panels] + [without_dir / p.file for p in without_scores.panels]
    captions = [score_caption(p, "LoRA on") for p in with_scores.panels] + [
        score_caption(p, "LoRA off") for p in without_scores.panels
    ]
    target = out / IMAGE_FILE
    save_storyboard(panels, target, cols=len(with_scores.panels), rows=2, title=title, captions=captions)
    return target


def _half(on_step: Callable[[int, int], None] | None, index: int) -> Callable[[int, int], None] | None:
    """``on_step`` for render ``index`` (0 or 1) of two: steps counted over both renders."""
    if on_step is None:
        return None
    return lambda done, total: on_step(index * total + done, 2 * total)


def compare_lora(
    run_dir: str | Path,
    *,
    score: Callable[[Path], Scores],
    model: str | None = None,
    lora: str | None = None,
    lora_scale: float | None = None,
    device: str | None = None,
    render_batch_size: int | None = None,
    allow_pickle: bool = False,
    pipe: Any = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Render the run's story with and without its LoRA into ``RUN/compare`` and score both.

    ``model``/``lora``/``lora_scale`` override what the manifest recorded. A
    ``pipe`` passed in is used for both renders and gets the LoRA applied. ``score`` scores a
    rendered folder (:func:`lorastory.eval.report.evaluate_run` with the run's models).
    """
    # 1. what the run was made from
    run = read_run(run_dir)
    story_file = run.folder / "story.yaml"
    if not story_file.is_file():
        raise EvalError(f"{run.folder}: no story.yaml, so the story cannot be rendered again; generate it again")
    story = load_story(story_file)
    notes: list[str] = []
    base = model or (run.manifest.model if run.manifest is not None else None)
    if not base:
        raise EvalError(f"{run.folder / 'manifest.json'}: no base model recorded; pass --model")
    lora_path, scale = _resolve_lora(run.manifest, run.folder, lora, lora_scale, notes)

    # 2. render without the LoRA (clean pipeline), then with it
    out = run.folder / COMPARE_DIR
    if pipe is None:
        pipe = load_pipe(str(base), family_name(run.manifest), device)
    # Both renders replace the previous comparison of this run (our own folders).
    common = dict(pipe=pipe, batch_size=render_batch_size, device=str(pipe.device), overwrite=True)
    # One progress over both renders (the first is the first half), so a progress bar never starts again.
    generate_story(story, str(base), out / WITHOUT_DIR, on_step=_half(on_step, 0), **common)
    generate_story(story, str(base), out / WITH_DIR, lora=str(lora_path), lora_scale=scale, allow_pickle=allow_pickle,
                   on_step=_half(on_step, 1), **common)

    # 3. score both with the same models, and compare
    without_scores = score(out / WITHOUT_DIR)
    with_scores = score(out / WITH_DIR)
    panels = []
    for on, off in zip(with_scores.panels, without_scores.panels):
        row: dict[str, Any] = {"index": on.index, "file": on.file}
        for key in PANEL_KEYS:
            with_value, without_value = getattr(on, key), getattr(off, key)
            row[key] = {"with_lora": with_value, "without_lora": without_value, "delta": _delta(with_value, without_value, 4)}
        panels.append(row)
    summary = {
        key: {
            "with_lora": with_scores.summary[key],
            "without_lora": without_scores.summary[key],
            "delta": _delta(with_scores.summary[key], without_scores.summary[key]),
        }
        for key in SUMMARY_KEYS
    }
    title = f"{run.title + ': ' if run.title else ''}LoRA {lora_tag_name(lora_path)} at {scale:g} (top) vs without (bottom)"
    image = _two_row_image(out, with_scores, without_scores, title)
    result = {
        "model": str(base),
        "lora": {"path": str(lora_path), "scale": scale},
        "with_lora": str(out / WITH_DIR),
        "without_lora": str(out / WITHOUT_DIR),
        "image": str(image),
        "summary": summary,
        "panels": panels,
        "notes": notes,
        "scores_files": [str(out / WITH_DIR / SCORES_FILE), str(out / WITHOUT_DIR / SCORES_FILE)],
    }
    atomic_write_json(out / RESULT_FILE, result)
    return result
