"""``image_pair_similarity_filter``: keep samples whose two images are as similar as asked, by CLIP.

Data-Juicer 1.6.1's operator, parameters and stats key
(``image_pair_similarity``: a one-element list, the cosine of the two images'
CLIP image embeddings). Each row must hold exactly two different image paths;
Data-Juicer stops the run on a row that does not, here that row is skipped
with the reason. The CLIP model (``hf_clip``, a local folder or hub id, safetensors
only) loads once per worker, as for ``image_text_similarity_filter``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lorastory.data.ops.base import AnyOrAll, combine, register_op
from lorastory.data.ops.clip_filter import ClipFilter, ClipParams
from lorastory.data.sample import Sample
from lorastory.errors import DataError

STATS_KEY = "image_pair_similarity"


class PairSimilarityParams(ClipParams):
    min_score: float = 0.1
    max_score: float = 1.0
    any_or_all: AnyOrAll = "any"

    signed_ranges: ClassVar[frozenset[str]] = frozenset({"score"})


@register_op("image_pair_similarity_filter")
class ImagePairSimilarityFilter(ClipFilter):
    """CLIP cosine between a row's two images; keeps rows whose similarity lies in [min_score, max_score]."""

    Params = PairSimilarityParams
    stats_keys = (STATS_KEY,)

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY in sample.stats:
            return
        paths = sample.image_paths(self.params.image_key)
        if len(paths) != 2 or paths[0] == paths[1]:
            raise DataError(f"{self.name} needs exactly two different images per row, this one has {len(set(paths))}")
        embeddings = self._model().image_embeddings([sample.image_rgb(p) for p in paths])
        # A cosine is at most 1, but float32 rounding can put two copies of one picture at 1.0000002: past the
        # default max_score of 1.0, which would drop exactly the pairs a near-duplicate recipe is looking for.
        sample.stats[STATS_KEY] = [min(1.0, max(-1.0, float(embeddings[0] @ embeddings[1])))]

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_score <= v <= p.max_score for v in stats[STATS_KEY]], p.any_or_all)
