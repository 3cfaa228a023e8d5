"""``document_minhash_deduplicator``: near-duplicate texts by MinHash LSH, Data-Juicer's algorithm exactly.

Same parameters, tokenization (space / punctuation / character shingles of
``window_size``), permutations (numpy ``RandomState(42)``), band and row choice
(``optimal_param``: the split that minimises the integrated false positive and
negative rates, as datasketch does) and keep rule as Data-Juicer 1.6.1: rows
that share any band are joined, transitively, into one cluster, and only the
first row of each cluster stays. So the kept rows are Data-Juicer's.

``tokenization: sentencepiece`` needs a sentencepiece model and is refused with
a one-line message (Data-Juicer downloads one). The per-row key is each band's
bytes reduced to a 64-bit digest (blake2b), so memory stays small; two distinct
bands colliding is a 2^-64 event.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import regex
from pydantic import Field, model_validator

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import DatasetOp
from lorastory.data.ops.text_helpers import hash_text
from lorastory.data.sample import Sample

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where it is used: every recipe imports the op registry, few run MinHash.
MERSENNE_PRIME = (1 << 61) - 1
MAX_HASH = (1 << 32) - 1
_PUNCTUATION = regex.compile(r"\p{P}")
# Rows joined between two progress calls of a long clustering (each one a Stop point).
_STEP_ROWS = 4096


class MinhashParams(OpParams):
    tokenization: Literal["space", "punctuation", "character", "sentencepiece"] = "space"
    window_size: int = Field(default=5, gt=0)
    lowercase: bool = True
    ignore_pattern: str | None = None
    num_permutations: int = Field(default=256, gt=0)
    jaccard_threshold: float = Field(default=0.7, ge=0, le=1)
    num_bands: int | None = Field(default=None, gt=0)
    num_rows_per_band: int | None = Field(default=None, gt=0)
    tokenizer_model: str | None = None

    @model_validator(mode="after")
    def _no_sentencepiece(self) -> MinhashParams:
        if self.tokenization == "sentencepiece":
            raise ValueError(
                "tokenization 'sentencepiece' needs a downloaded sentencepiece model, which lorastory does not "
                "load; use 'space' (English-like text) or 'character' (Chinese)"
            )
        return self


@functools.lru_cache(maxsize=16)
def optimal_param(threshold: float, num_perm: int) -> tuple[int, int]:
    """Data-Juicer's (datasketch's) ``(bands, rows)`` minimising FP and FN probability, weights 0.5/0.5."""
    from scipy import integrate  # only recipes with MinHash pay for scipy

    def false_positive(band: int, rows: int) -> float:
        return integrate.quad(lambda s: 1 - (1 - s ** float(rows)) ** float(band), 0.0, threshold)[0]

    def false_negative(band: int, rows: int) -> float:
        return integrate.quad(lambda s: 1 - (1 - (1 - s ** float(rows)) ** float(band)), threshold, 1.0)[0]

    min_error, best = float("inf"), (0, 0)
    for band in range(1, num_perm + 1):
        for rows in range(1, int(num_perm / band) + 1):
            error = false_positive(band, rows) * 0.5 + false_negative(band, rows) * 0.5
            if error < min_error:
                min_error, best = error, (band, rows)
    return best


@functools.lru_cache(maxsize=16)
def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Data-Juicer's ``(a, b)`` permutation parameters, drawn from ``RandomState(42)`` in its order."""
    import numpy as np

    gen = np.random.RandomState(seed=42)
    prime = np.uint64(MERSENNE_PRIME)
    pairs = [
        (gen.randint(1, prime, dtype=np.uint64), gen.randint(0, prime, dtype=np.uint64))
        for _ in range(num_perm)
    ]
    perm_a, perm_b = np.array(pairs, dtype=np.uint64).T
    return perm_a, perm_b


def shingles(text: str, tokenization: str, window: int) -> set[bytes]:
    """The set of ``window``-token shingles Data-Juicer hashes (encoded UTF-8)."""
    if tokenization == "character":
        return {text[i : i + window].encode() for i in range(len(text) - window + 1)}
    if tokenization == "punctuation":
        tokens = _PUNCTUATION.split(text)
    else:  # space: split on spaces only, empty pieces dropped (Data-Juicer's split_on_whitespace)
        tokens = [word for word in text.split(" ") if word]
    return {" ".join(tokens[i : i + window]).encode() for i in range(len(tokens) - window + 1)}


def _sha1_hash32(data: bytes) -> int:
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def minhash(tokens: set[bytes], num_perm: int) -> np.ndarray:
    """The ``num_perm`` MinHash values of a shingle set (all ``2^32 - 1`` for an empty one)."""
    import numpy as np

    if not tokens:
        return np.full(num_perm, np.uint64(MAX_HASH), dtype=np.uint64)
    perm_a, perm_b = permutations(num_perm)
    values = np.fromiter((_sha1_hash32(token) for token in tokens), dtype=np.uint64, count=len(tokens))
    # Same uint64 arithmetic (wrapping multiply) as Data-Juicer, so the same values.
    block = max(1, (8 << 20) // (num_perm * 8))
    result = None
    for start in range(0, len(values), block):
        part = values[start : start + block]
        hashed = np.bitwise_and((part[:, None] * perm_a + perm_b) % np.uint64(MERSENNE_PRIME), np.uint64(MAX_HASH)).min(axis=0)
        result = hashed if result is None else np.minimum(result, hashed)
    return result


def first_of_clusters(keys: list[Any], step: Callable[[int, int], None] | None = None) -> list[int]:
    """Indices of rows that are the first of their cluster, rows joined when they share any band key;
    ``step(rows done, rows)`` every few thousand rows.

    Data-Juicer's union-find roots every cluster at its smallest index and keeps rows that are their own root.
    """
    parent = list(range(len(keys)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_with: dict[tuple[int, int], int] = {}
    for index, bands in enumerate(keys):
        if step is not None and index and index % _STEP_ROWS == 0:
            step(index, len(keys))
        for band, digest in enumerate(bands):
            other = first_with.setdefault((band, digest), index)
            if other != index:
                a, b = find(other), find(index)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return [index for index in range(len(keys)) if find(index) == index]


@register_op("document_minhash_deduplicator")
class DocumentMinhashDeduplicator(DatasetOp):
    """Near-duplicate texts by MinHash LSH (Jaccard >= threshold); the first row of each cluster stays."""

    Params = MinhashParams

    def __init__(self, params: MinhashParams) -> None:
        super().__init__(params)
        bands, rows = params.num_bands, params.num_rows_per_band
        if bands is None or rows is None:
            bands, rows = optimal_param(params.jaccard_threshold, params.num_permutations)
        self.ranges = [(i * rows, (i + 1) * rows) for i in range(bands)]
        self.ignore = regex.compile(params.ignore_pattern) if params.ignore_pattern else None

    def compute_hash(self, sample: Sample) -> tuple[int, ...]:
        p = self.params
        text = hash_text(sample.text(p.text_key), p.lowercase, self.ignore)
        raw = minhash(shingles(text, p.tokenization, p.window_size), p.num_permutations).tobytes()
        # Equal band values <=> equal band bytes: the key is a 64-bit digest of each band's bytes.
        return tuple(
            int.from_bytes(hashlib.blake2b(raw[a * 8 : b * 8], digest_size=8).digest(), "little")
            for a, b in self.ranges
        )

    def select(self, keys: list[Any]) -> list[int]:
        if len(keys) <= 1:
            return list(range(len(keys)))
        return first_of_clusters(keys, self.step)
