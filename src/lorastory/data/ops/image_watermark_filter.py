"""``image_watermark_filter``: keep samples whose images a watermark classifier finds unlikely to be marked.

Data-Juicer 1.6.1's operator, parameters and stats key
(``image_watermark_prob``: per image, the softmax probability of label 1 of
``hf_watermark_model``, an image classifier such as amrul-hzz/watermark_detector);
an image passes when its probability is at most ``prob_threshold``;
``any_or_all`` over the images; a row without images stays. Models load
through :mod:`lorastory.models.image_classifier` (safetensors only, no remote code).
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import AnyOrAll, OpParams, combine, register_op
from lorastory.data.ops.image_classifier_filter import LabelOneFilter

STATS_KEY = "image_watermark_prob"


class WatermarkParams(OpParams):
    hf_watermark_model: str = "amrul-hzz/watermark_detector"
    trust_remote_code: bool = False
    prob_threshold: float = 0.8
    any_or_all: AnyOrAll = "any"


@register_op("image_watermark_filter")
class ImageWatermarkFilter(LabelOneFilter):
    """Watermark probability per image (a classifier's label 1); keeps rows at or below prob_threshold."""

    Params = WatermarkParams
    stats_keys = (STATS_KEY,)
    model_option = "hf_watermark_model"

    def keep(self, stats: dict[str, Any]) -> bool:
        return combine([s <= self.params.prob_threshold for s in stats[STATS_KEY]], self.params.any_or_all)
