"""``ray_document_deduplicator``: Data-Juicer's Ray variant of ``document_deduplicator``, same keep rule.

Data-Juicer keeps its hash set in Ray actors or Redis (``backend``,
``redis_address``, ``dedup_set_num``); here the driver of either executor keeps
it, so those parameters are accepted and change nothing. Data-Juicer's Ray
variant keeps whichever copy its actors see first; ours keeps the first in input order.
"""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.document_deduplicator import DocumentDedupParams, DocumentDeduplicator
from lorastory.data.ops.ray_backend import RayBackendParams


class RayDocumentDedupParams(DocumentDedupParams, RayBackendParams):
    """``document_deduplicator``'s parameters and the Ray backend's (accepted, not used)."""


@register_op("ray_document_deduplicator")
class RayDocumentDeduplicator(DocumentDeduplicator):
    """``document_deduplicator`` under its Ray name (backend parameters accepted, not used)."""

    Params = RayDocumentDedupParams
