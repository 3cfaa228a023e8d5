"""``image_face_blur_mapper``: blur the faces OpenCV finds, into new image files beside the export.

Data-Juicer 1.6.1's operator and parameters: faces are found with the Haar
cascade of :mod:`lorastory.data.ops.face_detection`; each face box is cropped,
blurred (``blur_type`` mean / box / gaussian with ``radius``, PIL's filters)
and pasted back on a copy. Images with a face are written as new files and the
row points at them (``__dj__source_file__`` names the images they were made from); images
without one are left as they are. New files go into the run's output folder,
never the input's (see :mod:`lorastory.data.ops.produced_images`).
"""

from __future__ import annotations

from typing import Any, Literal

from PIL import Image
from pydantic import Field

from lorastory.data.ops.base import Mapper, load_once, register_op
from lorastory.data.ops.face_detection import FaceDetectionParams, cascade_path, detect_faces, load_cascade
from lorastory.data.ops.image_blur_mapper import blur_filter
from lorastory.data.ops.produced_images import replace_images
from lorastory.data.sample import Sample


class FaceBlurParams(FaceDetectionParams):
    blur_type: Literal["mean", "box", "gaussian"] = "gaussian"
    radius: float = Field(default=2, ge=0)
    save_dir: str | None = None


@register_op("image_face_blur_mapper")
class ImageFaceBlurMapper(Mapper):
    """Blurs detected faces (OpenCV Haar cascade) into new image files; the row points at them."""

    Params = FaceBlurParams

    def __init__(self, params: FaceBlurParams) -> None:
        super().__init__(params)
        self.cascade = cascade_path(self.name, params.cv_classifier)
        self._classifier: Any = None

    def process(self, sample: Sample) -> None:
        p = self.params
        blur = blur_filter(p.blur_type, p.radius)

        def blurred(path: str) -> Image.Image | None:
            classifier = load_once(self, "_classifier", lambda: load_cascade(self.cascade))
            image = sample.image_rgb(path)
            boxes = detect_faces(image, classifier, p.detect_kwargs())
            if not boxes:
                return None
            result = image.copy()
            for x, y, w, h in boxes:
                box = (x, y, x + w, y + h)
                result.paste(image.crop(box).filter(blur), box)
            return result

        replace_images(self, sample, p.image_key or sample.keys.image_key, p.save_dir, blurred)
