"""BLIP image-text matching (ITM) models for ``image_text_matching_filter``: safetensors only, no remote code.

A folder or hub id as ``save_pretrained`` writes a ``BlipForImageTextRetrieval``
and its processor (e.g. Salesforce/blip-itm-base-coco). :meth:`BlipItm.match`
is the probability of the "match" class of the ITM head for one image and one
text, computed as Data-Juicer computes it (text truncated to the text encoder's
position window).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from PIL import Image

from lorastory.hub import from_pretrained, resolve_source
from lorastory.models.clip import resolve_device
from lorastory.models.image_classifier import ImageClassifierError
from lorastory.models.quiet import quiet_transformers


@dataclass
class BlipItm:
    """A loaded BLIP ITM model with its processor."""

    source: str
    model: Any
    processor: Any
    device: Any

    def match(self, image: Image.Image, text: str) -> float:
        """P(match) of the ITM head for ``image`` and ``text``."""
        import torch

        inputs = self.processor(
            text=text, images=image, return_tensors="pt", truncation=True, padding=True,
            max_length=self.model.config.text_config.max_position_embeddings,
        ).to(self.device)
        with torch.inference_mode():
            scores = self.model(**inputs).itm_score
        return float(scores.float().softmax(dim=-1)[0, 1])


@functools.lru_cache(maxsize=2)
def _load_cached(source: str, device: str, option: str) -> BlipItm:
    from transformers import AutoProcessor, BlipForImageTextRetrieval


    what = "BLIP image-text matching model"
    path, local = resolve_source(source, what, option, ImageClassifierError)
    with quiet_transformers():
        model = from_pretrained(BlipForImageTextRetrieval, path, local, what, option, ImageClassifierError,
                                use_safetensors=True)
        processor = from_pretrained(AutoProcessor, path, local, f"{what} processor", option, ImageClassifierError)
    target = resolve_device(device)
    return BlipItm(source, model.to(target).eval(), processor, target)


def load_blip_itm(source: str, option: str, device: str | None = None) -> BlipItm:
    """Load (once per process and device) a BLIP ITM model; failures raise one-line errors."""
    return _load_cached(str(source), str(resolve_device(device)), option)
