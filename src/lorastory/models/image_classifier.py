"""Hugging Face image classifiers (ViT and the like) for the data ops that score images: NSFW, watermarks.

A folder or hub id as ``save_pretrained`` writes it: ``config.json``, the
image processor's config and safetensors weights (pickle weights are refused:
they can run code when loaded; remote code is never enabled). Loaded once per
process and device; :meth:`ImageClassifier.probabilities` gives the softmax
over the labels of a batch of images, as Data-Juicer's ops compute it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lorastory.errors import ScorerModelError
from lorastory.hub import check_source, from_pretrained, resolve_source
from lorastory.models.clip import resolve_device
from lorastory.models.quiet import quiet_transformers


class ImageClassifierError(ScorerModelError):
    """An image-classification model cannot be used (missing, not a classifier, pickle-only weights)."""


@dataclass
class ImageClassifier:
    """A loaded classifier with its image processor."""

    source: str
    model: Any
    processor: Any
    device: Any

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def probabilities(self, images: Sequence[Image.Image]) -> list[list[float]]:
        """Softmax over the labels for each image (RGB PIL images)."""
        import torch

        if not images:
            return []
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return torch.softmax(logits.float(), dim=-1).tolist()


def check_classifier(source: str, what: str, option: str, min_labels: int = 2) -> None:
    """Fail before any work when ``source`` cannot be this classifier (config and weight files only)."""
    check_source(source, what, option, ImageClassifierError)
    path, local = resolve_source(source, what, option, ImageClassifierError)
    if not local:
        return
    folder = Path(path)
    if not any(folder.glob("*.safetensors")):
        pickle_only = any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth"))
        hint = " (only pickle weights, which lorastory never loads: convert them with save_pretrained)" if pickle_only else ""
        raise ImageClassifierError(f"{what} {source}: no safetensors weights in the folder{hint}")


@functools.lru_cache(maxsize=4)
def _load_cached(source: str, device: str, what: str, option: str) -> ImageClassifier:
    from transformers import AutoImageProcessor, AutoModelForImageClassification


    path, local = resolve_source(source, what, option, ImageClassifierError)
    with quiet_transformers():
        model = from_pretrained(AutoModelForImageClassification, path, local, what, option, ImageClassifierError,
                                use_safetensors=True)
        processor = from_pretrained(AutoImageProcessor, path, local, f"{what} image processor", option,
                                    ImageClassifierError)
    target = resolve_device(device)
    return ImageClassifier(source, model.to(target).eval(), processor, target)


def load_image_classifier(source: str, what: str, option: str, device: str | None = None) -> ImageClassifier:
    """Load (once per process and device) an image classifier; failures raise :class:`ImageClassifierError`."""
    classifier = _load_cached(str(source), str(resolve_device(device)), what, option)
    if classifier.num_labels < 2:
        raise ImageClassifierError(f"{what} {source} has {classifier.num_labels} label; Data-Juicer reads label 1")
    return classifier
