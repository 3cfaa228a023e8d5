"""Evaluation: how well panels match their prompts, how consistent the character is, how good they look.

* :mod:`~lorastory.models.clip` loads a CLIP (or Chinese CLIP) model and gives
  CLIP-T, the cosine between a panel's image and its prompt times 100.
* :mod:`~lorastory.eval.consistency` gives character consistency: the mean pairwise
  cosine of the panels' CLIP image embeddings (whole panel and a subject crop).
* :mod:`~lorastory.models.aesthetic` runs a LAION aesthetic-predictor head on CLIP
  image embeddings, from weights the user gives; without them there is no score.
* :mod:`~lorastory.eval.report` scores a generated run folder into ``scores.json``.
* :mod:`~lorastory.eval.compare` renders a story with and without its LoRA and
  reports the score differences.
* :mod:`~lorastory.data.clip_table` is the reference workflow's CLIP table for a dataset.

Its verb, the Python API the README documents: ``from lorastory.eval import evaluate_run``.
"""

from lorastory.errors import AestheticModelError, ClipModelError
from lorastory.eval.errors import EvalError
from lorastory.eval.report import evaluate_run

__all__ = ["AestheticModelError", "ClipModelError", "EvalError", "evaluate_run"]
