"""``random_selector``: keep a random subset of the rows, the same subset Data-Juicer keeps.

Data-Juicer 1.6.1's selector: ``select_num`` rows or ``int(select_ratio * n)``
(the smaller when both are set), drawn as Data-Juicer's ``random_sample`` does:
the rows shuffled by ``numpy.random.default_rng(42).permutation`` and the first
ones taken, in that shuffled order. Its quirks are kept: with fewer than two
rows, neither parameter, a ratio so small that it rounds to zero rows, or a
count equal to the row count, every row stays in input order; a
``select_num`` above the row count repeats rows, as Data-Juicer does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from lorastory.data.ops.base import OpParams, register_op
from lorastory.data.ops.dataset_op import NOT_SELECTED, DatasetOp
from lorastory.data.sample import Sample

SEED = 42


class RandomSelectorParams(OpParams):
    select_ratio: float | None = Field(default=None, ge=0, le=1)
    select_num: int | None = Field(default=None, gt=0)


@register_op("random_selector")
class RandomSelector(DatasetOp):
    """Keeps a random select_num / select_ratio of the rows (seed 42, as Data-Juicer)."""

    Params = RandomSelectorParams
    drop_detail = NOT_SELECTED

    def compute_hash(self, sample: Sample) -> None:
        return None

    def select(self, keys: list[Any]) -> list[int]:
        p = self.params
        n = len(keys)
        everything = list(range(n))
        if n <= 1 or (p.select_ratio is None and p.select_num is None):
            return everything
        if not p.select_ratio:
            number = p.select_num or 0
        else:
            number = int(p.select_ratio * n)
            if p.select_num and p.select_num < number:
                number = p.select_num
        if number <= 0 or number == n:
            return everything
        permutation = np.random.default_rng(SEED).permutation(n)
        return [int(permutation[i % n]) for i in range(number)]
