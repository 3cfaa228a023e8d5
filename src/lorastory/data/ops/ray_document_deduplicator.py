"""``ray_document_deduplicator``: Data-Juicer's Ray variant of ``document_deduplicator``, same keep rule.

Data-Juicer keeps its hash set in Ray actors or Redis (``backend``,
``redis_address``, ``dedup_set_num``); here the driver of either executor keeps
it, so those parameters are accepted and change nothing. Data-Juicer's Ray
variant keeps whichever copy its actors see first; ours keeps the first in input order.
"""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.document_deduplicator import DocumentDedupParams, DocumentDeduplicator


class RayDocumentDedupParams(DocumentDedupParams):
    backend: str = "ray_actor"
    redis_address: str = "redis://localhost:6379"
    dedup_set_num: int | str = "auto"


@register_op("ray_document_deduplicator")
class RayDocumentDeduplicator(DocumentDeduplicator):
    """``document_deduplicator`` under its Ray name (backend parameters accepted, not used)."""

    Params = RayDocumentDedupParams
