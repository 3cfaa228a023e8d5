"""Character consistency: how alike the panels of a story look to CLIP.

The score is the mean pairwise cosine similarity of the panels' CLIP image
embeddings (1.0 for identical panels). Whole panels also share background and
style, so a second score compares a crop of the main subject of each panel.
No subject detector ships with lorastory, so the crop is the centre of the
panel (``subject_crop: "center"`` in the results says so): in story panels the
character is usually framed in the middle. Each panel also gets its mean
similarity to the other panels, which points at the panel that breaks the
character.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from lorastory.models.clip import ClipModel

SubjectCrop = Literal["center", "none"]
CENTER_FRACTION = 0.6  # the crop keeps the central 60% of width and height (36% of the area)


@dataclass
class Consistency:
    """Consistency scores of one set of panels (``None`` where fewer than two panels)."""

    score: float | None
    subject_score: float | None
    subject_crop: str
    per_panel: list[float | None] = field(default_factory=list)
    subject_per_panel: list[float | None] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consistency": _round(self.score),
            "subject_consistency": _round(self.subject_score),
            "subject_crop": self.subject_crop,
        }


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def center_crop(image: Image.Image, fraction: float = CENTER_FRACTION) -> Image.Image:
    """The central ``fraction`` of ``image``'s width and height."""
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    width, height = image.size
    crop_w, crop_h = max(1, round(width * fraction)), max(1, round(height * fraction))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h))


def similarity_matrix(embeddings: Any) -> Any:
    """Cosine similarities between all pairs of (L2-normalised) embeddings, clamped to [-1, 1]."""
    return (embeddings @ embeddings.T).clamp(-1.0, 1.0)


def mean_pairwise(embeddings: Any) -> float | None:
    """Mean cosine over all unordered pairs; ``None`` for fewer than two embeddings."""
    import torch

    count = embeddings.shape[0]
    if count < 2:
        return None
    sims = similarity_matrix(embeddings)
    upper = torch.triu_indices(count, count, offset=1)
    return float(sims[upper[0], upper[1]].double().mean())


def mean_to_others(embeddings: Any) -> list[float | None]:
    """Each embedding's mean cosine to all the others."""
    count = embeddings.shape[0]
    if count < 2:
        return [None] * count
    sims = similarity_matrix(embeddings).double()
    totals = sims.sum(dim=1) - sims.diagonal()
    return [float(t) / (count - 1) for t in totals]


def character_consistency(
    clip: ClipModel,
    images: Sequence[Image.Image],
    subject_crop: SubjectCrop = "center",
    batch_size: int = 32,
    embeddings: Any = None,
) -> Consistency:
    """Consistency of ``images`` (whole panels, and subject crops unless ``subject_crop="none"``).

    ``embeddings`` may pass the panels' image embeddings when they are already computed.
    """
    whole = embeddings if embeddings is not None else clip.image_embeddings(images, batch_size)
    result = Consistency(mean_pairwise(whole), None, subject_crop, mean_to_others(whole))
    if subject_crop == "center":
        crops = clip.image_embeddings([center_crop(image) for image in images], batch_size)
        result.subject_score = mean_pairwise(crops)
        result.subject_per_panel = mean_to_others(crops)
    elif subject_crop != "none":
        raise ValueError(f"subject_crop must be 'center' or 'none', got {subject_crop!r}")
    return result
