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

from typing import Any, ClassVar

from lorastory.data.ops.base import combine, register_op
from lorastory.data.ops.clip_filter import ClipFilter, ClipParams
from lorastory.data.ops.image_text_chunks import ChunkScoreParams, flip, reduce, split_chunks
from lorastory.data.sample import Sample

STATS_KEY = "image_text_similarity"


class ImageTextSimilarityParams(ClipParams, ChunkScoreParams):
    min_score: float = 0.1
    max_score: float = 1.0

    signed_ranges: ClassVar[frozenset[str]] = frozenset({"score"})  # a cosine can be negative


@register_op("image_text_similarity_filter")
class ImageTextSimilarityFilter(ClipFilter):
    """CLIP image-text cosine per chunk of text; keeps rows whose values lie in [min_score, max_score]."""

    Params = ImageTextSimilarityParams
    stats_keys = (STATS_KEY,)

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY in sample.stats:
            return
        paths = sample.image_paths(self.params.image_key)
        chunks = split_chunks(sample.text(self.params.text_key), len(paths), sample.keys.image_special_token) if paths else []
        if not chunks:
            sample.stats[STATS_KEY] = []
            return
        used = sorted({i for _, indices in chunks for i in indices})
        images = [flip(sample.image_rgb(paths[i]), self.params) for i in used]
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
