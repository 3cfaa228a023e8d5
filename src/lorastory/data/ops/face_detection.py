"""OpenCV Haar-cascade face detection as Data-Juicer's face operators run it (not an operator).

Data-Juicer loads ``cv2.CascadeClassifier`` from ``cv_classifier`` (default:
OpenCV's bundled ``haarcascade_frontalface_alt.xml``) and calls
``detectMultiScale`` on the greyscale image (scale factor 1.1, 3 neighbours);
boxes are clipped to the image.
OpenCV comes from ``pip install 'lorastory[faces]'`` (opencv-python-headless),
which ships the cascades.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from PIL import Image
from lorastory.data.ops.base import Filter, OpParams, combine, load_once
from lorastory.data.sample import Sample
from lorastory.errors import RecipeError

DEFAULT_CASCADE = "haarcascade_frontalface_alt.xml"


#: Data-Juicer's ``_default_kwargs`` of ``detectMultiScale``. Its ops read overrides from ``**kwargs``,
#: but its recipe check refuses them as unknown parameters, so a recipe can never change them; nor can ours.
DETECT_KWARGS: dict[str, Any] = {"scaleFactor": 1.1, "minNeighbors": 3, "minSize": None, "maxSize": None}


class FaceDetectionParams(OpParams):
    """The face operators' shared parameter: the cascade file (empty: OpenCV's frontal-face cascade)."""

    cv_classifier: str = ""

    def detect_kwargs(self) -> dict[str, Any]:
        return dict(DETECT_KWARGS)


def import_cv2(op_name: str) -> Any:
    try:
        import cv2
    except ImportError:
        raise RecipeError(
            f"{op_name} needs OpenCV: pip install 'lorastory[faces]' (or pip install opencv-python-headless)"
        ) from None
    return cv2


def cascade_path(op_name: str, cv_classifier: str) -> str:
    """The cascade file the op will load; a missing one is a one-line :class:`RecipeError`."""
    cv2 = import_cv2(op_name)
    path = cv_classifier or os.path.join(cv2.data.haarcascades, DEFAULT_CASCADE)
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise RecipeError(f"{op_name}: cv_classifier {path}: no such file (an OpenCV cascade .xml)")
    return path


def load_cascade(path: str) -> Any:
    """The classifier; an unreadable cascade raises (the op's loader turns it into a run-stopping error)."""
    import cv2

    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise ValueError(f"{path} is not an OpenCV cascade classifier")
    return classifier


def detect_faces(image: Image.Image, classifier: Any, kwargs: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """``(x, y, w, h)`` of each face, clipped to the image, as Data-Juicer's ``detect_faces``."""
    import cv2
    import numpy as np

    bgr = np.array(image.convert("RGB"))[:, :, ::-1]
    gray = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY)
    found = classifier.detectMultiScale(gray, **kwargs)
    boxes = []
    for x, y, w, h in found:
        x, y = max(int(x), 0), max(int(y), 0)
        boxes.append((x, y, min(int(w), image.width - x), min(int(h), image.height - y)))
    return boxes


class FaceStatFilter(Filter):
    """A filter with one number per distinct image, made from its face boxes, kept in ``[min_X, max_X]``.

    Subclasses name the stat (``stats_keys``), the range's parameters (``range_fields``) and
    :meth:`face_stat`; the cascade is checked when the recipe loads and loaded once per process.
    """

    range_fields: ClassVar[tuple[str, str]]

    def __init__(self, params: FaceDetectionParams) -> None:
        super().__init__(params)
        self.cascade = cascade_path(self.name, params.cv_classifier)
        self._classifier: Any = None

    def face_stat(self, image: Image.Image, boxes: list[tuple[int, int, int, int]]) -> float:
        raise NotImplementedError

    def compute_stats(self, sample: Sample) -> None:
        if self.stats_keys[0] in sample.stats:
            return
        classifier = load_once(self, "_classifier", lambda: load_cascade(self.cascade))
        values: dict[str, float] = {}
        paths = sample.image_paths(self.params.image_key)
        for path in paths:
            if path not in values:
                image = sample.image_rgb(path)
                values[path] = self.face_stat(image, detect_faces(image, classifier, self.params.detect_kwargs()))
        sample.stats[self.stats_keys[0]] = [values[p] for p in paths]

    def keep(self, stats: dict[str, Any]) -> bool:
        low, high = (getattr(self.params, name) for name in self.range_fields)
        return combine([low <= value <= high for value in stats[self.stats_keys[0]]], self.params.any_or_all)
