"""A general vision-language model as a captioner: Qwen2.5-VL (and Qwen2-VL) with an instruction.

The instruction is the user's ``--prompt`` or a default one in the caption
language (Chinese captions for Kolors, English for SDXL). The chat turn is
written here in Qwen's fixed format, and each picture's ``<|image_pad|>`` is
expanded to its number of merged patches, so only the image processor and
the tokenizer are needed: transformers' full Qwen processor also loads a video
processor, which needs torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from lorastory.models.captioners.base import Captioner, GenerationOptions
from lorastory.models.captioners.img2seq import generation_kwargs, group, to_device

IMAGE_PAD = "<|image_pad|>"
SYSTEM = "You are a helpful assistant."


def chat_turn(prompt: str) -> str:
    """One user turn with one picture, ending where the assistant's answer begins."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>"
            f"{prompt}<|im_end|>\n<|im_start|>assistant\n")


class VlmCaptioner(Captioner):
    """Qwen2.5-VL / Qwen2-VL: picture + instruction → answer."""

    takes_prompt = True
    styles = ("sentence", "tags")

    def __init__(self, kind: str, source: str, model: Any, image_processor: Any, tokenizer: Any, device: Any) -> None:
        self.kind, self.source, self.model, self.device = kind, source, model, device
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def generate(
        self, images: Sequence[Image.Image], prompts: Sequence[str | None] | None, options: GenerationOptions
    ) -> list[list[str]]:
        import torch

        if not images:
            return []
        given = list(prompts) if prompts is not None else [None] * len(images)
        fallback = self.default_prompt("sentence", "en")
        pixels = self.image_processor(images=list(images), return_tensors="pt")
        merge = int(getattr(self.image_processor, "merge_size", 2)) ** 2
        texts = [chat_turn(prompt or fallback or "").replace(IMAGE_PAD, IMAGE_PAD * int(grid.prod() // merge))
                 for prompt, grid in zip(given, pixels["image_grid_thw"])]
        inputs = {**self.tokenizer(texts, return_tensors="pt", padding=True), **pixels}
        inputs = to_device(inputs, self.device, self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **generation_kwargs(options))
        answers = output[:, inputs["input_ids"].shape[1] :]
        return group(self.tokenizer.batch_decode(answers, skip_special_tokens=True), options.num)
