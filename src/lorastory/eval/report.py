"""Scoring a generated run folder: ``scores.json`` and an annotated storyboard.

:func:`evaluate_run` reads the run's ``manifest.json`` (or, without one, the
prompts stored in the ``panel-NN.png`` files), loads the panels and scores
them: CLIP-T per panel and its mean, character consistency (whole panels and
centre crops), and the aesthetic rating when predictor weights are given
(otherwise every aesthetic value is ``null`` and the summary says why).
Notes in the result flag what makes a number less trustworthy: Chinese
prompts read by an English CLIP, prompts cut at CLIP's 77-token window.
``compare=True`` adds the LoRA on/off comparison (:mod:`lorastory.eval.compare`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from lorastory import __version__
from lorastory.eval.compare import compare_lora
from lorastory.generate.grid import save_storyboard
from lorastory.models.aesthetic import NOT_AVAILABLE, AestheticPredictor, VisionEmbedder, default_clip_for, load_aesthetic
from lorastory.models.clip import CHINESE_CLIP, DEFAULT_CLIP, ClipModel, has_chinese, load_clip
from lorastory.eval.consistency import SubjectCrop, character_consistency
from lorastory.eval.errors import EvalError
from lorastory.eval.run import Run, load_panel_images, read_run
from lorastory.eval.scores import SCORES_FILE, ClipInfo, PanelScores, Scores, score_caption
from lorastory.errors import AestheticModelError
from lorastory.fileio import atomic_write_json

SCORED_STORYBOARD = "storyboard_scored.png"


@dataclass
class Scorers:
    """Loaded models, reusable across runs (the LoRA comparison scores two)."""

    clip: ClipModel
    aesthetic: AestheticPredictor | None = None
    aesthetic_embedder: ClipModel | VisionEmbedder | None = None
    aesthetic_reason: str = "no weights given; pass --aesthetic PATH"
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- models


def load_scorers(
    clip_model: str = DEFAULT_CLIP,
    aesthetic: str | Path | None = None,
    aesthetic_clip: str | None = None,
    device: str | None = None,
    allow_pickle: bool = False,
) -> Scorers:
    """Load the CLIP model and, when weights are given, the aesthetic predictor and the CLIP it reads."""
    clip = load_clip(clip_model, device)
    scorers = Scorers(clip)
    if aesthetic is None:
        return scorers
    predictor = load_aesthetic(aesthetic, allow_pickle=allow_pickle, device=device)
    scorers.aesthetic = predictor
    if predictor.embedder is not None:
        scorers.aesthetic_embedder = predictor.embedder
        return scorers
    source, note = (aesthetic_clip, None) if aesthetic_clip else default_clip_for(predictor, clip.embed_dim, clip.source)
    if note:
        scorers.notes.append(note)
    embedder = clip if source == clip.source else load_clip(source, device)
    if embedder.embed_dim != predictor.input_dim:
        raise AestheticModelError(
            f"aesthetic head {predictor.path} reads {predictor.input_dim}-d embeddings but {source} gives "
            f"{embedder.embed_dim}-d; pass the CLIP it was trained on with --aesthetic-clip"
        )
    scorers.aesthetic_embedder = embedder
    predictor.clip_hint = source
    return scorers


# --------------------------------------------------------------------------- scoring


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _notes(scorers: Scorers, prompts: list[str], truncated: list[bool]) -> list[str]:
    notes = list(scorers.notes)
    if scorers.clip.kind == "clip" and any(has_chinese(p) for p in prompts):
        notes.append(
            f"prompts are Chinese but {scorers.clip.source} is an English CLIP, which reads Chinese badly; "
            f"for CLIP-T that means something, pass --clip {CHINESE_CLIP}"
        )
    if any(truncated):
        notes.append(
            f"{sum(truncated)} prompt(s) exceed the text encoder's {scorers.clip.max_text_tokens}-token window; "
            "their CLIP-T reads the first tokens only"
        )
    if len(prompts) < 2:
        notes.append("one panel: consistency needs at least two")
    return notes


def strip_style(prompt: str, style: str) -> str:
    """The prompt without the story's style phrase at its end (what the panel shows, not how)."""
    style = style.strip().strip(",，")
    if style and prompt.endswith(style):
        return prompt[: -len(style)].rstrip(" ,，")
    return prompt


def _similarity(image_emb: Any, text_emb: Any) -> list[float]:
    return [100.0 * float(c) for c in (image_emb * text_emb).sum(dim=-1).clamp(-1.0, 1.0)]


def score_images(
    scorers: Scorers,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    batch_size: int = 16,
    subject_crop: SubjectCrop = "center",
    style: str | None = None,
) -> dict[str, Any]:
    """Per-panel and summary scores of ``images`` against ``prompts`` (no files read or written).

    With the story's ``style`` phrase, each panel also gets ``style_score`` (CLIP
    similarity to the style phrase alone: did the pictures take the style?) and
    ``clip_t_content`` (CLIP-T of the prompt without the style: is the story still drawn?).
    """
    clip = scorers.clip
    image_emb = clip.image_embeddings(images, batch_size)
    text_emb = clip.text_embeddings(prompts, batch_size)
    clip_t = _similarity(image_emb, text_emb)
    style_score: list[float | None] = [None] * len(images)
    clip_t_content: list[float | None] = [None] * len(images)
    if style and style.strip():
        style_score = list(_similarity(image_emb, clip.text_embeddings([style.strip()], 1).expand_as(image_emb)))
        clip_t_content = list(_similarity(image_emb, clip.text_embeddings([strip_style(p, style) for p in prompts], batch_size)))
    truncated = [n > clip.max_text_tokens for n in clip.token_counts(prompts)]
    consistency = character_consistency(clip, images, subject_crop, batch_size, embeddings=image_emb)
    aesthetic: list[float | None] = [None] * len(images)
    if scorers.aesthetic is not None and scorers.aesthetic_embedder is not None:
        embedder = scorers.aesthetic_embedder
        emb = image_emb if embedder is clip else embedder.image_embeddings(images, batch_size)
        aesthetic = list(scorers.aesthetic.score_embeddings(emb))
    panels = [
        {
            "clip_t": _round(clip_t[i], 4),
            "clip_t_content": _round(clip_t_content[i], 4),
            "style_score": _round(style_score[i], 4),
            "prompt_truncated": truncated[i],
            "aesthetic": _round(aesthetic[i], 4),
            "consistency": _round(consistency.per_panel[i], 6),
            "subject_consistency": _round(consistency.subject_per_panel[i], 6) if consistency.subject_per_panel else None,
        }
        for i in range(len(images))
    ]
    summary = {
        "panels": len(images),
        "clip_t_mean": _round(_mean(clip_t), 4),
        "clip_t_min": _round(min(clip_t), 4) if clip_t else None,
        "clip_t_max": _round(max(clip_t), 4) if clip_t else None,
        "clip_t_content_mean": _round(_mean(clip_t_content), 4),
        "style_score_mean": _round(_mean(style_score), 4),
        **consistency.as_dict(),
        "aesthetic_mean": _round(_mean(aesthetic), 4),
    }
    return {"panels": panels, "summary": summary, "notes": _notes(scorers, list(prompts), truncated)}


def _aesthetic_section(scorers: Scorers) -> dict[str, Any]:
    if scorers.aesthetic is None:
        return {"available": False, "status": NOT_AVAILABLE, "reason": scorers.aesthetic_reason}
    return scorers.aesthetic.describe()


def evaluate_run(
    run_dir: str | Path,
    clip_model: str = DEFAULT_CLIP,
    aesthetic: str | Path | None = None,
    *,
    aesthetic_clip: str | None = None,
    device: str | None = None,
    batch_size: int = 16,
    subject_crop: SubjectCrop = "center",
    annotate: bool = False,
    compare: bool = False,
    compare_options: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    scorers: Scorers | None = None,
    write: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> Scores:
    """Score a run folder; write ``scores.json`` (and ``storyboard_scored.png`` with ``annotate``).

    ``compare=True`` also renders the story with and without its LoRA
    (:func:`lorastory.eval.compare.compare_lora`, ``compare_options`` go to it) and
    adds the result under ``"compare"``. ``scorers`` reuses loaded models.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise EvalError(f"batch size must be 1 or more, got {batch_size}")
    run = read_run(run_dir)
    scorers = scorers or load_scorers(clip_model, aesthetic, aesthetic_clip, device, allow_pickle)
    images = load_panel_images(run)
    style = run.manifest.style if run.manifest is not None and isinstance(run.manifest.style, str) else None
    scored = score_images(scorers, images, [p.prompt for p in run.panels], batch_size, subject_crop, style)
    scores = Scores(
        lorastory_version=__version__,
        run=str(run.folder.resolve()),
        title=run.title,
        clip=ClipInfo(model=scorers.clip.source, kind=scorers.clip.kind, device=str(scorers.clip.device),
                      max_text_tokens=scorers.clip.max_text_tokens),
        aesthetic=_aesthetic_section(scorers),
        panels=[PanelScores(index=p.index, file=p.file, prompt=p.prompt, **s) for p, s in zip(run.panels, scored["panels"])],
        style=style,
        summary=scored["summary"],
        notes=scored["notes"],
    )
    if compare:
        score = partial(evaluate_run, scorers=scorers, batch_size=batch_size, subject_crop=subject_crop)
        scores.compare = compare_lora(
            run.folder, score=score, device=device, allow_pickle=allow_pickle, on_step=on_step, **(compare_options or {}),
        )
    if annotate:
        scores.storyboard_scored = str(annotate_storyboard(run, scores))
    scores.seconds = round(time.perf_counter() - started, 3)
    if write:
        atomic_write_json(run.folder / SCORES_FILE, scores.to_json())
    return scores


# --------------------------------------------------------------------------- storyboard


def annotate_storyboard(run: Run, scores: Scores, path: str | Path | None = None) -> Path:
    """Write the storyboard with each panel's scores in its caption and the summary in the title."""
    target = Path(path) if path is not None else run.folder / SCORED_STORYBOARD
    captions = [
        "\n".join(filter(None, [panel.caption, score_caption(s)])) for panel, s in zip(run.panels, scores.panels)
    ]
    summary = scores.summary
    parts = [f"CLIP-T {summary['clip_t_mean']:.1f}"]
    if summary.get("consistency") is not None:
        parts.append(f"consistency {summary['consistency']:.3f}")
    if summary.get("aesthetic_mean") is not None:
        parts.append(f"aesthetic {summary['aesthetic_mean']:.2f}")
    title = " — ".join(filter(None, [run.title, ", ".join(parts)]))
    save_storyboard([p.path for p in run.panels], target, cols=2, title=title, captions=captions)
    return target
