"""Scores of one rendered validation set: style, content, memorisation, consistency.

For one candidate (the base model, a checkpoint, a LoRA scale), with the CLIP embeddings of
the training pictures computed once:

* **style**: the mean CLIP image cosine of the outputs to the training pictures (0–1; the mean
  over every output × training-picture pair): do the pictures look like the training set?
  With a style phrase, **style_phrase** is the CLIP-T of the outputs against it.
* **content**: the mean CLIP-T of each output against its prompt without the style phrase and
  trigger word: is what the prompt asks for still drawn?
* **memorisation**: each output's highest cosine to any single training picture; the mean and
  the maximum, and **near-copies**: outputs at or above the near-copy threshold
  (:class:`~lorastory.eval.selection.SelectionSettings`, default 0.95: CLIP cosines of
  re-encoded or slightly cropped copies of one picture lie above it, different pictures of one
  style below it), each named with the training picture it copies.
* **consistency** (when the set names a character): mean pairwise cosine of the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lorastory.errors import BadImageError
from lorastory.eval.consistency import mean_pairwise
from lorastory.eval.errors import EvalError
from lorastory.eval.validation_set import ValidationSet
from lorastory.images import load_rgb
from lorastory.models.clip import ClipModel
from lorastory.train.data import read_train_folder


class NearCopy(BaseModel):
    """An output that is a near-copy of one training picture."""

    prompt: str
    seed: int
    similarity: float
    training_picture: str


class SetScores(BaseModel):
    """One candidate's scores on the validation set (``None`` where a score does not apply)."""

    style: float | None = None
    style_phrase: float | None = None
    content: float
    memorisation: float | None = None
    memorisation_max: float | None = None
    near_copies: list[NearCopy] = []
    consistency: float | None = None
    images: int
    render_seconds: float = 0.0
    score_seconds: float = 0.0


class TrainingPictures:
    """The training pictures' CLIP embeddings (computed once) and their file names."""

    def __init__(self, files: list[str], embeddings: Any) -> None:
        self.files = files
        self.embeddings = embeddings

    @classmethod
    def from_folder(cls, clip: ClipModel, folder: str | Path, limit: int = 1000, batch_size: int = 32) -> TrainingPictures:
        """Embed the training folder's pictures (the first ``limit``, evenly spread over a larger set)."""
        items, _ = read_train_folder(folder)
        if len(items) > limit:
            items = [items[round(i * len(items) / limit)] for i in range(limit)]
        images = []
        for item in items:
            try:
                images.append(load_rgb(item.path))
            except BadImageError as err:
                raise EvalError(f"{item.path}: {err}") from None
        return cls([Path(i.path).name for i in items], clip.image_embeddings(images, batch_size))


def _clip_t(image_emb: Any, text_emb: Any) -> list[float]:
    return [100.0 * float(c) for c in (image_emb * text_emb).sum(dim=-1).clamp(-1.0, 1.0)]


def score_set(
    clip: ClipModel,
    images: Sequence[Any],
    vset: ValidationSet,
    training: TrainingPictures | None,
    near_copy: float,
    batch_size: int = 32,
) -> SetScores:
    """Score the rendered set (images in :meth:`ValidationSet.jobs` order)."""
    jobs = vset.jobs()
    if len(images) != len(jobs):
        raise EvalError(f"{len(images)} images for {len(jobs)} validation jobs")
    image_emb = clip.image_embeddings(list(images), batch_size)
    content_emb = clip.text_embeddings([vset.content_prompt(j.prompt) for j in jobs], batch_size)
    content = _clip_t(image_emb, content_emb)
    scores = SetScores(content=round(sum(content) / len(content), 4), images=len(images))
    if vset.style and vset.style.strip():
        phrase = clip.text_embeddings([vset.style.strip()], 1).expand_as(image_emb)
        scores.style_phrase = round(sum(_clip_t(image_emb, phrase)) / len(images), 4)
    if training is not None and len(training.files):
        cosines = (image_emb @ training.embeddings.T).clamp(-1.0, 1.0)
        scores.style = round(float(cosines.double().mean()), 6)
        best, where = cosines.max(dim=1)
        scores.memorisation = round(float(best.double().mean()), 6)
        scores.memorisation_max = round(float(best.max()), 6)
        scores.near_copies = [
            NearCopy(prompt=job.prompt, seed=job.seed, similarity=round(float(value), 6),
                     training_picture=training.files[int(index)])
            for job, value, index in zip(jobs, best, where) if float(value) >= near_copy
        ]
    if vset.character and vset.character.strip():
        value = mean_pairwise(image_emb)
        scores.consistency = None if value is None else round(value, 6)
    return scores
