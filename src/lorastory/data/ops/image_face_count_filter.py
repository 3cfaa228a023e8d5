"""``image_face_count_filter``: keep samples whose images show a number of faces in a range.

Data-Juicer 1.6.1's operator: OpenCV's Haar cascade (see
:mod:`lorastory.data.ops.face_detection`) counts faces per image; stats key
``face_counts`` (one count per image, ``[]`` for a row without images, which
stays); ``any_or_all`` over the images. Counts per distinct path, as Data-Juicer.
"""

from __future__ import annotations

from PIL import Image

from lorastory.data.ops.base import AnyOrAll, register_op
from lorastory.data.ops.face_detection import FaceDetectionParams, FaceStatFilter

STATS_KEY = "face_counts"


class FaceCountParams(FaceDetectionParams):
    min_face_count: int = 1
    max_face_count: int = 1
    any_or_all: AnyOrAll = "any"


@register_op("image_face_count_filter")
class ImageFaceCountFilter(FaceStatFilter):
    """Counts faces per image with OpenCV's Haar cascade; keeps rows whose counts lie in range."""

    Params = FaceCountParams
    stats_keys = (STATS_KEY,)
    range_fields = ("min_face_count", "max_face_count")

    def face_stat(self, image: Image.Image, boxes: list[tuple[int, int, int, int]]) -> int:
        return len(boxes)
