"""``document_simhash_deduplicator``: near-duplicate texts by 64-bit SimHash, Data-Juicer's algorithm.

Same parameters and keep rule as Data-Juicer 1.6.1, which uses the
``simhash-pybind`` C++ package; this is the same computation in Python, so no
compiler is needed: each shingle hashes to the first 8 bytes of its MD5
(big-endian), the SimHash sets bit i where more shingles have it set than not,
and two rows are similar when their SimHashes differ in at most
``hamming_distance`` bits. Similar hashes are joined transitively into clusters
and the first row of each cluster stays (rows with an identical SimHash are one cluster).

Candidate pairs are found as simhash-pybind does: the 64 bits are cut into
``num_blocks`` blocks, and two hashes within ``hamming_distance`` bits agree
exactly on at least ``num_blocks - hamming_distance`` of them, so grouping by
each such choice of blocks finds every pair (``hamming_distance`` must be less
than ``num_blocks``, as Data-Juicer requires).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import regex
from pydantic import Field, model_validator

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import DatasetOp
from lorastory.data.ops.text_helpers import hash_text
from lorastory.data.sample import Sample

_PUNCTUATION = regex.compile(r"\p{P}")
_BITS = 64


class SimhashParams(OpParams):
    tokenization: Literal["space", "punctuation", "character"] = "space"
    window_size: int = Field(default=6, gt=0)
    lowercase: bool = True
    ignore_pattern: str | None = None
    num_blocks: int = Field(default=6, gt=0, le=_BITS)
    hamming_distance: int = Field(default=4, gt=0)

    @model_validator(mode="after")
    def _distance_below_blocks(self) -> SimhashParams:
        if self.hamming_distance >= self.num_blocks:
            raise ValueError(
                f"hamming_distance {self.hamming_distance} must be less than num_blocks {self.num_blocks}"
            )
        return self


def shingles(text: str, tokenization: str, window: int) -> list[bytes]:
    """Data-Juicer's SimHash shingles (a list: repeats count)."""
    if tokenization == "character":
        return [text[i : i + window].encode() for i in range(len(text) - window + 1)]
    tokens = _PUNCTUATION.split(text) if tokenization == "punctuation" else [w for w in text.split(" ") if w]
    return [" ".join(tokens[i : i + window]).encode() for i in range(len(tokens) - window + 1)]


def simhash(tokens: list[bytes]) -> int:
    """simhash-pybind's ``compute(map(unsigned_hash, tokens))``: bit i set where most token hashes set it."""
    if not tokens:
        return 0
    values = np.fromiter((int.from_bytes(hashlib.md5(t).digest()[:8], "big") for t in tokens),
                         dtype=np.uint64, count=len(tokens))
    ones = ((values[:, None] >> np.arange(_BITS, dtype=np.uint64)) & np.uint64(1)).sum(axis=0)
    return sum(1 << int(bit) for bit in np.nonzero(2 * ones.astype(np.int64) > len(tokens))[0])


def _blocks(num_blocks: int) -> list[int]:
    """Masks of ``num_blocks`` contiguous bit blocks covering 64 bits."""
    bounds = [round(i * _BITS / num_blocks) for i in range(num_blocks + 1)]
    return [((1 << (bounds[i + 1] - bounds[i])) - 1) << bounds[i] for i in range(num_blocks)]


def similar_pairs(
    hashes: set[int], num_blocks: int, distance: int, step: Callable[[float], None] | None = None,
) -> set[tuple[int, int]]:
    """Every pair of distinct hashes that differ in at most ``distance`` bits (smaller first);
    ``step(fraction done)`` after each choice of blocks."""
    masks = _blocks(num_blocks)
    pairs: set[tuple[int, int]] = set()
    choices = math.comb(num_blocks, num_blocks - distance)
    for number, chosen in enumerate(itertools.combinations(masks, num_blocks - distance), start=1):
        if step is not None and number > 1:
            step((number - 1) / choices)
        mask = sum(chosen)
        groups: dict[int, list[int]] = defaultdict(list)
        for value in hashes:
            groups[value & mask].append(value)
        for group in groups.values():
            for a, b in itertools.combinations(sorted(group), 2):
                if (a ^ b).bit_count() <= distance:
                    pairs.add((a, b))
    return pairs


@register_op("document_simhash_deduplicator")
class DocumentSimhashDeduplicator(DatasetOp):
    """Near-duplicate texts by SimHash (at most hamming_distance bits apart); the first row of each cluster stays."""

    Params = SimhashParams

    def __init__(self, params: SimhashParams) -> None:
        super().__init__(params)
        self.ignore = regex.compile(params.ignore_pattern) if params.ignore_pattern else None

    def compute_hash(self, sample: Sample) -> int:
        p = self.params
        text = hash_text(sample.text(p.text_key), p.lowercase, self.ignore)
        return simhash(shingles(text, p.tokenization, p.window_size))

    def select(self, keys: list[Any]) -> list[int]:
        if len(keys) <= 1:
            return list(range(len(keys)))
        parent = {value: value for value in keys}

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def step(fraction: float) -> None:
            self.step(int(fraction * len(keys)), len(keys))

        for a, b in similar_pairs(set(keys), self.params.num_blocks, self.params.hamming_distance, step):
            parent[find(a)] = find(b)
        seen: set[int] = set()
        kept = []
        for index, value in enumerate(keys):
            cluster = find(value)
            if cluster not in seen:
                seen.add(cluster)
                kept.append(index)
        return kept
