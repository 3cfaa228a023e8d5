"""``image_face_count_filter``: keep samples whose images show a number of faces in a range.

Data-Juicer 1.6.1's operator: OpenCV's Haar cascade (see
:mod:`lorastory.data.ops.face_detection`) counts faces per image; stats key
``face_counts`` (one count per image, ``[]`` for a row without images, which
stays); ``any_or_all`` over the images. Counts per distinct path, as Data-Juicer.
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import AnyOrAll, Filter, combine, load_once, register_op
from lorastory.data.ops.face_detection import FaceDetectionParams, cascade_path, detect_faces, load_cascade
from lorastory.data.sample import Sample

STATS_KEY = "face_counts"


class FaceCountParams(FaceDetectionParams):
    min_face_count: int = 1
    max_face_count: int = 1
    any_or_all: AnyOrAll = "any"


@register_op("image_face_count_filter")
class ImageFaceCountFilter(Filter):
    """Counts faces per image with OpenCV's Haar cascade; keeps rows whose counts lie in range."""

    Params = FaceCountParams
    stats_keys = (STATS_KEY,)

    def __init__(self, params: FaceCountParams) -> None:
        super().__init__(params)
        self.cascade = cascade_path(self.name, params.cv_classifier)
        self._classifier: Any = None

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY in sample.stats:
            return
        classifier = load_once(self, "_classifier", lambda: load_cascade(self.cascade))
        counts: dict[str, int] = {}
        paths = sample.image_paths(self.params.image_key)
        for path in paths:
            if path not in counts:
                counts[path] = len(detect_faces(sample.image_rgb(path), classifier, self.params.detect_kwargs()))
        sample.stats[STATS_KEY] = [counts[p] for p in paths]

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_face_count <= n <= p.max_face_count for n in stats[STATS_KEY]], p.any_or_all)
