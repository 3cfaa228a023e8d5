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

from lorastory.data.ops.base import AnyOrAll, Filter, OpParams, combine, load_once, register_op
from lorastory.data.sample import Sample
from lorastory.errors import RecipeError
from lorastory.models.clip import one_thread_in_workers, op_device
from lorastory.models.image_classifier import ImageClassifierError, check_classifier, load_image_classifier

STATS_KEY = "image_nsfw_score"


class NsfwParams(OpParams):
    hf_nsfw_model: str = "Falconsai/nsfw_image_detection"
    trust_remote_code: bool = False
    min_score: float = 0.0
    max_score: float = 0.5
    any_or_all: AnyOrAll = "any"


def label_one_scores(op: Filter, sample: Sample, source: str, option: str) -> list[float]:
    """Label-1 probability per distinct image path of the row, in first-seen order (as Data-Juicer)."""
    paths = sample.image_paths(op.params.image_key)
    if not paths:
        return []

    def load() -> Any:
        one_thread_in_workers()
        return load_image_classifier(source, f"{op.name} model", option, op_device(op.params.accelerator))

    classifier = load_once(op, "_classifier", load)
    # Data-Juicer scores the dict of loaded images, keyed by path: a repeated path counts once.
    distinct = list(dict.fromkeys(paths))
    return [float(row[1]) for row in classifier.probabilities([sample.image_rgb(p) for p in distinct])]


@register_op("image_nsfw_filter")
class ImageNsfwFilter(Filter):
    """NSFW probability per image (an image classifier's label 1); keeps rows whose scores lie in range."""

    Params = NsfwParams
    stats_keys = (STATS_KEY,)

    def __init__(self, params: NsfwParams) -> None:
        super().__init__(params)
        try:
            check_classifier(params.hf_nsfw_model, f"{self.name} model", "hf_nsfw_model")
        except ImageClassifierError as err:
            raise RecipeError(f"{self.name}: {err}") from None
        self._classifier: Any = None

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY not in sample.stats:
            sample.stats[STATS_KEY] = label_one_scores(self, sample, self.params.hf_nsfw_model, "hf_nsfw_model")

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_score <= s <= p.max_score for s in stats[STATS_KEY]], p.any_or_all)
