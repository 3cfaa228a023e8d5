"""``image_text_matching_filter``: keep samples whose images match their text, by BLIP's matching head.

Data-Juicer 1.6.1's operator, parameters and stats key
(``image_text_matching_score``): the text is cut into chunks at
``<|__dj__eoc|>``, each chunk is scored with the images of its
``<__dj__image>`` tokens (P(match) of ``hf_blip``'s ITM head per image, the
``reduce_mode`` of them per chunk; images flipped when asked), and
``any_or_all`` decides over the chunks. As with ``image_text_similarity_filter``,
a text with no image token is one chunk for all the row's images (Data-Juicer
scores nothing and keeps such rows). The model loads through
:mod:`lorastory.models.blip_itm`: safetensors only, never remote code.
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import Filter, combine, load_once, recipe_check, register_op
from lorastory.data.ops.image_text_chunks import ChunkScoreParams, flip, reduce, split_chunks
from lorastory.data.sample import Sample
from lorastory.models.blip_itm import load_blip_itm
from lorastory.models.clip import one_thread_in_workers, op_device
from lorastory.models.image_classifier import ImageClassifierError, check_classifier

STATS_KEY = "image_text_matching_score"


class TextMatchingParams(ChunkScoreParams):
    hf_blip: str = "Salesforce/blip-itm-base-coco"
    trust_remote_code: bool = False
    min_score: float = 0.003
    max_score: float = 1.0


@register_op("image_text_matching_filter")
class ImageTextMatchingFilter(Filter):
    """BLIP ITM P(match) per chunk of text and its images; keeps rows whose scores lie in range."""

    Params = TextMatchingParams
    stats_keys = (STATS_KEY,)

    def __init__(self, params: TextMatchingParams) -> None:
        super().__init__(params)
        with recipe_check(self, ImageClassifierError):
            check_classifier(params.hf_blip, f"{self.name} model", "hf_blip")
        self._blip: Any = None

    def _model(self) -> Any:
        def load() -> Any:
            one_thread_in_workers()
            return load_blip_itm(self.params.hf_blip, "hf_blip", op_device(self.params.accelerator))

        return load_once(self, "_blip", load)

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY in sample.stats:
            return
        p = self.params
        paths = sample.image_paths(p.image_key)
        chunks = split_chunks(sample.text(p.text_key), len(paths), sample.keys.image_special_token) if paths else []
        values = []
        for text, indices in chunks:
            scores = []
            for index in indices:
                scores.append(self._model().match(flip(sample.image_rgb(paths[index]), p), text))
            values.append(reduce(scores, p.reduce_mode))
        sample.stats[STATS_KEY] = values

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_score <= v <= p.max_score for v in stats[STATS_KEY]], p.any_or_all)
