"""The rule that picks a checkpoint (or a LoRA scale), documented and configurable.

Every candidate gets a **combined score** in CLIP-T points (cosine × 100)::

    combined = style_weight × 100 × style            (similarity to the training pictures)
             + style_phrase_weight × style_phrase    (CLIP-T against the style phrase, when there is one)
             + content_weight × content              (CLIP-T of the prompts without style/trigger)
             − near_copy_penalty × 100 × near-copies / images

A candidate is **eligible** when it has at most ``max_near_copies`` near-copies of a training
picture and its content is at least ``min_content`` (absolute CLIP-T) and no more than
``max_content_drop`` CLIP-T points below the base model's (the reference, step 0 or scale 0).
The choice is the eligible LoRA candidate with the highest combined score; the reference itself
is never chosen. When no LoRA candidate is eligible, the highest combined score is taken and the
reason says which rule it breaks.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from lorastory.config import YamlModel
from lorastory.eval.errors import EvalError
from lorastory.eval.set_scores import SetScores
from lorastory.eval.validation_set import ValidationSet

NEAR_COPY = 0.95


class SelectionSettings(YamlModel):
    """The weights and limits of the selection rule (module docstring)."""

    style_weight: float = Field(1.0, ge=0)
    style_phrase_weight: float = Field(1.0, ge=0)
    content_weight: float = Field(1.0, ge=0)
    near_copy_penalty: float = Field(1.0, ge=0)
    near_copy: float = Field(NEAR_COPY, gt=0, le=1)  # an output's max cosine to one training picture at or above: a copy
    max_near_copies: int = Field(0, ge=0)
    max_content_drop: float | None = Field(2.0, ge=0)  # CLIP-T points below the reference; None: no limit
    min_content: float | None = None  # absolute CLIP-T floor; None: no floor


class Candidate(BaseModel):
    """One scored candidate: the base model, a checkpoint, or a scale of one LoRA."""

    label: str
    step: int
    scale: float
    lora: str | None
    scores: SetScores
    combined: float = 0.0
    eligible: bool = True
    why_not: str | None = None


class Choice(BaseModel):
    """The chosen candidate (index into the list) and the one-line reason."""

    index: int
    label: str
    step: int
    scale: float
    reason: str


def combined_score(scores: SetScores, settings: SelectionSettings) -> float:
    """The combined score (module docstring); missing parts count 0."""
    total = settings.content_weight * scores.content
    if scores.style is not None:
        total += settings.style_weight * 100.0 * scores.style
    if scores.style_phrase is not None:
        total += settings.style_phrase_weight * scores.style_phrase
    total -= settings.near_copy_penalty * 100.0 * len(scores.near_copies) / max(scores.images, 1)
    return round(total, 4)


def _content_floor(reference: SetScores, settings: SelectionSettings) -> float | None:
    floors = [f for f in (settings.min_content,
                          None if settings.max_content_drop is None else reference.content - settings.max_content_drop)
              if f is not None]
    return max(floors) if floors else None


def judge(candidates: Sequence[Candidate], settings: SelectionSettings) -> None:
    """Fill each candidate's combined score and eligibility; ``candidates[0]`` is the reference."""
    floor = _content_floor(candidates[0].scores, settings)
    for candidate in candidates:
        candidate.combined = combined_score(candidate.scores, settings)
        copies = len(candidate.scores.near_copies)
        reasons = []
        if copies > settings.max_near_copies:
            reasons.append(f"{copies} near-copies of training pictures")
        if floor is not None and candidate.scores.content < floor:
            reasons.append(f"content {candidate.scores.content:.1f} below {floor:.1f}")
        candidate.eligible = not reasons
        candidate.why_not = "; ".join(reasons) or None


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "\u2212")


def choose(candidates: Sequence[Candidate], settings: SelectionSettings) -> Choice:
    """Judge the candidates and pick one (module docstring); ``candidates[0]`` is the reference."""
    if len(candidates) < 2:
        raise EvalError("nothing to choose from: no LoRA candidate besides the base model")
    judge(candidates, settings)
    pool = list(range(1, len(candidates)))
    eligible = [i for i in pool if candidates[i].eligible]
    index = max(eligible or pool, key=lambda i: (candidates[i].combined, -i))
    best = candidates[index]
    parts = [best.label]
    styles = [c.scores.style for c in candidates[1:] if c.scores.style is not None]
    if best.scores.style is not None and styles and max(styles) > 0:
        parts.append(f"style {best.scores.style:.2f} ({100 * best.scores.style / max(styles):.0f}% of the maximum)")
    elif best.scores.style_phrase is not None:
        parts.append(f"style phrase {best.scores.style_phrase:.1f}")
    parts.append(f"content {_signed(best.scores.content - candidates[0].scores.content)} vs base")
    copies = len(best.scores.near_copies)
    parts.append("no near-copies" if not copies else f"{copies} near-copies")
    reason = f"{parts[0]}: " + ", ".join(parts[1:])
    if not eligible:
        reason += f" (no candidate met the rule: {best.why_not}; chose the highest combined score)"
    return Choice(index=index, label=best.label, step=best.step, scale=best.scale, reason=reason)


class SelectionReport(BaseModel):
    """What a selection over candidates (checkpoints or LoRA scales) writes, besides its own fields."""

    lorastory_version: str
    model: str
    clip: str
    validation: ValidationSet
    settings: SelectionSettings
    candidates: list[Candidate]
    choice: Choice
    plot: str
    notes: list[str] = []
