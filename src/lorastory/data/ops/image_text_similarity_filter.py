"""``image_text_similarity_filter``: keep samples whose images match their text, by CLIP.

Data-Juicer's operator, same name, parameters and stats key
(``image_text_similarity``). The score of an image and a text is CLIP's
``logits_per_text / 100``, as Data-Juicer computes it: the cosine similarity of
their embeddings times ``logit_scale / 100``, and a trained CLIP's logit scale is
exactly 100, so it is the cosine; its ``min_score: 0.1`` … ``max_score: 1.0``
thresholds mean the same here.

As in Data-Juicer, the text is split into chunks at ``<|__dj__eoc|>``; each
chunk is paired with the images whose ``<__dj__image>`` tokens it holds (special
tokens removed from the text) and gives one value, the ``reduce_mode``
(avg/max/min) of its images' scores; ``any_or_all`` then decides over the
values. One difference: a text with no image token at all is one chunk for
all the row's images (Data-Juicer scores nothing and keeps such rows, which
would make the filter a no-op on plain captioned datasets such as
``lorastory data import`` writes).

The CLIP model (``hf_clip``: a local folder or hub id, CLIP or Chinese CLIP) is
checked when the recipe is loaded and loaded once per worker process, on
first use; a sample's images and chunk texts go through it as one batch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from PIL import Image, ImageOps

from lorastory.captions import DJ_SPECIAL_TOKENS
from lorastory.data.ops.base import AnyOrAll, Filter, OpParams, combine, load_once, register_op
from lorastory.data.sample import Sample
from lorastory.errors import ClipModelError, RecipeError
from lorastory.hub import check_source
from lorastory.models.clip import check_clip_folder, load_clip, one_thread_in_workers, op_device

EOC_TOKEN = "<|__dj__eoc|>"
STATS_KEY = "image_text_similarity"


class ImageTextSimilarityParams(OpParams):
    hf_clip: str = "openai/clip-vit-base-patch32"
    trust_remote_code: bool = False
    min_score: float = 0.1
    max_score: float = 1.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    any_or_all: AnyOrAll = "any"
    reduce_mode: Literal["avg", "max", "min"] = "avg"

    signed_ranges: ClassVar[frozenset[str]] = frozenset({"score"})  # a cosine can be negative


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


@register_op("image_text_similarity_filter")
class ImageTextSimilarityFilter(Filter):
    """CLIP image-text cosine per chunk of text; keeps rows whose values lie in [min_score, max_score]."""

    Params = ImageTextSimilarityParams
    stats_keys = (STATS_KEY,)

    def __init__(self, params: ImageTextSimilarityParams) -> None:
        super().__init__(params)

        try:
            check_source(params.hf_clip, "CLIP model", "hf_clip", ClipModelError)
            check_clip_folder(params.hf_clip)
        except ClipModelError as err:
            raise RecipeError(f"{self.name}: {err}") from None
        self._clip: Any = None

    def _model(self) -> Any:
        """The CLIP model, loaded once per process; recipes never enable trust_remote_code (refused in build_op)."""

        def load() -> Any:
            one_thread_in_workers()
            return load_clip(self.params.hf_clip, op_device(self.params.accelerator))

        return load_once(self, "_clip", load)

    def _prepare(self, image: Image.Image) -> Image.Image:
        if self.params.horizontal_flip:
            image = ImageOps.mirror(image)
        if self.params.vertical_flip:
            image = ImageOps.flip(image)
        return image

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY in sample.stats:
            return
        paths = sample.image_paths(self.params.image_key)
        chunks = split_chunks(sample.text(self.params.text_key), len(paths), sample.keys.image_special_token) if paths else []
        if not chunks:
            sample.stats[STATS_KEY] = []
            return
        used = sorted({i for _, indices in chunks for i in indices})
        images = [self._prepare(sample.image_rgb(paths[i])) for i in used]
        clip = self._model()
        image_emb = clip.image_embeddings(images, self.params.batch_size or 32)
        text_emb = clip.text_embeddings([text for text, _ in chunks])
        row = {index: position for position, index in enumerate(used)}
        scale = clip.logit_scale / 100.0
        values = []
        for k, (_, indices) in enumerate(chunks):
            scores = [scale * float(image_emb[row[i]] @ text_emb[k]) for i in indices]
            values.append(reduce(scores, self.params.reduce_mode))
        sample.stats[STATS_KEY] = values

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_score <= v <= p.max_score for v in stats[STATS_KEY]], p.any_or_all)
