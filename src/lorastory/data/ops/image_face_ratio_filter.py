"""``image_face_ratio_filter``: keep samples whose largest face covers a share of the image in a range.

Data-Juicer 1.6.1's operator: OpenCV's Haar cascade (see
:mod:`lorastory.data.ops.face_detection`) finds faces; the stat
``face_ratios`` is, per image, the area of the largest face over the image's
area (0 without a face; ``[]`` for a row without images, which stays);
``any_or_all`` over the images.
"""

from __future__ import annotations

from PIL import Image

from lorastory.data.ops.base import AnyOrAll, register_op
from lorastory.data.ops.face_detection import FaceDetectionParams, FaceStatFilter

STATS_KEY = "face_ratios"


class FaceRatioParams(FaceDetectionParams):
    min_ratio: float = 0.0
    max_ratio: float = 0.4
    any_or_all: AnyOrAll = "any"


@register_op("image_face_ratio_filter")
class ImageFaceRatioFilter(FaceStatFilter):
    """Largest face area / image area per image (OpenCV Haar cascade); keeps rows whose ratios lie in range."""

    Params = FaceRatioParams
    stats_keys = (STATS_KEY,)
    range_fields = ("min_ratio", "max_ratio")

    def face_stat(self, image: Image.Image, boxes: list[tuple[int, int, int, int]]) -> float:
        return max((w * h for _, _, w, h in boxes), default=0.0) / (image.width * image.height)
