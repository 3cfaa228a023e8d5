"""Aspect-ratio buckets: train on images at their own shape instead of cropping squares.

Buckets are (width, height) pairs in multiples of ``step`` whose area is at
most the target area, from 1:4 to 4:1. Each image goes to the bucket with
the closest aspect ratio; a batch only mixes images of one bucket.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def bucket_sizes(resolution: int, step: int = 64, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """All (width, height) buckets for a square ``resolution``, sorted by aspect ratio."""
    area = resolution * resolution
    sizes = set()
    width = step
    while width <= resolution * max_ratio:
        height = (area // width) // step * step
        if height >= step and 1 / max_ratio <= width / height <= max_ratio:
            sizes.add((width, height))
        width += step
    return sorted(sizes, key=lambda s: s[0] / s[1])


def assign_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log space) to the image's."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def small_buckets(assigned: Sequence[tuple[int, int]], batch_size: int) -> dict[tuple[int, int], int]:
    """Buckets holding fewer images than one batch (worth a warning)."""
    counts = Counter(assigned)
    return {bucket: n for bucket, n in counts.items() if n < batch_size}
