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

from PIL import ImageFilter
from pydantic import Field

from lorastory.data.ops.base import Mapper, OpParams, register_op
from lorastory.data.ops.produced_images import produced_path, save_image
from lorastory.data.sample import Sample

SOURCE_FILE_FIELD = "__dj__source_file__"


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


def update_sources(sample: Sample, before: list[str], after: list[str]) -> None:
    """Data-Juicer's ``__dj__source_file__`` bookkeeping after a mapper turned ``before`` paths into ``after``.

    The field starts as the row's image paths; an entry that differs from the image a mapper just
    replaced is set to that image (so after two mappers it names the first one's output, as in Data-Juicer).
    """
    sources = sample.row.get(SOURCE_FILE_FIELD)
    if not isinstance(sources, list) or len(sources) != len(before):
        sources = sample.row[SOURCE_FILE_FIELD] = list(before)
    for index, (old, new) in enumerate(zip(before, after)):
        if sources[index] != old and new != old:
            sources[index] = old


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
        paths = sample.image_paths(key)
        if not paths:
            return
        blur = blur_filter(p.blur_type, p.radius)
        new: dict[str, str] = {}
        for path in paths:
            if path in new:
                continue
            if p.p < _draw(path):
                new[path] = ""
                continue
            target = produced_path(self, sample, path, p.save_dir)
            save_image(sample.image_rgb(path).filter(blur), target)
            new[path] = target
        after = [new[path] or path for path in paths]
        update_sources(sample, paths, after)
        sample.set_image_paths(after, key)
