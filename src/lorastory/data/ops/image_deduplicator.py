"""``image_deduplicator``: drop samples whose images have the same perceptual hash."""

from __future__ import annotations

import hashlib
from typing import Literal

from lorastory.data.ops.base import Deduplicator, OpParams, register_op
from lorastory.data.sample import Sample

_HASHERS = {"phash": "phash", "dhash": "dhash", "whash": "whash", "ahash": "average_hash"}
# Hashes look at a 32x32 (at most) greyscale version: decoding JPEGs at a reduced
# DCT scale gives the same hash input many times faster than a full decode.
_DRAFT = (128, 128)


class ImageDedupParams(OpParams):
    method: Literal["phash", "dhash", "whash", "ahash"] = "phash"
    consider_text: bool = False


@register_op("image_deduplicator")
class ImageDeduplicator(Deduplicator):
    """Exact match of the concatenated per-image hashes (plus the text if asked).

    Data-Juicer hashes with imagededup, we with imagehash: identical and
    re-encoded copies match in both, but a borderline near-duplicate may
    differ by a bit between the two libraries.
    """

    Params = ImageDedupParams

    def compute_hash(self, sample: Sample) -> str:
        # Data-Juicer hashes each distinct path once, in first-occurrence order.
        paths = list(dict.fromkeys(sample.image_paths(self.params.image_key)))
        import imagehash  # numpy/scipy: only recipes that deduplicate pay for the import

        hasher = getattr(imagehash, _HASHERS[self.params.method])
        digest = "".join(str(hasher(sample.image_rgb(p, _DRAFT))) for p in paths)
        if self.params.consider_text:
            # As in Data-Juicer, the text's MD5 joins the key, so image-less rows dedup by text.
            text = sample.text(self.params.text_key).strip().encode("utf-8")
            digest += "|" + hashlib.md5(text).hexdigest()
        return digest
