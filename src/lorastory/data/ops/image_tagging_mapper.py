"""``image_tagging_mapper``: tags of each picture in the row's meta field, as Data-Juicer stores them.

Data-Juicer 1.6.1's operator, same name and output: ``__dj__meta__`` →
``tag_field_name`` (``image_tags``) holds one list of tags per picture, most
confident first; a row that already has them is left alone, and a row without
pictures gets ``[[]]``. Data-Juicer's model is the Recognize Anything Model,
a pickle checkpoint lorastory never loads; here the tagger is ``hf_tagger``: a
WD14 booru tagger (``model.onnx`` + ``selected_tags.csv``; character tags
first, then general ones above ``threshold`` / ``character_threshold``) or a
vision-language model asked for comma-separated tags.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lorastory.data.ops.base import Mapper, OpParams, load_once, register_op
from lorastory.data.sample import Sample
from lorastory.errors import CaptionerError, RecipeError
from lorastory.models.captioners.base import GenerationOptions
from lorastory.models.captioners.loader import check_captioner
from lorastory.models.captioners.loader import load_captioner
from lorastory.models.captioners.wd14 import TagThresholds
from lorastory.models.clip import one_thread_in_workers, op_device

META_FIELD = "__dj__meta__"


class ImageTaggingParams(OpParams):
    tag_field_name: str = "image_tags"
    hf_tagger: str = "SmilingWolf/wd-vit-tagger-v3"
    threshold: float = Field(default=0.35, ge=0, le=1)
    character_threshold: float = Field(default=0.85, ge=0, le=1)
    memory: str | None = None


def split_tags(text: str) -> list[str]:
    """A model's comma-separated answer as tags (either comma), without repeats."""
    parts = (part.strip() for part in text.replace("，", ",").split(","))
    return list(dict.fromkeys(part for part in parts if part))


@register_op("image_tagging_mapper")
class ImageTaggingMapper(Mapper):
    """Writes ``__dj__meta__.image_tags``: one tag list per picture."""

    Params = ImageTaggingParams

    def __init__(self, params: ImageTaggingParams) -> None:
        super().__init__(params)

        try:
            check_captioner(params.hf_tagger)
        except CaptionerError as err:
            raise RecipeError(f"{self.name}: {err}") from None
        self._tagger: Any = None

    def _model(self) -> Any:
        def load() -> Any:

            one_thread_in_workers()
            thresholds = TagThresholds(self.params.threshold, self.params.character_threshold)
            return load_captioner(self.params.hf_tagger, op_device(self.params.accelerator), thresholds)

        return load_once(self, "_tagger", load)

    def tags(self, images: list[Any]) -> list[list[str]]:

        tagger = self._model()
        if tagger.kind == "wd14":
            return [found.names() for found in tagger.tag(images)]
        if "tags" not in tagger.styles:
            raise CaptionerError(f"{self.name}: {self.params.hf_tagger} writes sentences, not tags; "
                                 "pass a WD14 tagger or a vision-language model as hf_tagger")
        prompt = tagger.default_prompt("tags", "en")
        answers = tagger.generate(images, [prompt] * len(images), GenerationOptions(max_new_tokens=64))
        return [split_tags(candidates[0]) for candidates in answers]

    def process(self, sample: Sample) -> list[dict[str, Any]]:
        meta = sample.row.get(META_FIELD)
        if not isinstance(meta, dict):
            meta = sample.row[META_FIELD] = {}
        if self.params.tag_field_name in meta:
            return [sample.row]
        paths = sample.image_paths(self.params.image_key)
        if not paths:
            meta[self.params.tag_field_name] = [[]]
            return [sample.row]
        images = [sample.image_rgb(path) for path in paths]
        meta[self.params.tag_field_name] = self.tags(images)
        return [sample.row]
