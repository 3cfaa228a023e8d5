"""``image_blur_mapper``: blur images (each with probability ``p``) into new files beside the export.

Data-Juicer 1.6.1's operator and parameters: ``blur_type`` mean (PIL's
``BLUR``), box (``BoxBlur(radius)``) or gaussian (``GaussianBlur(radius)``);
the row's image paths point at the new files, and ``__dj__source_file__``
names the images they were made from, as in Data-Juicer. New files go into the run's output
folder, never the input's (see :mod:`lorastory.data.ops.produced_images`).

One difference: Data-Juicer draws ``numpy.random.rand()`` per image from an
unseeded generator, so which images it blurs changes from run to run; here the
draw is a hash of the image's path, so a run is reproducible and the local and
Ray executors blur the same images. ``p: 1`` (always) and ``p: 0`` (never)
behave exactly as in Data-Juicer.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from PIL import Image, ImageFilter
from pydantic import Field

from lorastory.data.ops.base import Mapper, OpParams, register_op
from lorastory.data.ops.produced_images import replace_images
from lorastory.data.sample import Sample

class BlurParams(OpParams):
    p: float = Field(default=0.2, ge=0, le=1)
    blur_type: Literal["mean", "box", "gaussian"] = "gaussian"
    radius: float = Field(default=2, ge=0)
    save_dir: str | None = None


def blur_filter(blur_type: str, radius: float) -> ImageFilter.Filter:
    """PIL's filter for Data-Juicer's ``blur_type``."""
    if blur_type == "mean":
        return ImageFilter.BLUR
    if blur_type == "box":
        return ImageFilter.BoxBlur(radius)
    return ImageFilter.GaussianBlur(radius)


def _draw(path: str) -> float:
    """A uniform number in [0, 1) fixed by the image path."""
    return int(hashlib.md5(path.encode("utf-8")).hexdigest()[:8], 16) / 2**32


@register_op("image_blur_mapper")
class ImageBlurMapper(Mapper):
    """Blurs each image with probability p (mean, box or gaussian) into a new file; the row points at it."""

    Params = BlurParams

    def process(self, sample: Sample) -> None:
        p = self.params
        key = p.image_key or sample.keys.image_key
        blur = blur_filter(p.blur_type, p.radius)

        def blurred(path: str) -> Image.Image | None:
            return None if p.p < _draw(path) else sample.image_rgb(path).filter(blur)

        replace_images(self, sample, key, p.save_dir, blurred)
