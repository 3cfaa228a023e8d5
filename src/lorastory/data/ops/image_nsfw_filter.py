"""``image_nsfw_filter``: keep samples whose images an NSFW classifier scores in a range.

Data-Juicer 1.6.1's operator, parameters and stats key (``image_nsfw_score``:
per image, the softmax probability of label 1 of ``hf_nsfw_model``, an image
classifier such as Falconsai/nsfw_image_detection, whose label 1 is "nsfw").
Models load through :mod:`lorastory.models.image_classifier`: a folder or hub
id with safetensors weights, once per worker; remote code is never run. A row
without images stays. One score per distinct path (a path repeated in the row
counts once), as Data-Juicer.
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import AnyOrAll, OpParams, combine, register_op
from lorastory.data.ops.image_classifier_filter import LabelOneFilter

STATS_KEY = "image_nsfw_score"


class NsfwParams(OpParams):
    hf_nsfw_model: str = "Falconsai/nsfw_image_detection"
    trust_remote_code: bool = False
    min_score: float = 0.0
    max_score: float = 0.5
    any_or_all: AnyOrAll = "any"


@register_op("image_nsfw_filter")
class ImageNsfwFilter(LabelOneFilter):
    """NSFW probability per image (an image classifier's label 1); keeps rows whose scores lie in range."""

    Params = NsfwParams
    stats_keys = (STATS_KEY,)
    model_option = "hf_nsfw_model"

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_score <= s <= p.max_score for s in stats[STATS_KEY]], p.any_or_all)
