"""What every captioner is: pictures in, candidate captions (or tags) out, in batches.

A backend wraps one model kind (BLIP, BLIP-2, Florence-2, a vision-language
model, a booru tagger, the toy retrieval captioner) behind :class:`Captioner`.
The data stage (``lorastory data caption``, the Data-Juicer mappers) only talks
to this interface, so a new backend is one new module plus one line in
:mod:`lorastory.models.captioners.loader`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from PIL import Image

Style = Literal["sentence", "tags"]
Language = Literal["zh", "en"]

# The instruction a vision-language model gets when the user gives none: Chinese for Kolors, English for SDXL.
DEFAULT_PROMPTS: dict[tuple[str, str], str] = {
    ("sentence", "zh"): "用一句简洁的中文描述这张图片的内容，包括主体、颜色、位置和背景。",
    ("sentence", "en"): "Describe this picture in one concise sentence: the subject, colours, position and background.",
    ("tags", "zh"): "用逗号分隔的中文短标签列出这张图片中的内容。",
    ("tags", "en"): "List what is in this picture as short comma-separated tags.",
}


@dataclass(frozen=True)
class GenerationOptions:
    """How captions are drawn: candidates per picture, sampling, length."""

    num: int = 1
    sample: bool = False
    max_new_tokens: int = 77
    # Random tiny models often stop at once; a real captioner never wants an empty caption either.
    min_new_tokens: int = 2
    # For captioners that write in a language or style without an instruction (the toy captioner).
    language: str = "en"
    style: str = "sentence"


@dataclass
class Tags:
    """A tagger's answer for one picture: tags above the thresholds, best first, by category."""

    general: list[tuple[str, float]] = field(default_factory=list)
    character: list[tuple[str, float]] = field(default_factory=list)
    rating: str | None = None

    def names(self) -> list[str]:
        """Character tags first (they name who is shown), then the general ones."""
        return [name for name, _ in self.character] + [name for name, _ in self.general]


class Captioner:
    """A loaded captioning model. Subclasses implement :meth:`generate`; taggers also :meth:`tag`."""

    #: The backend's name, as reports and ``caption_model`` rows show it.
    kind: ClassVar[str] = ""
    #: Whether the model reads an instruction (a VLM) or only an optional caption prefix (BLIP).
    takes_prompt: ClassVar[bool] = False
    #: The styles the backend can write.
    styles: ClassVar[tuple[str, ...]] = ("sentence",)

    source: str = ""
    device: Any = None

    def generate(
        self, images: Sequence[Image.Image], prompts: Sequence[str | None] | None, options: GenerationOptions
    ) -> list[list[str]]:
        """``options.num`` candidate captions per picture (a list per picture, in order)."""
        raise NotImplementedError

    def tag(self, images: Sequence[Image.Image]) -> list[Tags]:
        """Tags per picture (taggers only)."""
        raise NotImplementedError(f"{self.kind} is not a tagger")

    def default_prompt(self, style: str, language: str) -> str | None:
        """The instruction used when the user passes no ``--prompt`` (None: the model needs none)."""
        return DEFAULT_PROMPTS[(style, language)] if self.takes_prompt else None


def tags_text(names: Sequence[str], language: str = "en") -> str:
    """Tags as a caption: booru underscores become spaces (except in emoticons like ``^_^``)."""
    shown = [name.replace("_", " ") if len(name) > 3 else name for name in names]
    return ("，" if language == "zh" else ", ").join(shown)
