"""``image_face_ratio_filter``: keep samples whose largest face covers a share of the image in a range.

Data-Juicer 1.6.1's operator: OpenCV's Haar cascade (see
:mod:`lorastory.data.ops.face_detection`) finds faces; the stat
``face_ratios`` is, per image, the area of the largest face over the image's
area (0 without a face; ``[]`` for a row without images, which stays);
``any_or_all`` over the images.
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import AnyOrAll, Filter, combine, load_once, register_op
from lorastory.data.ops.face_detection import FaceDetectionParams, cascade_path, detect_faces, load_cascade
from lorastory.data.sample import Sample

STATS_KEY = "face_ratios"


class FaceRatioParams(FaceDetectionParams):
    min_ratio: float = 0.0
    max_ratio: float = 0.4
    any_or_all: AnyOrAll = "any"


@register_op("image_face_ratio_filter")
class ImageFaceRatioFilter(Filter):
    """Largest face area / image area per image (OpenCV Haar cascade); keeps rows whose ratios lie in range."""

    Params = FaceRatioParams
    stats_keys = (STATS_KEY,)

    def __init__(self, params: FaceRatioParams) -> None:
        super().__init__(params)
        self.cascade = cascade_path(self.name, params.cv_classifier)
        self._classifier: Any = None

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY in sample.stats:
            return
        classifier = load_once(self, "_classifier", lambda: load_cascade(self.cascade))
        ratios: dict[str, float] = {}
        paths = sample.image_paths(self.params.image_key)
        for path in paths:
            if path not in ratios:
                image = sample.image_rgb(path)
                boxes = detect_faces(image, classifier, self.params.detect_kwargs())
                ratios[path] = max((w * h for _, _, w, h in boxes), default=0.0) / (image.width * image.height)
        sample.stats[STATS_KEY] = [ratios[p] for p in paths]

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_ratio <= r <= p.max_ratio for r in stats[STATS_KEY]], p.any_or_all)
