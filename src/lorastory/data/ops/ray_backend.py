"""The parameters Data-Juicer's Ray deduplicators take for where their hash set lives (not an operator).

Data-Juicer keeps the set in Ray actors or Redis (``backend``, ``redis_address``,
``dedup_set_num``); here the driver of either executor keeps it, so they are
accepted, so that recipes run unchanged, and change nothing.
"""

from __future__ import annotations

from lorastory.data.ops.base import OpParams


class RayBackendParams(OpParams):
    backend: str = "ray_actor"
    redis_address: str = "redis://localhost:6379"
    dedup_set_num: int | str = "auto"
