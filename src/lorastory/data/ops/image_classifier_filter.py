"""Filters that score each image with the label-1 probability of an image classifier (not an operator).

The NSFW and watermark filters: the model (a folder or hub id with safetensors
weights, see :mod:`lorastory.models.image_classifier`) is checked when the
recipe loads and loaded once per worker; remote code is never run. Scores per
distinct path, as Data-Juicer; a row without images gets ``[]``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lorastory.data.ops.base import Filter, OpParams, load_once, recipe_check
from lorastory.data.sample import Sample
from lorastory.models.clip import one_thread_in_workers, op_device
from lorastory.models.image_classifier import ImageClassifierError, check_classifier, load_image_classifier


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


class LabelOneFilter(Filter):
    """Label 1's probability per image (stat ``stats_keys[0]``) under the classifier parameter ``model_option`` names."""

    model_option: ClassVar[str]

    def __init__(self, params: OpParams) -> None:
        super().__init__(params)
        with recipe_check(self, ImageClassifierError):
            check_classifier(getattr(params, self.model_option), f"{self.name} model", self.model_option)
        self._classifier: Any = None

    def compute_stats(self, sample: Sample) -> None:
        if self.stats_keys[0] not in sample.stats:
            source = getattr(self.params, self.model_option)
            sample.stats[self.stats_keys[0]] = label_one_scores(self, sample, source, self.model_option)
