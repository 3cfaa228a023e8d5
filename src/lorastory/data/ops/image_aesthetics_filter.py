"""``image_aesthetics_filter``: keep samples whose images a LAION aesthetic predictor rates in a range.

Data-Juicer's operator, same name, parameters and stats key
(``image_aesthetics_scores``). Data-Juicer runs ``simple-aesthetics-predictor``
models (default ``shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE``)
and divides their 1–10 rating by 10, so ``min_score: 0.5`` means 5/10; the
same scale is used here. ``hf_scorer_model`` is, as there, a hub id or folder
of such a model — or, as an extension, a LAION head file (``.safetensors``;
see :mod:`lorastory.models.aesthetic`), whose CLIP is ``hf_clip`` (default: the
one the file's metadata names, else LAION's CLIP for its input size).

Weights are checked when the recipe is loaded: missing weights (or a hub id not
in the local cache while offline) stop the run before any sample is read.
Models load once per worker process, on first use; a sample's images are
scored as one batch.
"""

from __future__ import annotations

from typing import Any

from lorastory.data.ops.base import AnyOrAll, Filter, OpParams, combine, load_once, recipe_check, register_op
from lorastory.data.sample import Sample
from lorastory.errors import AestheticModelError, ClipModelError, LorastoryError
from lorastory.hub import PICKLE_SUFFIXES, check_source
from lorastory.models.aesthetic import default_clip_for, load_aesthetic
from lorastory.models.clip import check_clip_folder, load_clip, one_thread_in_workers, op_device

STATS_KEY = "image_aesthetics_scores"
DATA_JUICER_DEFAULT = "shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"
LAION_SCALE = 10.0


class ImageAestheticsParams(OpParams):
    hf_scorer_model: str = ""
    trust_remote_code: bool = False
    min_score: float = 0.5
    max_score: float = 1.0
    any_or_all: AnyOrAll = "any"
    # lorastory extensions: the CLIP a head file reads; allow_pickle stays False (a recipe may not set it,
    # see build_op), kept so recipes that spell it out as false still load.
    hf_clip: str | None = None
    allow_pickle: bool = False


@register_op("image_aesthetics_filter")
class ImageAestheticsFilter(Filter):
    """LAION aesthetic rating / 10 per image; keeps rows whose ratings lie in [min_score, max_score]."""

    Params = ImageAestheticsParams
    stats_keys = (STATS_KEY,)

    def __init__(self, params: ImageAestheticsParams) -> None:
        super().__init__(params)
        self._scorer: tuple[Any, Any] | None = None
        self._source = params.hf_scorer_model or DATA_JUICER_DEFAULT
        with recipe_check(self, LorastoryError):
            self._check()

    def _check(self) -> None:
        """Fail before any work when the weights (or the CLIP a head file needs) cannot be had."""
        from pathlib import Path

        path = Path(self._source).expanduser()
        if not path.exists() and path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
            raise AestheticModelError(f"hf_scorer_model {self._source}: no such file")
        if not path.exists() and not self.params.hf_scorer_model:
            check_source(DATA_JUICER_DEFAULT, "aesthetic predictor (Data-Juicer's default)", "hf_scorer_model", AestheticModelError)
            return
        if path.is_file() or (path.is_dir() and not (path / "config.json").is_file()):
            head = load_aesthetic(path, allow_pickle=self.params.allow_pickle, device="cpu")
            clip = self.params.hf_clip or default_clip_for(head, None, None)[0]
            check_source(str(clip), "CLIP model", "hf_clip", ClipModelError)
            check_clip_folder(str(clip), allow_pickle=self.params.allow_pickle)
        elif path.is_dir():
            check_source(str(path), "aesthetic predictor", "hf_scorer_model", AestheticModelError)
        else:
            check_source(self._source, "aesthetic predictor", "hf_scorer_model", AestheticModelError)

    def _model(self) -> tuple[Any, Any]:
        """(predictor, image embedder), loaded on first use in each process."""

        def load() -> tuple[Any, Any]:
            one_thread_in_workers()
            device = op_device(self.params.accelerator)
            predictor = load_aesthetic(self._source, allow_pickle=self.params.allow_pickle, device=device)
            embedder = predictor.embedder
            if embedder is None:
                clip = self.params.hf_clip or default_clip_for(predictor, None, None)[0]
                embedder = load_clip(str(clip), device, allow_pickle=self.params.allow_pickle)
            return predictor, embedder

        return load_once(self, "_scorer", load)

    def compute_stats(self, sample: Sample) -> None:
        if STATS_KEY in sample.stats:
            return
        paths = sample.image_paths(self.params.image_key)
        if not paths:
            sample.stats[STATS_KEY] = []
            return
        predictor, embedder = self._model()
        images = [sample.image_rgb(p) for p in paths]
        ratings = predictor.score_embeddings(embedder.image_embeddings(images, self.params.batch_size or 32))
        sample.stats[STATS_KEY] = [r / LAION_SCALE for r in ratings]

    def keep(self, stats: dict[str, Any]) -> bool:
        p = self.params
        return combine([p.min_score <= v <= p.max_score for v in stats[STATS_KEY]], p.any_or_all)
