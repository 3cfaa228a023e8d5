"""The image key check: a recipe whose image ops read a field the dataset's rows do not have.

Data-Juicer's default ``image_key`` is ``images``; datasets written by other tools (and
lorastory's toy data) often use ``image``. A row without the key has no images, and
Data-Juicer's image ops keep such a row untouched, so the recipe silently filters
nothing. The run still goes ahead (those are Data-Juicer's semantics); this module
finds the mismatch up front so the CLI and the web app can warn in one line.
"""

from __future__ import annotations

import os
from itertools import islice

from lorastory.data.dataset import read_rows
from lorastory.data.recipe import Recipe, image_ops

_CANDIDATE_KEYS = ("images", "image", "file_name", "image_path", "img")
_ROWS_LOOKED_AT = 200


def image_key_warnings(recipe: Recipe, input_path: str | os.PathLike[str]) -> list[str]:
    """One line per image key the recipe's image ops read that no row (of the first few) has."""
    keys = list(dict.fromkeys(op.params.image_key for op in image_ops(recipe) if op.params.image_key))
    if not keys:
        return []
    rows = [row for _number, row, _problem in islice(read_rows(input_path), _ROWS_LOOKED_AT) if row is not None]
    if not rows:
        return []
    warnings = []
    for key in keys:
        if any(key in row for row in rows):
            continue
        found = [k for k in _CANDIDATE_KEYS if k != key and any(k in row for row in rows)]
        if found:
            warnings.append(f"rows have '{found[0]}', the recipe reads '{key}': set image_key: {found[0]} "
                            f"(as it is, the image ops see no images and keep every row)")
        else:
            warnings.append(f"rows have no '{key}' field, the recipe's image key: the image ops see no images "
                            f"and keep every row (set image_key to the field that lists the images)")
    return warnings
