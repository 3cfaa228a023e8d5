"""Data-Juicer's text chunks and their images, as the image-text filters score them (not an operator).

The text is split into chunks at ``<|__dj__eoc|>``; each chunk is paired with the
images whose ``<__dj__image>`` tokens it holds (special tokens removed from the
text) and gives one value, the ``reduce_mode`` (avg/max/min) of its images'
scores. A text with no image token at all is one chunk for all the row's images.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image, ImageOps

from lorastory.captions import DJ_SPECIAL_TOKENS
from lorastory.data.ops.base import AnyOrAll, OpParams

EOC_TOKEN = "<|__dj__eoc|>"


class ChunkScoreParams(OpParams):
    """The parameters the image-text filters share (their score range is their own)."""

    horizontal_flip: bool = False
    vertical_flip: bool = False
    any_or_all: AnyOrAll = "any"
    reduce_mode: Literal["avg", "max", "min"] = "avg"


def flip(image: Image.Image, params: ChunkScoreParams) -> Image.Image:
    """The image mirrored and/or flipped as the op's parameters ask."""
    if params.horizontal_flip:
        image = ImageOps.mirror(image)
    if params.vertical_flip:
        image = ImageOps.flip(image)
    return image


def split_chunks(text: str, n_images: int, image_token: str) -> list[tuple[str, list[int]]]:
    """(chunk text without special tokens, indices of its images) as Data-Juicer pairs them."""
    if image_token not in text:
        return [(DJ_SPECIAL_TOKENS.sub("", text).strip(), list(range(n_images)))] if n_images else []
    chunks = []
    offset = 0
    for chunk in text.split(EOC_TOKEN):
        count = chunk.count(image_token)
        if count == 0 or not chunk:
            continue
        indices = list(range(offset, min(offset + count, n_images)))
        if indices:
            chunks.append((DJ_SPECIAL_TOKENS.sub("", chunk.replace(image_token, "")).strip(), indices))
        offset += count
    return chunks


def reduce(values: list[float], mode: str) -> float:
    """avg, max or min of a chunk's image scores."""
    if mode == "max":
        return max(values)
    if mode == "min":
        return min(values)
    return sum(values) / len(values)
