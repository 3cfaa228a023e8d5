"""Sentence captioners through transformers' image-to-text models: BLIP, BLIP-2 and Florence-2.

One code path for the three (processor → ``generate`` → decode), as Data-Juicer's
``image_captioning_mapper`` drives its ``hf_img2seq`` model, with the
differences kept here: BLIP-2's language model is decoder-only, so the prompt's
tokens are cut from its answer; BLIP's optional text is a caption prefix that
stays in the caption ("a photography of ..."); Florence-2 always needs a task
token, ``<CAPTION>`` unless the user gives another (``<DETAILED_CAPTION>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from lorastory.models.captioners.base import Captioner, GenerationOptions

FLORENCE_DEFAULT_TASK = "<CAPTION>"


def generation_kwargs(options: GenerationOptions) -> dict[str, Any]:
    """``generate`` arguments: ``num`` sampled candidates (Data-Juicer samples) or the ``num`` best beams."""
    kwargs: dict[str, Any] = {"max_new_tokens": options.max_new_tokens, "min_new_tokens": options.min_new_tokens,
                              "num_return_sequences": options.num}
    if options.sample:
        kwargs["do_sample"] = True
    else:
        kwargs.update(do_sample=False, num_beams=max(1, options.num))
    return kwargs


def group(texts: Sequence[str], num: int) -> list[list[str]]:
    """Flat decoded texts (``num`` per picture, in order) as one list per picture, stripped."""
    return [[text.strip() for text in texts[start : start + num]] for start in range(0, len(texts), num)]


def to_device(inputs: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """Tensors onto ``device``; floating ones (pixels) in the model's dtype."""
    moved = {}
    for key, value in inputs.items():
        if hasattr(value, "to"):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


class Img2SeqCaptioner(Captioner):
    """BLIP / BLIP-2 / Florence-2 behind one ``generate``."""

    takes_prompt = False

    def __init__(self, kind: str, source: str, model: Any, processor: Any, device: Any) -> None:
        self.kind, self.source, self.model, self.processor, self.device = kind, source, model, processor, device
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None and kind == "blip-2":
            tokenizer.padding_side = "left"  # decoder-only: answers start right after each prompt

    def _texts(self, prompts: Sequence[str | None] | None, count: int) -> list[str] | None:
        given = list(prompts) if prompts is not None else [None] * count
        if self.kind == "florence2":
            return [p or FLORENCE_DEFAULT_TASK for p in given]
        if all(p is None for p in given):
            return None
        return [p or "" for p in given]

    def generate(
        self, images: Sequence[Image.Image], prompts: Sequence[str | None] | None, options: GenerationOptions
    ) -> list[list[str]]:
        import torch

        if not images:
            return []
        texts = self._texts(prompts, len(images))
        extra = {"padding": True} if texts is not None else {}
        inputs = self.processor(images=list(images), text=texts, return_tensors="pt", **extra)
        inputs = to_device(inputs, self.device, self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **generation_kwargs(options))
        if self.kind == "blip-2" and "input_ids" in inputs:
            output = output[:, inputs["input_ids"].shape[1] :]
        return group(self.processor.batch_decode(output, skip_special_tokens=True), options.num)
