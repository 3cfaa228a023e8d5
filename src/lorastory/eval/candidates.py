"""Rendering and scoring candidates (base model, checkpoints, LoRA scales) on one validation set.

:class:`CandidateScorer` holds what is loaded once: the base pipeline, the CLIP model, the
training pictures' embeddings and the validation set. :meth:`CandidateScorer.score` applies a
LoRA at a scale (or none), renders the set, saves the pictures under ``renders/LABEL/``,
removes the LoRA again and returns the scored :class:`~lorastory.eval.selection.Candidate`.
:func:`read_trained_run` reads a training run folder's ``config.yaml``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastory.errors import ConfigError
from lorastory.eval.errors import EvalError
from lorastory.eval.selection import Candidate, SelectionSettings
from lorastory.eval.set_scores import TrainingPictures, score_set
from lorastory.eval.validation_set import ValidationSet, render_set
from lorastory.fileio import display_path
from lorastory.generate.render import save_png
from lorastory.models.clip import ClipModel
from lorastory.models.lora import apply_lora, unfuse
from lorastory.train.config import TrainConfig

CONFIG_FILE = "config.yaml"
EVAL_DIR = "eval"  # RUN/eval: checkpoints.json/.png, sweep.json/.png, renders/


def read_trained_run(run: str | Path) -> tuple[Path, TrainConfig]:
    """A folder ``lorastory train`` wrote, and its config."""
    folder = Path(run)
    if not (folder / CONFIG_FILE).is_file():
        raise EvalError(f"{display_path(folder)}: no {CONFIG_FILE}; pass the run folder 'lorastory train' wrote")
    try:
        return folder, TrainConfig.from_yaml(folder / CONFIG_FILE)
    except ConfigError as err:
        raise EvalError(str(err)) from None


def lora_steps(path: Path) -> int | None:
    """The training steps a lorastory LoRA file records (metadata ``lorastory.steps``), if any."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            value = (handle.metadata() or {}).get("lorastory.steps")
    except Exception:  # noqa: BLE001 - safetensors raises plain exceptions; a bad file fails later with its own message
        return None
    return int(value) if value and value.isdigit() else None


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "candidate"


@dataclass
class CandidateScorer:
    """Everything loaded once to render and score candidates."""

    pipe: Any
    clip: ClipModel
    training: TrainingPictures | None
    vset: ValidationSet
    settings: SelectionSettings
    renders: Path | None = None  # where each candidate's pictures go (None: not saved)
    batch_size: int = 8
    on_step: Callable[[str, int, int], None] | None = None

    def score(self, label: str, step: int, scale: float, lora: Path | None) -> Candidate:
        """Render the set with ``lora`` at ``scale`` (or the base model), score it, take the LoRA out again."""
        adapter = f"candidate_{_slug(label).replace('-', '_').replace('.', '_')}"
        self.pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            # Fused for the render (one matmul per layer instead of two); unfused and deleted after.
            apply_lora(self.pipe, lora, scale=scale, adapter_name=adapter, fuse=True)
        try:
            report = (lambda done, total: self.on_step(label, done, total)) if self.on_step else None
            images, render_seconds = render_set(self.pipe, self.vset, self.batch_size, report)
        finally:
            if lora is not None:
                unfuse(self.pipe)
                self.pipe.delete_adapters(adapter)
        started = time.perf_counter()
        scores = score_set(self.clip, images, self.vset, self.training, self.settings.near_copy)
        scores.render_seconds = round(render_seconds, 3)
        scores.score_seconds = round(time.perf_counter() - started, 3)
        if self.renders is not None:
            folder = self.renders / _slug(label)
            folder.mkdir(parents=True, exist_ok=True)
            for job, image in zip(self.vset.jobs(), images):
                save_png(image, folder / f"{job.index:02d}-seed{job.seed}.png")
        return Candidate(label=label, step=step, scale=scale, lora=str(lora) if lora else None, scores=scores)
