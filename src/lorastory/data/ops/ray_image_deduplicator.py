"""``ray_image_deduplicator``: Data-Juicer's Ray variant of ``image_deduplicator``, same hashes.

``backend``/``redis_address``/``dedup_set_num`` pick where Data-Juicer keeps its
hash set; here the driver keeps it, so they are accepted and change nothing. One
difference: Data-Juicer hashes every row without images to the same "EMPTY" and
so keeps only the first of them (all other text-only rows are lost); here, as in
``image_deduplicator``, a row without images is never a duplicate.
"""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.image_deduplicator import ImageDedupParams, ImageDeduplicator
from lorastory.data.ops.ray_backend import RayBackendParams


class RayImageDedupParams(ImageDedupParams, RayBackendParams):
    """``image_deduplicator``'s parameters and the Ray backend's (accepted, not used)."""


@register_op("ray_image_deduplicator")
class RayImageDeduplicator(ImageDeduplicator):
    """``image_deduplicator`` under its Ray name (backend parameters accepted, not used)."""

    Params = RayImageDedupParams
