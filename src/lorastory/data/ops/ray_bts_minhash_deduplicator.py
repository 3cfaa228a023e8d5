"""``ray_bts_minhash_deduplicator``: Data-Juicer's Ray MinHash, same keep rule.

Data-Juicer's Ray variants compute the same MinHash bands and join rows by a
distributed union-find (balanced tree search); the tuning parameters of that
machinery (``union_find_parallel_num``, ``union_threshold``, the edge-buffer
and filter task limits, batch sizes and memory hints) are accepted and change
nothing here: the driver of either executor clusters all bands at once, and
the first row of each cluster stays, as in ``document_minhash_deduplicator``.
"""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.document_minhash_deduplicator import DocumentMinhashDeduplicator, MinhashParams


class RayMinhashParams(MinhashParams):
    union_find_parallel_num: int | str = "auto"
    union_threshold: int | None = 256
    max_pending_edge_buffer_task: int | None = 20
    num_edge_buffer_task_returns: int | None = 10
    max_pending_filter_tasks: int | None = 20
    num_filter_task_returns: int | None = 10
    merge_batch_size: int | None = 1000
    minhash_batch_size: int | str | None = "auto"
    memory_per_sample: float | None = 0.1
    actor_memory: int | None = None
    task_memory: int | None = None


@register_op("ray_bts_minhash_deduplicator")
class RayBtsMinhashDeduplicator(DocumentMinhashDeduplicator):
    """``document_minhash_deduplicator`` under its Ray name (distributed-tuning parameters accepted, not used)."""

    Params = RayMinhashParams
