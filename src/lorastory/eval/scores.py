"""The typed result of scoring a run: what :func:`lorastory.eval.report.evaluate_run` returns.

:class:`Scores` has the keys of ``scores.json`` in the order the file has them, so
``to_json()`` writes the same bytes as the dict it replaced. Numbers are ``int | float``
(a whole number stays one in the file); ``compare`` and ``storyboard_scored`` appear only
when they were computed (fields never set are left out of the file).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

Number = int | float

SCORES_FILE = "scores.json"


class _Result(BaseModel):
    # Scores are made by our own code; unknown keys (a newer scorer's) are kept rather than refused.
    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The dict ``scores.json`` holds: keys in field order, those never set left out."""
        return self.model_dump(exclude_unset=True)


class ClipInfo(_Result):
    """The CLIP model that scored the run."""

    model: str
    kind: str
    device: str
    max_text_tokens: int


class PanelScores(_Result):
    """One panel's scores (``None`` where a score does not apply)."""

    index: int
    file: str
    prompt: str
    clip_t: Number | None = None
    clip_t_content: Number | None = None
    style_score: Number | None = None
    prompt_truncated: bool = False
    aesthetic: Number | None = None
    consistency: Number | None = None
    subject_consistency: Number | None = None


class Scores(_Result):
    """A scored run: the models used, every panel, the summary, notes and (optionally) the LoRA comparison."""

    lorastory_version: str
    run: str
    title: str
    clip: ClipInfo
    aesthetic: dict[str, Any]
    panels: list[PanelScores]
    style: str | None = None
    summary: dict[str, Any]
    notes: list[str]
    compare: dict[str, Any] | None = None
    storyboard_scored: str | None = None
    seconds: Number | None = None


def score_caption(panel: PanelScores, prefix: str | None = None) -> str:
    """``CLIP-T 27.3 · aesthetic 5.12`` (``n/a`` without an aesthetic score)."""
    aesthetic = panel.aesthetic
    parts = [f"CLIP-T {panel.clip_t:.1f}", f"aesthetic {aesthetic:.2f}" if aesthetic is not None else "aesthetic n/a"]
    if panel.style_score is not None:
        parts.insert(1, f"style {panel.style_score:.1f}")
    return " · ".join(([prefix] if prefix else []) + parts)
