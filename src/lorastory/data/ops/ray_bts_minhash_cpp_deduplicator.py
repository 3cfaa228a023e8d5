"""``ray_bts_minhash_cpp_deduplicator``: Data-Juicer's C++ Ray MinHash, same keep rule as ``document_minhash_deduplicator``.

Same parameters as ``ray_bts_minhash_deduplicator`` (its distributed-tuning ones
accepted and unused); the driver of either executor clusters all bands at once
and the first row of each cluster stays.
"""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.document_minhash_deduplicator import DocumentMinhashDeduplicator
from lorastory.data.ops.ray_bts_minhash_deduplicator import RayMinhashParams


@register_op("ray_bts_minhash_cpp_deduplicator")
class RayBtsMinhashCppDeduplicator(DocumentMinhashDeduplicator):
    """``document_minhash_deduplicator`` under the name of Data-Juicer's C++ Ray variant."""

    Params = RayMinhashParams
